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

// The workloads behind the targets in docs/PERFORMANCE.md, generated in
// memory: Zipf 0.99, Zipf with one-hit scans, and repeated training steps,
// each with the cache sizes they are measured at.
struct SuiteWorkload {
  struct Cache {
    std::string label;  // e.g. "1%" (of the Zipf universe), "50% layers"
    size_t capacity;
  };
  std::string name;
  std::string params;  // The generator parameters, for the record.
  std::vector<uint64_t> trace;
  std::vector<Cache> caches;
};
// `scale` multiplies Zipf universes and lengths and the number of training
// steps (1 for the documented table; the smoke test and unit tests use less).
std::vector<SuiteWorkload> StandardSuite(double scale);

}  // namespace strata::policy

#endif  // STRATA_ENGINE_POLICY_SIMULATE_H_
