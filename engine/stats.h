// Counters of the engine, per tier, and the per-thread state that keeps the
// hot path free of shared writes: each thread that pins owns, per engine, one
// access ring per pinnable tier (hits reach the policies through them, and
// they count the hits) and its own step plan (steps.h).
//
// Threads: counters are relaxed atomics; a ThreadState is written by its
// thread only, except what the policy drains under its mutex and what
// Steps reads under its mutex (each field says).
#ifndef STRATA_ENGINE_STATS_H_
#define STRATA_ENGINE_STATS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/container/flat_hash_map.h"
#include "engine/access_log.h"
#include "engine/block_table.h"

namespace strata::internal {

struct TierCounters {
  std::atomic<uint64_t> bytes_in{0};     // bytes copied into this tier
  std::atomic<uint64_t> bytes_out{0};    // bytes copied out of it
  std::atomic<uint64_t> evictions{0};    // copies dropped to make room
  std::atomic<uint64_t> write_backs{0};  // dirty copies acknowledged below
  std::atomic<uint64_t> errors{0};       // failed transfers of this tier
  std::atomic<uint64_t> speculative_errors{0};  // of which nobody waited for
  std::atomic<int64_t> write_backs_in_flight{0};
};

// One step plan entry: (tensor id << 32 | block) and the chain position the
// block was pinned in.
struct PlanEntry {
  uint64_t key = 0;
  int pos = 0;
};

struct ThreadState {
  // Rings of the pinnable tiers (null for the others).
  std::array<std::unique_ptr<ThreadRing>, kMaxChain> rings;
  // This thread's step plan: appended by the thread while a step is
  // recorded, read by BeginStep; both under plan_mu (never contended on a
  // pin: BeginStep runs between steps).
  std::mutex plan_mu;
  std::vector<PlanEntry> plan;
  uint64_t recorded_in = 0;   // the recording step the plan belongs to
  uint64_t replaying = 0;     // the replayed step the positions are for
  uint64_t plan_pos = 0;      // entries of the plan pinned in this step
  uint64_t prefetched_to = 0; // entries handed to the mover in this step
};

class Stats {
 public:
  Stats(uint64_t uid, std::vector<int> pinnable_positions);

  TierCounters& tier(int pos) { return counters_[pos]; }
  const TierCounters& tier(int pos) const { return counters_[pos]; }

  // What a thread caches of the engine it used last: its state and its
  // rings by chain position.
  struct Tls {
    uint64_t uid = 0;
    ThreadState* state = nullptr;
    std::array<ThreadRing*, kMaxChain> rings{};
  };
  // This thread's cache for the engine `uid`: one thread-local compare on
  // the hot path, a registration under a mutex the first time.
  Tls& Local() {
    if (ABSL_PREDICT_FALSE(tls_.uid != uid_)) Register();
    return tls_;
  }
  // The same, for a caller that keeps the engine's uid itself (the pin hot
  // path: one load less).
  static Tls& Cached() { return tls_; }
  void Register();
  uint64_t uid() const { return uid_; }

  // Calls f(ThreadState&) for every thread that ever pinned (under the
  // registry mutex).
  template <typename F>
  void ForEachThread(F&& f) const {
    std::lock_guard lock(mu_);
    for (const auto& t : threads_) f(*t);
  }

  // Hits, misses and pin latencies of tier `pos` summed over threads.
  void SumRings(int pos, uint64_t* hits, uint64_t* misses,
                std::array<uint64_t, LatencyHistogram::kBuckets>* hit_lat,
                std::array<uint64_t, LatencyHistogram::kBuckets>* miss_lat) const;

 private:
  // constinit: no dynamic initialization, so the hot path reads it directly
  // instead of through a TLS wrapper call (it is defined in stats.cc).
  static constinit thread_local Tls tls_;

  const uint64_t uid_;
  const std::vector<int> pinnable_;
  std::array<TierCounters, kMaxChain> counters_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<ThreadState>> threads_;
  absl::flat_hash_map<std::thread::id, ThreadState*> by_thread_;
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_STATS_H_
