// Per-thread access logs: how hits reach the eviction policy without a lock
// shared by all threads on the hot path (DESIGN.md, "Policies see accesses
// through a cheap record"). Each thread that pins owns one ring; a pin appends
// its block key with two relaxed stores. The policy drains every ring under
// its mutex on the miss path. A ring overwritten before it was drained loses
// its oldest entries: the log is lossy by design, and policies tolerate it.
//
// The ring also holds the thread's hit/miss counters and latency histograms,
// written by the owner only and summed by GetStats.
#ifndef STRATA_ENGINE_ACCESS_LOG_H_
#define STRATA_ENGINE_ACCESS_LOG_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "api/strata/strata.h"

namespace strata::internal {

// Log-scale latency histogram: four buckets per power of two of nanoseconds.
// One writer (the owning thread), any number of readers.
class LatencyHistogram {
 public:
  static constexpr int kBuckets = 4 * 40;
  void Record(uint64_t nanos);
  // Adds this histogram's counts into `counts`.
  void AddTo(std::array<uint64_t, kBuckets>& counts) const;
  static LatencySummary Summarize(const std::array<uint64_t, kBuckets>& counts);

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
};

// A single writer bumps a counter without a locked instruction.
inline void Bump(std::atomic<uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1,
                std::memory_order_relaxed);
}

struct alignas(64) ThreadRing {
  static constexpr uint64_t kSize = 1024;

  void Record(uint64_t key) {
    const uint64_t h = head.load(std::memory_order_relaxed);
    keys[h & (kSize - 1)].store(key, std::memory_order_relaxed);
    head.store(h + 1, std::memory_order_release);
  }
  // Calls f(key) for every entry not drained yet (at most kSize of them).
  template <typename F>
  void Drain(F&& f) {
    const uint64_t h = head.load(std::memory_order_acquire);
    uint64_t from = drained;
    if (h - from > kSize) from = h - kSize;
    for (uint64_t i = from; i < h; ++i) {
      f(keys[i & (kSize - 1)].load(std::memory_order_relaxed));
    }
    drained = h;
  }

  // Entries ever recorded: every hit records one, so this is the hit count.
  std::atomic<uint64_t> head{0};
  uint64_t drained = 0;  // the drainer's position (under the policy mutex)
  std::atomic<uint64_t> misses{0};
  LatencyHistogram hit_latency;
  LatencyHistogram miss_latency;
  std::array<std::atomic<uint64_t>, kSize> keys{};
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_ACCESS_LOG_H_
