// The NVMe tier: frames are extents of one block file opened O_DIRECT and
// driven by io_uring.
//
// Invariants: every frame is an extent of <path>/blocks.strata whose offset
// and size are multiples of the tier's I/O alignment (max of the file's
// O_DIRECT offset alignment and 4096). Every submitted transfer completes
// exactly once through its on_done, on the tier's completion thread, with an
// OK status only if every byte moved (short transfers and EAGAIN/EINTR are
// resubmitted, a bounded number of times) and, for a read, only if the bytes
// verify against the transfer's checksum (kDataLoss otherwise).
//
// Preconditions of a transfer (checked where cheap; kInvalidArgument from
// Submit when broken):
//   - `frame` came from this tier's Allocate and has not been freed;
//   - `host.data()` is 4096-aligned, and the memory behind it extends to the
//     next multiple of 4096 bytes past `host.size()`: the tier moves that
//     rounded-up length (O_DIRECT needs whole sectors), so a read may write
//     into the slack after `host.size()`; the checksum covers exactly
//     `host.size()` bytes;
//   - `host.size()` <= `frame.bytes` (checked by Tier::Submit);
//   - the host bytes stay valid and untouched until on_done runs.
// A zero-length transfer completes OK (through on_done, like the others).
//
// Threads: Allocate/Free/Submit/RegisterHostMemory may be called from any
// thread. on_done runs on the completion thread and may call Submit (transfers
// that find the queue full then wait inside the tier instead of blocking the
// completion thread). Destroying the tier waits for every transfer in flight
// (each still gets its on_done); it must not race with Submit from other
// threads. An on_done may still Submit while the tier is being destroyed:
// like any Submit, that takes the whole batch (which then completes before
// the destructor returns) or refuses it with kFailedPrecondition.
#ifndef STRATA_TIERS_NVME_NVME_TIER_H_
#define STRATA_TIERS_NVME_NVME_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "tiers/tier.h"

namespace strata::tiers {

struct NvmeConfig {
  std::string path;              // directory; created with its parents if missing
  uint64_t capacity_bytes;       // most bytes the block file may grow to
  uint32_t queue_depth;          // io_uring entries
  bool register_buffers;         // try fixed buffers + registered file
  std::function<void(std::string_view)> log;  // rare events, each said once (see MakeNvmeTier)
};

class IoBackend;  // tiers/nvme/io_backend.h

// The name of the block file inside NvmeConfig::path.
inline constexpr std::string_view kNvmeBlockFile = "blocks.strata";

// Opens <path>/blocks.strata (created, then truncated once locked; flock'ed so
// a second engine on the same directory gets kFailedPrecondition saying the
// directory is in use), queries the O_DIRECT alignment (statx STATX_DIOALIGN
// where available; fallback 4096), probes io_uring and starts the completion
// thread.
//
// `backend` null = the real io_uring backend; tests pass a fault-injecting
// wrapper (tiers/nvme/fault_backend.h).
//
// The directory is created with its missing parents (mkdir -p); an error
// names the component that could not be created.
//
// Errors: kInvalidArgument (empty path, zero capacity or queue depth, queue
// depth above 32768); kPermissionDenied (EACCES, EPERM, EROFS), kNotFound
// (e.g. a dangling symbolic link) or kFailedPrecondition (a component is not
// a directory: ENOTDIR) when the directory cannot be created or the file
// cannot be opened; kFailedPrecondition when the directory is in use, when
// the file system does not support O_DIRECT, or when io_uring is unusable.
//
// Frames: each of its own size, rounded up to the I/O alignment, placed by
// best fit among free extents that merge when they meet, else at the end of
// the used region. Allocate fails with kResourceExhausted only when no free
// range of that size is left within capacity_bytes, or the file system is
// full; it cannot promise a frame whenever the free bytes add up to enough
// (free space may be in pieces; the message says so). Allocate and Free are
// O(log n) in the number of free extents, plus a system call now and then:
// the file is preallocated ahead of use by a fraction of the bytes in frames
// (so a full disk shows up in Allocate, not in a write), shrinks when frames
// at its end are freed, and free extents of >= 1 MiB give their disk blocks
// back once free space holds more than a small fraction of the bytes in
// frames (fallocate PUNCH_HOLE, where supported). RegisterHostMemory
// registers the arena as fixed buffers (iovecs of at most 1 GiB); when that
// fails (e.g. ENOMEM under RLIMIT_MEMLOCK) it returns the error, saying that
// the tier keeps working with unregistered buffers, which it does; the caller
// logs that status once (the tier does not, to avoid saying it twice). With
// register_buffers == false it does nothing and returns OK. `log` receives
// the other rare events: registered-file fallback, a persistently failing
// io_uring_submit or reap, transfers abandoned at shutdown.
absl::StatusOr<std::unique_ptr<Tier>> MakeNvmeTier(
    const NvmeConfig& config, std::unique_ptr<IoBackend> backend = nullptr);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_NVME_NVME_TIER_H_
