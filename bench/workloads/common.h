// What the workloads share: progress lines, scratch files, child processes
// for the page-cache baselines, and the memory cgroup that holds those
// children to the same memory as the engine's tier.
#ifndef STRATA_BENCH_WORKLOADS_COMMON_H_
#define STRATA_BENCH_WORKLOADS_COMMON_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/workloads/workloads.h"

namespace strata::bench {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start);

// "64 MiB", "1.5 GiB".
std::string Bytes(uint64_t bytes);

// The working sets a workload runs at: options.sizes, or options.scales x
// options.tier_bytes.
std::vector<uint64_t> WorkingSets(const WorkloadOptions& options);

// Runs `one` at each of WorkingSets(options) and joins their results; the
// first error ends the run.
absl::StatusOr<std::vector<Result>> RunSizes(
    const WorkloadOptions& options,
    const std::function<absl::StatusOr<std::vector<Result>>(uint64_t)>& one);

// Prints "<what>: <done>/<total> <unit>, <rate>, ~<left> left" through
// options.progress, at most every half second and at the end.
class Progress {
 public:
  Progress(const WorkloadOptions& options, std::string what, double total,
           std::string unit);
  void Update(double done);
  void Done();

 private:
  const WorkloadOptions& options_;
  std::string what_, unit_;
  double total_;
  double done_ = 0;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_ = start_;
};

// Errors of the workloads' own syscalls, with the path and what to do.
absl::Status SysError(int err, absl::string_view what);

// Creates (or truncates) `path` as `bytes` bytes, each 4 KiB page filled by
// `fill(page_index, page)`; fsync'd and dropped from the page cache, so the
// run that reads it starts cold.
absl::Status WriteFile(const std::string& path, uint64_t bytes,
                       const std::function<void(uint64_t, std::byte*)>& fill);
// fsync + POSIX_FADV_DONTNEED: the file's pages leave the page cache.
absl::Status DropFromPageCache(const std::string& path);
// Bytes of `path` in the page cache now (mincore over a mapping of it).
absl::StatusOr<uint64_t> CachedBytes(const std::string& path);

// A memory cgroup (v2, or v1's memory controller) limited to `bytes`, for
// the page-cache baselines: a child joins it before it touches its file,
// so the page cache it fills is charged to, and reclaimed within, that
// limit. nullopt where none can be made (not root, no memory controller):
// the caller then runs unlimited and says so in its results.
class MemoryLimit {
 public:
  static std::optional<MemoryLimit> Create(uint64_t bytes);
  MemoryLimit(MemoryLimit&& other) noexcept;
  MemoryLimit& operator=(MemoryLimit&&) = delete;
  ~MemoryLimit();
  // Moves the calling process into the cgroup.
  absl::Status JoinSelf() const;

 private:
  MemoryLimit(std::string dir, bool v2) : dir_(std::move(dir)), v2_(v2) {}
  std::string dir_;
  bool v2_ = false;
};

// Runs `body` in a forked child (in `limit`'s cgroup when given) and
// returns the doubles it reported, or its error. The child must not rely on
// threads of the parent: call this with no engine open.
absl::StatusOr<std::vector<double>> RunInChild(
    const MemoryLimit* limit,
    const std::function<absl::StatusOr<std::vector<double>>()>& body);

// A page-aligned, zeroed heap buffer (O_DIRECT needs aligned memory).
class AlignedBuffer {
 public:
  // kResourceExhausted when the memory is not there (a --tier or --size
  // larger than this machine).
  static absl::StatusOr<std::unique_ptr<AlignedBuffer>> Make(uint64_t bytes);
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();
  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  AlignedBuffer(std::byte* data, uint64_t size) : data_(data), size_(size) {}
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

// pread/pwrite of all of `len` bytes (retrying short transfers and EINTR).
absl::Status PreadAll(int fd, void* buf, uint64_t len, uint64_t offset,
                      absl::string_view path);
absl::Status PwriteAll(int fd, const void* buf, uint64_t len, uint64_t offset,
                       absl::string_view path);

// Proportional set size of process `pid` in bytes (/proc/pid/smaps_rollup).
absl::StatusOr<uint64_t> PssBytes(pid_t pid);

}  // namespace strata::bench

#endif  // STRATA_BENCH_WORKLOADS_COMMON_H_
