// Eviction policies share one interface (CacheLib's MMLru / MM2Q / MMTinyLFU),
// so a policy is chosen by configuration and tested by one typed suite, and
// the simulator (bench/policy_sim) runs exactly the code the engine runs.
//
// Keys are opaque 64-bit block identities (the engine packs tensor id and
// block index). A policy tracks the *resident* keys of one tier of fixed
// capacity (in blocks) and may keep history of non-resident keys (ghosts).
//
// Threads: not thread-safe. The engine calls a policy under its policy mutex;
// hits reach it in batches drained from per-thread access logs, so the order
// of Access calls is the order of each thread's pins, and may lose a few
// entries under heavy concurrency (every policy must tolerate Access of a key
// it does not hold: ignore it).
#ifndef STRATA_ENGINE_POLICY_POLICY_H_
#define STRATA_ENGINE_POLICY_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace strata::policy {

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view name() const = 0;

  // `key` became resident after a miss (this is also its access).
  virtual void Insert(uint64_t key) = 0;
  // `key` became resident ahead of its use (a prefetch, readahead, a step
  // plan's load): its access, if it comes, arrives later as Access. The
  // engine's policies and the ensemble's candidates count a prefetched
  // block then used as one access, as a miss is (hinted times accesses,
  // default's shadows count requests; lfu, W-TinyLFU, ARC and LIRS take
  // the first Access after it as that one use, not as a reuse). Here: the
  // same as Insert, right for recency-only policies (lru, and the
  // simulator's sieve and s3fifo, which never see it).
  virtual void InsertWithoutAccess(uint64_t key) { Insert(key); }
  // A hit on resident `key`.
  virtual void Access(uint64_t key) = 0;
  // `key` left outside Evict (its tensor was dropped). Unknown keys: no-op.
  virtual void Erase(uint64_t key) = 0;
  // Chooses a victim: offers resident keys in eviction order to
  // `try_claim` and returns the first one it accepts (the engine refuses
  // pinned ones), removing it from the resident set. nullopt when no resident
  // key was accepted. Must offer every resident key before giving up.
  virtual std::optional<uint64_t> Evict(
      absl::FunctionRef<bool(uint64_t)> try_claim) = 0;
  // A training step ended (Engine::EndStep): hint-driven policies learn the
  // step's length from it; others ignore it.
  virtual void OnStepBoundary() {}
  // Number of resident keys tracked.
  virtual size_t size() const = 0;
  // How many accesses so far came when a loop the policy learned predicted
  // them (hinted); 0 for policies that do not look for loops. The default
  // policy lets hinted lead only on streams that have such a loop.
  virtual uint64_t loop_hits() const { return 0; }
};

// Names the engine accepts in EngineOptions::policy.
std::vector<std::string_view> EnginePolicyNames();
// Every online policy the simulator knows (engine ones plus the baselines
// "s3fifo", "wtinylfu", "arc", "lirs", "sieve"); "belady" is separate because
// it needs the future.
std::vector<std::string_view> AllPolicyNames();

// Makes a policy for a tier of `capacity` blocks. kInvalidArgument naming the
// known policies for an unknown name or a zero capacity.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakePolicy(
    std::string_view name, size_t capacity);

}  // namespace strata::policy

#endif  // STRATA_ENGINE_POLICY_POLICY_H_
