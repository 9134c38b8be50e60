#include "engine/lifecycle.h"

#include <chrono>

namespace strata::internal {

absl::Status Lifecycle::ClosedError() {
  return absl::FailedPreconditionError(
      "engine is closed; open a new one with Engine::Open");
}

absl::Status Lifecycle::CheckOpen() const {
  return closing() ? ClosedError() : absl::OkStatus();
}

void Lifecycle::Leave() {
  if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1 ||
      closing_.load(std::memory_order_acquire)) {
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }
}

void Lifecycle::AsyncEnd() {
  if (async_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }
}

void Lifecycle::WaitForCalls(const std::function<void()>& interrupt,
                             int64_t ignore) {
  // A call may have checked the engine was open just before Close began and
  // gone to sleep after the interrupt: interrupt again until all have left.
  std::unique_lock lock(mu_);
  while (active_.load(std::memory_order_acquire) > ignore) {
    lock.unlock();
    interrupt();
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(5), [&] {
      return active_.load(std::memory_order_acquire) <= ignore;
    });
  }
}

bool Lifecycle::WaitForTransfers(Deadline deadline) {
  std::unique_lock lock(mu_);
  return cv_.wait_until(lock, deadline, [&] {
    return async_.load(std::memory_order_acquire) == 0;
  });
}

}  // namespace strata::internal
