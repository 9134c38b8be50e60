// Raw io_uring + O_DIRECT baselines for the NVMe benchmarks: what the device
// (and file system) gives with nothing of Strata in the way. Each function
// opens the file itself with O_DIRECT, sets up one ring of `queue_depth`
// entries (RawRandomReader keeps its ring for many calls), keeps
// `queue_depth` I/Os in flight from 4096-aligned buffers
// (registered as fixed buffers when the kernel lets it, plain otherwise),
// checks every completion (short I/O resubmits the rest; an error or an
// unexpected end of file is a Status naming the file, offset and errno) and
// times only the I/O loop, not the setup.
//
// Example:
//   auto w = RawSequentialWrite("/data/raw.bin", 1 << 20, 32, 1ull << 30);
//   if (!w.ok()) return w.status();
//   auto r = RawSequentialRead("/data/raw.bin", 1 << 20, 32, 1ull << 30);
//   double gbps = r->bytes_per_second() / 1e9;
//
// `memory_bytes` is how much memory the I/O streams through (0: one buffer
// per I/O in flight). A storage engine reads into and writes from its whole
// cache, not a few hot buffers; benchmarks pass the engine's host tier size
// so that both sides touch the same amount of memory (on virtualized disks
// the copy behind a DMA is faster from buffers that stay in the CPU cache).
//
// The sequential functions are self-contained (each sets up and tears down
// its own ring); calls on different files may run in parallel.
#ifndef STRATA_BENCH_NVME_BASELINE_H_
#define STRATA_BENCH_NVME_BASELINE_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "absl/status/statusor.h"

namespace strata::bench {

struct RawIoResult {
  uint64_t ops = 0;     // I/Os completed (as asked, not counting resubmits)
  uint64_t bytes = 0;   // bytes moved
  double seconds = 0;   // wall time of the I/O loop
  bool fixed_buffers = false;  // whether registered buffers were used
  double bytes_per_second() const { return seconds > 0 ? bytes / seconds : 0; }
  double ops_per_second() const { return seconds > 0 ? ops / seconds : 0; }
};

// Creates `path` if it is missing, preallocates `total_bytes` (fallocate,
// not timed, so the measurement matches the tier's preallocated file), and
// writes it front to back in I/Os of `block_bytes`; an existing file is
// overwritten in place (not truncated), like the tier's extents. `block_bytes`
// must be a multiple of 4096 and `total_bytes` a multiple of `block_bytes`
// (kInvalidArgument otherwise).
absl::StatusOr<RawIoResult> RawSequentialWrite(const std::string& path,
                                               uint64_t block_bytes,
                                               uint32_t queue_depth,
                                               uint64_t total_bytes,
                                               uint64_t memory_bytes = 0);

// Reads the first `total_bytes` of `path` front to back in I/Os of
// `block_bytes` (same alignment rules). kOutOfRange if the file is shorter.
absl::StatusOr<RawIoResult> RawSequentialRead(const std::string& path,
                                              uint64_t block_bytes,
                                              uint32_t queue_depth,
                                              uint64_t total_bytes,
                                              uint64_t memory_bytes = 0);

class RawIoLoop;

// Random reads of `io_bytes` at uniformly random `io_bytes`-aligned offsets
// of `path` (the whole file), from a generator seeded with `seed`, through
// ONE ring kept for the reader's life, as an engine keeps its ring: each
// Read(count) times only its I/O loop, `queue_depth` reads in flight, and
// the next call goes on where it stopped (offsets and buffers alike).
//
// Example:
//   auto reader = RawRandomReader::Open("/data/raw.bin", 64 << 10, 16);
//   if (!reader.ok()) return reader.status();
//   for (...) { auto r = (*reader)->Read(32); ... r->seconds ... }
//
// Not thread-safe: one thread calls Read at a time.
class RawRandomReader {
 public:
  // Opens `path` with O_DIRECT and sets up the ring and buffers (not timed).
  // kInvalidArgument for a bad size or depth, kOutOfRange if the file is
  // shorter than one I/O.
  static absl::StatusOr<std::unique_ptr<RawRandomReader>> Open(
      const std::string& path, uint64_t io_bytes = 64 << 10,
      uint32_t queue_depth = 16, uint64_t seed = 1, uint64_t memory_bytes = 0);
  ~RawRandomReader();
  RawRandomReader(const RawRandomReader&) = delete;
  RawRandomReader& operator=(const RawRandomReader&) = delete;

  // `count` (> 0) random reads. After an error the reader is broken: later
  // calls return kFailedPrecondition.
  absl::StatusOr<RawIoResult> Read(uint64_t count);
  bool fixed_buffers() const;

 private:
  RawRandomReader(std::string path, int fd, uint64_t seed);

  const std::string path_;
  const int fd_;
  uint64_t io_bytes_ = 0;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<uint64_t> pick_;
  std::unique_ptr<RawIoLoop> loop_;
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_NVME_BASELINE_H_
