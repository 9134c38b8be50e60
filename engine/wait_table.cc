#include "engine/wait_table.h"

namespace strata::internal {

bool WaitTable::WaitForChange(std::atomic<uint64_t>& word, uint64_t seen,
                              Deadline deadline) {
  Stripe& stripe = StripeOf(&word);
  std::unique_lock lock(stripe.mu);
  const uint64_t interrupts = interrupts_.load(std::memory_order_acquire);
  for (;;) {
    uint64_t w = word.load(std::memory_order_acquire);
    if ((w & ~kWaiters) != (seen & ~kWaiters)) return true;
    if (interrupts_.load(std::memory_order_acquire) != interrupts) return true;
    if ((w & kWaiters) == 0 &&
        !word.compare_exchange_weak(w, w | kWaiters,
                                    std::memory_order_acq_rel)) {
      continue;
    }
    if (stripe.cv.wait_until(lock, deadline) == std::cv_status::timeout) {
      w = word.load(std::memory_order_acquire);
      return (w & ~kWaiters) != (seen & ~kWaiters) ||
             interrupts_.load(std::memory_order_acquire) != interrupts;
    }
  }
}

void WaitTable::Wake(std::atomic<uint64_t>& word) {
  word.fetch_and(~kWaiters, std::memory_order_acq_rel);
  Stripe& stripe = StripeOf(&word);
  std::lock_guard lock(stripe.mu);
  stripe.cv.notify_all();
}

void WaitTable::Publish(std::atomic<uint64_t>& word, uint64_t desired) {
  const uint64_t old =
      word.exchange(desired & ~kWaiters, std::memory_order_acq_rel);
  if (old & kWaiters) Wake(word);
}

void WaitTable::Interrupt() {
  interrupts_.fetch_add(1, std::memory_order_acq_rel);
  for (size_t i = 0; i < kStripes; ++i) {
    std::lock_guard lock(stripes_[i].mu);
    stripes_[i].cv.notify_all();
  }
}

}  // namespace strata::internal
