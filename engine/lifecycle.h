// Whether the engine is open, and what is still running in it: public calls
// in progress and asynchronous transfers in flight. Close is a barrier built
// on it: once closing, no new call starts; Close waits until the calls in
// progress have left (each one sees the engine closing at its next wait and
// returns kFailedPrecondition) and every transfer has completed.
//
// Threads: everything here is thread-safe. The counters are touched on slow
// paths only (a resident pin never enters a Scope).
#ifndef STRATA_ENGINE_LIFECYCLE_H_
#define STRATA_ENGINE_LIFECYCLE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>

#include "absl/status/status.h"
#include "engine/wait_table.h"  // Deadline

namespace strata::internal {

class Lifecycle {
 public:
  explicit Lifecycle(std::function<void(std::string_view)> log)
      : log_(std::move(log)) {}

  bool closing() const { return closing_.load(std::memory_order_acquire); }
  // For a pin that announced itself in shared memory first and then looks
  // (the shm pin): sequentially consistent, as Close's count scan is.
  bool closing_seq_cst() const { return closing_.load(std::memory_order_seq_cst); }
  // kFailedPrecondition once Close has begun.
  absl::Status CheckOpen() const;
  static absl::Status ClosedError();

  // A public call in progress, for Close to wait on.
  class Scope {
   public:
    explicit Scope(Lifecycle& life) : life_(&life) {
      life_->active_.fetch_add(1, std::memory_order_acq_rel);
    }
    ~Scope() { life_->Leave(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Lifecycle* life_;
  };

  // An asynchronous transfer (load or write-back) started / finished.
  void AsyncBegin() { async_.fetch_add(1, std::memory_order_acq_rel); }
  void AsyncEnd();
  int64_t async_in_flight() const {
    return async_.load(std::memory_order_acquire);
  }

  // Close's steps: stop new calls; wait for the calls in progress to leave
  // (waking their waits through `interrupt` until they do); wait for
  // transfers.
  void BeginClose() { closing_.store(true, std::memory_order_seq_cst); }
  void CancelClose() { closing_.store(false, std::memory_order_seq_cst); }
  // `ignore` calls are the caller's own (Close inside a Scope).
  void WaitForCalls(const std::function<void()>& interrupt, int64_t ignore);
  // False at the deadline with transfers still in flight.
  bool WaitForTransfers(Deadline deadline);

  void Log(std::string_view message) const { log_(message); }

 private:
  void Leave();

  std::function<void(std::string_view)> log_;
  std::atomic<bool> closing_{false};
  std::atomic<int64_t> active_{0};
  std::atomic<int64_t> async_{0};
  std::mutex mu_;
  std::condition_variable cv_;  // active_ or async_ went down
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_LIFECYCLE_H_
