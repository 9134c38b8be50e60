#include "engine/stats.h"

namespace strata::internal {

constinit thread_local Stats::Tls Stats::tls_;

Stats::Stats(uint64_t uid, std::vector<int> pinnable_positions)
    : uid_(uid), pinnable_(std::move(pinnable_positions)) {}

void Stats::Register() {
  std::lock_guard lock(mu_);
  ThreadState*& state = by_thread_[std::this_thread::get_id()];
  if (state == nullptr) {
    threads_.push_back(std::make_unique<ThreadState>());
    state = threads_.back().get();
    for (int pos : pinnable_) state->rings[pos] = std::make_unique<ThreadRing>();
  }
  tls_.uid = uid_;
  tls_.state = state;
  for (int pos = 0; pos < kMaxChain; ++pos) tls_.rings[pos] = state->rings[pos].get();
}

void Stats::SumRings(
    int pos, uint64_t* hits, uint64_t* misses,
    std::array<uint64_t, LatencyHistogram::kBuckets>* hit_lat,
    std::array<uint64_t, LatencyHistogram::kBuckets>* miss_lat) const {
  std::lock_guard lock(mu_);
  for (const auto& t : threads_) {
    const ThreadRing* ring = t->rings[pos].get();
    if (ring == nullptr) continue;
    *hits += ring->head.load(std::memory_order_relaxed);
    *misses += ring->misses.load(std::memory_order_relaxed);
    ring->hit_latency.AddTo(*hit_lat);
    ring->miss_latency.AddTo(*miss_lat);
  }
}

}  // namespace strata::internal
