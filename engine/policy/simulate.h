// Replaying traces through policies: the core of bench/policy_sim, shared
// with the tests so the numbers in docs/PERFORMANCE.md and the test targets
// come from the same code.
#ifndef STRATA_ENGINE_POLICY_SIMULATE_H_
#define STRATA_ENGINE_POLICY_SIMULATE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/policy/policy.h"

namespace strata::policy {

struct SimResult {
  std::string policy;
  uint64_t requests = 0;
  uint64_t misses = 0;

  double miss_ratio() const {
    return requests == 0 ? 0.0
                         : static_cast<double>(misses) /
                               static_cast<double>(requests);
  }
};

// Replays `trace` the way the engine drives a tier: a request for a resident
// key is Access; otherwise it is a miss, Evict (accepting the first offer)
// runs when `capacity` keys are resident, then Insert. The policy must be
// fresh (empty).
SimResult Replay(EvictionPolicy& policy, absl::Span<const uint64_t> trace,
                 size_t capacity);

// Every name Simulate accepts: AllPolicyNames() and "belady".
std::vector<std::string_view> SimulatorPolicyNames();

// Replays `trace` with a new policy `name` (or Belady's MIN for "belady").
// kInvalidArgument for an unknown name or a zero capacity.
absl::StatusOr<SimResult> Simulate(std::string_view name,
                                   absl::Span<const uint64_t> trace,
                                   size_t capacity);

// An online reference for a TrainingTrace at a capacity above its
// `layer_blocks`: the misses of A0 (Aho, Denning and Ullman, 1971) told the
// embedding rows' popularity: layer blocks, once loaded, stay; the victim is
// always the least popular resident row. A0 is the best demand-paging policy
// for independent requests of known probabilities; keeping every layer block
// is right when no single row is worth a certain miss per step (true of the
// suite's tables). So hinted / belady is not expected below A0 / belady:
// that gap is the price of not knowing the lookups in advance, which Belady
// knows. kInvalidArgument when the capacity does not exceed `layer_blocks`.
absl::StatusOr<uint64_t> TrainingA0Misses(absl::Span<const uint64_t> trace,
                                          size_t capacity,
                                          size_t layer_blocks);

// The workloads behind the targets in docs/PERFORMANCE.md, generated in
// memory: Zipf 0.99, Zipf with one-hit scans, and repeated training steps
// with 1, 2 and 4 embedding lookups per layer, each with the cache sizes
// they are measured at.
struct SuiteWorkload {
  struct Cache {
    std::string label;  // e.g. "1%" (of the Zipf universe), "50% layers"
    size_t capacity;
    // Target for hinted's miss ratio over Belady's; 0 when there is none.
    double hinted_vs_belady = 0;
  };
  std::string name;
  std::string params;  // The generator parameters, for the record.
  std::vector<uint64_t> trace;
  std::vector<Cache> caches;
  // Training traces: the number of layer blocks (parameters and optimizer
  // state); 0 for the others.
  size_t layer_blocks = 0;
};
// `scale` multiplies Zipf universes and lengths and the number of training
// steps (1 for the documented table; the smoke test and unit tests use less).
std::vector<SuiteWorkload> StandardSuite(double scale);

}  // namespace strata::policy

#endif  // STRATA_ENGINE_POLICY_SIMULATE_H_
