// Waiting on a 64-bit word without spinning a core (DESIGN.md invariant 1):
// a waiter sets the word's waiters bit under one of 64 striped mutexes and
// sleeps on the stripe's condition variable until the word changes, the
// deadline passes or the engine closes; whoever changes a word that has the
// bit wakes the stripe.
//
// The waiters bit is the same bit in every word waited on here (copy state
// words and block latches). std::mutex rather than absl::Mutex throughout
// the engine: Debian's Abseil is not built for ThreadSanitizer, which then
// misses absl::Mutex's ordering.
#ifndef STRATA_ENGINE_WAIT_TABLE_H_
#define STRATA_ENGINE_WAIT_TABLE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

namespace strata::internal {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

class WaitTable {
 public:
  static constexpr uint64_t kWaiters = uint64_t{1} << 20;

  WaitTable() : stripes_(new Stripe[kStripes]) {}

  // Sleeps until `word` differs from `seen` (ignoring the waiters bit), the
  // deadline passes, or Interrupt() was called. Returns false only at the
  // deadline with the word unchanged.
  bool WaitForChange(std::atomic<uint64_t>& word, uint64_t seen,
                     Deadline deadline);
  // Wakes whoever waits on `word` (call after changing it, when the old
  // value had the waiters bit).
  void Wake(std::atomic<uint64_t>& word);
  // Stores `desired` (without the waiters bit) and wakes waiters if the old
  // word had it.
  void Publish(std::atomic<uint64_t>& word, uint64_t desired);
  // Wakes every waiter of every word (Close and DropTensor use it: waiters
  // then look at the engine's and the tensor's state again).
  void Interrupt();

 private:
  static constexpr size_t kStripes = 64;
  struct Stripe {
    std::mutex mu;
    std::condition_variable cv;
  };
  Stripe& StripeOf(const void* word) {
    return stripes_[(reinterpret_cast<uintptr_t>(word) / 64) % kStripes];
  }

  std::unique_ptr<Stripe[]> stripes_;
  std::atomic<uint64_t> interrupts_{0};
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_WAIT_TABLE_H_
