// The small interface every tier implements (RMM's device_memory_resource,
// CacheLib navy's Device): public, non-virtual entry points check arguments
// and count bytes once; a tier fills in the private Do* hooks.
//
// A tier holds *frames* (space for one block) and moves bytes between its
// frames and host memory. Host memory is the hub: a transfer between two
// non-host tiers stages through a host frame (the engine arranges that).
//
// Threads: Allocate/Free/Submit may be called from any thread. Completions are
// delivered by calling `Transfer::on_done` exactly once per submitted
// transfer, from a thread of the tier's choosing (its completion thread, or
// the submitting thread for synchronous tiers). `on_done` must not block on
// other transfers of the same tier.
#ifndef STRATA_TIERS_TIER_H_
#define STRATA_TIERS_TIER_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::tiers {

// Identity of the bytes a transfer carries; tiers that checksum cover it.
struct BlockKey {
  uint64_t tensor_id = 0;
  uint64_t block = 0;
  uint64_t version = 0;
};

// Space for one block in one tier.
struct Frame {
  uint64_t offset = 0;         // tier-specific location (arena or file offset)
  uint64_t bytes = 0;          // capacity of the frame
  std::byte* data = nullptr;   // host-addressable memory, or null
  // Device memory (a CUDA device pointer) for tiers whose frames live on an
  // accelerator; never dereferenced on the host. Null otherwise.
  void* device = nullptr;
  bool valid() const { return bytes != 0; }
};

struct Transfer {
  enum class Op : uint8_t {
    kRead,   // frame in this tier -> host
    kWrite,  // host -> frame in this tier
  };
  Op op = Op::kRead;
  BlockKey key;
  Frame frame;
  // Host bytes: the destination of a read, the source of a write. Its length
  // is the number of bytes moved (at most frame.bytes).
  std::span<std::byte> host;
  // Checksum of the bytes: a write sets it (the caller stores it with the
  // frame); a read verifies against it and fails with kDataLoss on mismatch.
  uint64_t checksum = 0;
  absl::Status status;  // set before on_done
  void (*on_done)(Transfer*) = nullptr;
  // Optional, for writes into a tier whose frames live in device memory
  // (the GPU's): called once the copy is enqueued on the device's stream,
  // from the submitting thread, before on_done and before Submit returns;
  // from then on ReadyEvent(frame) is an event that completes with the
  // copy. Not called when the copy could not be enqueued (on_done then
  // carries the error). Other tiers never call it.
  void (*on_enqueued)(Transfer*) = nullptr;
  void* user = nullptr;  // the submitter's cookie
  // The submitter drives this transfer's completion itself, with
  // DriveCompletions, as soon as Submit returns (a pin waiting for its own
  // load). A tier whose progress thread would compete with it for the
  // device's queue leaves that thread asleep; DriveCompletions wakes it if
  // the driver leaves before the transfer is done.
  bool caller_drives = false;
};

class Tier {
 public:
  virtual ~Tier() = default;
  Tier(const Tier&) = delete;
  Tier& operator=(const Tier&) = delete;

  std::string_view name() const { return name_; }
  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t bytes_in() const { return bytes_in_.load(std::memory_order_relaxed); }
  uint64_t bytes_out() const {
    return bytes_out_.load(std::memory_order_relaxed);
  }
  // Whether frames have host-addressable `data`.
  virtual bool addressable() const = 0;
  // The longest free range: a frame of up to that many bytes fits now.
  // A tier that does not know says capacity() - used().
  virtual uint64_t largest_free() const { return capacity() - used(); }

  // Reserves a frame of at least `bytes`. kResourceExhausted when full.
  absl::StatusOr<Frame> Allocate(uint64_t bytes);
  // Returns a frame from Allocate. Never fails.
  void Free(const Frame& frame);

  // Starts every transfer of `batch` (one submission where the tier can).
  // Each one completes through its on_done, also when its own I/O fails. A
  // non-OK return means none of the batch was started and no on_done runs.
  absl::Status Submit(std::span<Transfer* const> batch);

  // Registers the host arena with this tier's DMA engine once (fixed buffers,
  // cudaHostRegister, fi_mr_reg). A tier that cannot register says so in the
  // returned status; the engine logs it once and goes on.
  virtual absl::Status RegisterHostMemory(std::span<std::byte> arena) {
    (void)arena;
    return absl::OkStatus();
  }

  // Delivers completions on the calling thread (their on_done runs here),
  // driving the device's progress where that takes a CPU (a software
  // fabric provider), until `done()` is true or `stop` has passed. A thread
  // about to wait for its own transfer calls it instead of waiting to be
  // woken: a wake-up can cost as much as a small transfer. False at once
  // when the tier has nothing to drive (its completions come from
  // elsewhere; wait). `done` is called between polls, from this thread.
  virtual bool DriveCompletions(absl::FunctionRef<bool()> done,
                                std::chrono::steady_clock::time_point stop) {
    (void)done;
    (void)stop;
    return false;
  }

  // Stream ordering, for tiers whose frames live in device memory (the
  // GPU); `stream` is a caller's cudaStream_t, as an opaque handle. Other
  // tiers answer kFailedPrecondition.
  // An event the caller's stream can wait on for the frame's bytes: that of
  // the latest copy into the frame (complete once it finished). The error
  // of that copy if it failed.
  virtual absl::StatusOr<void*> ReadyEvent(const Frame& frame);
  // Makes `stream` wait (on the device, not the CPU) for the frame's bytes.
  virtual absl::Status WaitReady(const Frame& frame, void* stream);
  // The frame is neither copied out nor reused before the work enqueued on
  // `stream` so far has finished: a stream-ordered unpin.
  virtual absl::Status FenceAfter(const Frame& frame, void* stream);

 protected:
  Tier(std::string name, uint64_t capacity)
      : name_(std::move(name)), capacity_(capacity) {}

 private:
  virtual absl::StatusOr<Frame> DoAllocate(uint64_t bytes) = 0;
  virtual void DoFree(const Frame& frame) = 0;
  virtual absl::Status DoSubmit(std::span<Transfer* const> batch) = 0;

  std::string name_;
  uint64_t capacity_;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_TIER_H_
