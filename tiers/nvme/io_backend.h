// The I/O layer under the NVMe tier: a thin, injectable face of one io_uring
// instance. The real backend (MakeUringBackend) is liburing; tests wrap it
// with the fault-injecting backend of fault_backend.h.
//
// Threads: Open, RegisterFile, RegisterBuffers, UnregisterBuffers, Prepare and
// Submit are the *submission side* and are called by one thread at a time (the
// tier serializes them under its mutex). Reap is the *completion side* and is
// called by exactly one thread (the tier's completion thread), concurrently
// with the submission side. io_uring allows exactly this split: the SQ and the
// CQ rings are independent.
#ifndef STRATA_TIERS_NVME_IO_BACKEND_H_
#define STRATA_TIERS_NVME_IO_BACKEND_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::tiers {

// One I/O as the tier asks for it. Reads and writes go to the backend's file.
struct IoOp {
  enum class Kind : uint8_t { kNop, kRead, kWrite };
  Kind kind = Kind::kNop;
  void* buf = nullptr;
  uint32_t len = 0;
  uint64_t offset = 0;    // file offset
  int buf_index = -1;     // registered buffer holding [buf, buf + len), or -1
  uint64_t user_data = 0; // returned in the completion
};

// One completion: `res` is the byte count, or a negative errno.
struct IoCompletion {
  uint64_t user_data = 0;
  int32_t res = 0;
};

class IoBackend {
 public:
  virtual ~IoBackend() = default;

  // Sets up a queue able to hold `queue_depth` operations in flight (the
  // completion queue holds at least that many completions) on file `fd`,
  // probing that the operations the tier needs are supported. The fd stays
  // owned by the caller and must outlive the backend's use of it.
  virtual absl::Status Open(int fd, uint32_t queue_depth) = 0;
  // Registers the file (IOSQE_FIXED_FILE). Optional: on error the backend
  // keeps using the plain fd.
  virtual absl::Status RegisterFile() = 0;
  // Registers fixed buffers; buffer i of `buffers` is index i in IoOp. The
  // caller guarantees no operation is in flight.
  virtual absl::Status RegisterBuffers(std::span<const iovec> buffers) = 0;
  virtual void UnregisterBuffers() = 0;

  // Places `op` in the submission queue. False when the queue is full: the
  // caller Submit()s and tries again.
  virtual bool Prepare(const IoOp& op) = 0;
  // Hands every prepared operation to the kernel (one io_uring_submit).
  // Returns how many it took, or the error of io_uring_enter.
  virtual absl::StatusOr<uint32_t> Submit() = 0;

  // Waits up to `timeout` for at least one completion, then appends every
  // available one to `out` (each CQE is marked seen). An empty result after
  // the timeout is OK.
  virtual absl::Status Reap(std::vector<IoCompletion>& out,
                            absl::Duration timeout) = 0;
};

// The io_uring backend.
std::unique_ptr<IoBackend> MakeUringBackend();

}  // namespace strata::tiers

#endif  // STRATA_TIERS_NVME_IO_BACKEND_H_
