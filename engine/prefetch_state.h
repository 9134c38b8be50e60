// What a PrefetchHandle waits on: a count of blocks still on their way and
// the first error among those that failed.
#ifndef STRATA_ENGINE_PREFETCH_STATE_H_
#define STRATA_ENGINE_PREFETCH_STATE_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"

namespace strata::internal {

struct PrefetchState {
  std::mutex mu;
  uint64_t pending ABSL_GUARDED_BY(mu) = 0;
  absl::Status first_error ABSL_GUARDED_BY(mu);
  std::condition_variable cv;

  // One block arrived (OK) or did not (its error).
  void Done(const absl::Status& status) {
    std::lock_guard lock(mu);
    if (!status.ok() && first_error.ok()) first_error = status;
    if (pending > 0 && --pending == 0) cv.notify_all();
  }
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_PREFETCH_STATE_H_
