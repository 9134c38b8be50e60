// Step hints: the pins of the first step between BeginStep and EndStep are
// recorded as the step's plan, one plan per pinning thread, each in that
// thread's own order; in later steps each thread's pins advance its own
// position in its own plan, and the mover loads ahead along it. EndStep
// tells every tier's policy where a step ends (the "hinted" policy learns
// its period from it).
//
// Pins during a step take no lock shared by all threads: recording appends
// to the thread's own plan (its own mutex, uncontended), and replay moves
// the thread's own position; only every `lookahead / 2` pins does a thread
// hand the next part of its plan to the mover.
//
// Threads: BeginStep/EndStep from any thread (one step at a time); OnPin
// from the pinning thread.
#ifndef STRATA_ENGINE_STEPS_H_
#define STRATA_ENGINE_STEPS_H_

#include <atomic>
#include <cstdint>
#include <mutex>

#include "absl/status/status.h"
#include "engine/block_table.h"
#include "engine/parts.h"
#include "engine/stats.h"

namespace strata::internal {

class Steps {
 public:
  Steps(EngineParts& parts, uint64_t lookahead)
      : parts_(parts), lookahead_(std::max<uint64_t>(lookahead, 1)) {}

  absl::Status Begin();
  absl::Status End();
  // A pin of `block` of `ts` in tier `pos` while the step gate is up.
  void OnPin(ThreadState& thread, const TensorState& ts, uint64_t block, int pos);

 private:
  EngineParts& parts_;
  const uint64_t lookahead_;
  std::mutex mu_;
  bool in_step_ = false;
  std::atomic<uint64_t> step_{0};       // steps begun so far
  std::atomic<uint64_t> recording_{0};  // the step being recorded, or 0
  std::atomic<uint64_t> recorded_{0};   // the step whose plans replay, or 0
  std::atomic<bool> recorded_any_{false};  // a pin was recorded this step
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_STEPS_H_
