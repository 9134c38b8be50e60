// A callback for tests at one point of the engine's block protocol, set
// through engine/testing.h (SetEvictionHook, SetLoadSourceHook): it lets a
// test act, from another thread, inside a window the engine's own calls
// cannot be made to stop in. Called with the tensor's name, the block and a
// tier. Empty in production, where a call costs one load.
//
// Threads: call it from any thread; Set it only while nothing calls it (the
// contract testing.h states).
#ifndef STRATA_ENGINE_BLOCK_HOOK_H_
#define STRATA_ENGINE_BLOCK_HOOK_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>
#include <utility>

#include "api/strata/strata.h"

namespace strata::internal {

class BlockHook {
 public:
  using Fn = std::function<void(std::string_view tensor, uint64_t block, Tier tier)>;

  void Set(Fn fn) {
    std::lock_guard lock(mu_);
    set_.store(static_cast<bool>(fn), std::memory_order_release);
    fn_ = std::move(fn);
  }

  void operator()(std::string_view tensor, uint64_t block, Tier tier) {
    if (!set_.load(std::memory_order_acquire)) return;
    Fn fn;
    {
      std::lock_guard lock(mu_);
      fn = fn_;
    }
    if (fn) fn(tensor, block, tier);
  }

 private:
  std::atomic<bool> set_{false};
  std::mutex mu_;
  Fn fn_;  // guarded by mu_
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_BLOCK_HOOK_H_
