#include "engine/steps.h"

#include <algorithm>
#include <vector>

#include "engine/catalog.h"
#include "engine/chain.h"
#include "engine/lifecycle.h"
#include "engine/mover.h"
#include "engine/residency.h"

namespace strata::internal {

absl::Status Steps::Begin() {
  std::vector<PlanEntry> first;
  {
    std::lock_guard lock(mu_);
    if (in_step_) {
      return absl::FailedPreconditionError(
          "BeginStep called twice without EndStep; call EndStep first");
    }
    in_step_ = true;
    const uint64_t step = step_.fetch_add(1, std::memory_order_acq_rel) + 1;
    const uint64_t recorded = recorded_.load(std::memory_order_acquire);
    if (recorded == 0) {
      recorded_any_.store(false, std::memory_order_relaxed);
      recording_.store(step, std::memory_order_release);
    } else {
      // Every thread's plan starts on the mover at once.
      parts_.stats->ForEachThread([&](ThreadState& t) {
        std::lock_guard plan_lock(t.plan_mu);
        if (t.recorded_in != recorded) return;
        const size_t n = std::min<size_t>(t.plan.size(), lookahead_);
        first.insert(first.end(), t.plan.begin(), t.plan.begin() + n);
      });
    }
  }
  parts_.catalog->SetGate(TensorState::kGateStep, true);
  if (!first.empty()) parts_.mover->PrefetchPlan(std::move(first));
  return absl::OkStatus();
}

absl::Status Steps::End() {
  {
    std::lock_guard lock(mu_);
    if (!in_step_) {
      return absl::FailedPreconditionError(
          "EndStep called without BeginStep; call BeginStep first");
    }
    in_step_ = false;
    const uint64_t step = step_.load(std::memory_order_acquire);
    if (recording_.load(std::memory_order_acquire) == step) {
      recording_.store(0, std::memory_order_release);
      // A step that pinned nothing teaches nothing: record the next one.
      if (recorded_any_.load(std::memory_order_acquire)) {
        recorded_.store(step, std::memory_order_release);
      }
    }
  }
  parts_.catalog->SetGate(TensorState::kGateStep, false);
  for (int pos = 0; pos < parts_.chain->size(); ++pos) {
    parts_.tier(pos).OnStepBoundary();
  }
  return absl::OkStatus();
}

void Steps::OnPin(ThreadState& thread, const TensorState& ts, uint64_t block,
                  int pos) {
  const uint64_t step = step_.load(std::memory_order_acquire);
  if (recording_.load(std::memory_order_acquire) == step) {
    std::lock_guard lock(thread.plan_mu);
    if (thread.recorded_in != step) {
      thread.plan.clear();
      thread.recorded_in = step;
    }
    thread.plan.push_back({ts.Key(block), pos});
    recorded_any_.store(true, std::memory_order_relaxed);
    return;
  }
  const uint64_t recorded = recorded_.load(std::memory_order_acquire);
  if (recorded == 0 || thread.recorded_in != recorded || thread.plan.empty()) {
    return;
  }
  const uint64_t size = thread.plan.size();
  if (thread.replaying != step) {
    // Begin handed the first `lookahead_` entries to the mover.
    thread.replaying = step;
    thread.plan_pos = 0;
    thread.prefetched_to = std::min(size, lookahead_);
  }
  ++thread.plan_pos;
  // Keep the mover `lookahead_` entries ahead, in chunks of half of it.
  const uint64_t want = std::min(size, thread.plan_pos + lookahead_);
  if (want <= thread.prefetched_to) return;
  if (want < thread.prefetched_to + lookahead_ / 2 && want != size) return;
  std::vector<PlanEntry> next(thread.plan.begin() + thread.prefetched_to,
                              thread.plan.begin() + want);
  thread.prefetched_to = want;
  parts_.mover->PrefetchPlan(std::move(next));
}

}  // namespace strata::internal
