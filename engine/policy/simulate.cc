#include "engine/policy/simulate.h"

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <memory>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/policy/belady.h"
#include "engine/policy/traces.h"
#include "util/status_macros.h"

namespace strata::policy {

SimResult Replay(EvictionPolicy& policy, absl::Span<const uint64_t> trace,
                 size_t capacity) {
  SimResult result;
  result.policy = std::string(policy.name());
  absl::flat_hash_set<uint64_t> resident;
  resident.reserve(capacity);
  for (uint64_t key : trace) {
    ++result.requests;
    if (resident.contains(key)) {
      policy.Access(key);
      continue;
    }
    ++result.misses;
    if (resident.size() >= capacity) {
      const std::optional<uint64_t> victim =
          policy.Evict([](uint64_t) { return true; });
      assert(victim.has_value() && resident.contains(*victim));
      if (victim) resident.erase(*victim);
    }
    policy.Insert(key);
    resident.insert(key);
    assert(policy.size() == resident.size());
  }
  return result;
}

std::vector<std::string_view> SimulatorPolicyNames() {
  std::vector<std::string_view> names = AllPolicyNames();
  names.push_back("belady");
  return names;
}

absl::StatusOr<SimResult> Simulate(std::string_view name,
                                   absl::Span<const uint64_t> trace,
                                   size_t capacity) {
  if (name == "belady") {
    if (capacity == 0) {
      return absl::InvalidArgumentError(
          "policy belady: capacity is 0 blocks; give at least one block");
    }
    SimResult result;
    result.policy = "belady";
    result.requests = trace.size();
    result.misses = BeladyMisses(trace, capacity);
    return result;
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<EvictionPolicy> policy,
                          MakePolicy(name, capacity));
  return Replay(*policy, trace, capacity);
}

absl::StatusOr<uint64_t> TrainingA0Misses(absl::Span<const uint64_t> trace,
                                          size_t capacity,
                                          size_t layer_blocks) {
  if (capacity <= layer_blocks) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "A0 reference: capacity %d does not exceed the %d layer blocks; it is "
        "defined only where every layer block fits with room for a row",
        capacity, layer_blocks));
  }
  absl::flat_hash_set<uint64_t> resident;
  std::map<uint64_t, uint64_t> rows;  // Resident rows by rank: their keys.
  uint64_t misses = 0;
  for (uint64_t key : trace) {
    if (resident.contains(key)) continue;
    ++misses;
    if (resident.size() >= capacity) {
      if (rows.empty()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "A0 reference: more than %d layer blocks in the trace",
            layer_blocks));
      }
      resident.erase(std::prev(rows.end())->second);
      rows.erase(std::prev(rows.end()));
    }
    resident.insert(key);
    if (const std::optional<uint64_t> rank = TrainingEmbeddingRank(key)) {
      rows.emplace(*rank, key);
    }
  }
  return misses;
}

std::vector<SuiteWorkload> StandardSuite(double scale) {
  auto scaled = [scale](double n) {
    return static_cast<size_t>(std::max(1.0, n * scale));
  };
  std::vector<SuiteWorkload> suite;

  ZipfParams zipf;
  zipf.universe = scaled(100'000);
  zipf.length = scaled(2'000'000);
  const std::vector<SuiteWorkload::Cache> zipf_caches = {
      {"1%", std::max<size_t>(1, zipf.universe / 100)},
      {"10%", std::max<size_t>(1, zipf.universe / 10)}};
  suite.push_back({"zipf",
                   absl::StrFormat("universe=%d alpha=%.2f length=%d seed=%d",
                                   zipf.universe, zipf.alpha, zipf.length,
                                   zipf.seed),
                   ZipfTrace(zipf), zipf_caches});

  ZipfScanParams scan;
  scan.zipf = zipf;
  scan.zipf.seed = 2;
  suite.push_back(
      {"zipf_scan",
       absl::StrFormat("universe=%d alpha=%.2f zipf_length=%d seed=%d "
                       "scan_fraction=%.2f scan_length=%d",
                       scan.zipf.universe, scan.zipf.alpha, scan.zipf.length,
                       scan.zipf.seed, scan.scan_fraction, scan.scan_length),
       ZipfScanTrace(scan), zipf_caches});

  // Training steps with 1, 2 and 4 embedding lookups per layer; hinted's
  // targets (issue: within 1.05x of Belady at half and at all of the layer
  // blocks; 1.02x at half with one lookup) travel with the caches.
  for (const size_t lookups : {1, 2, 4}) {
    TrainingParams training;
    training.lookups_per_layer = lookups;
    training.steps = scaled(50);
    const size_t layer = training.layer_blocks();
    SuiteWorkload w;
    w.name = lookups == 1 ? "training"
                          : absl::StrFormat("training_%dlookups", lookups);
    w.params = absl::StrFormat(
        "layers=%d blocks_per_layer=%d optimizer_blocks_per_layer=%d "
        "embedding_rows=%d embedding_alpha=%.2f lookups_per_layer=%d "
        "steps=%d seed=%d",
        training.layers, training.blocks_per_layer,
        training.optimizer_blocks_per_layer, training.embedding_rows,
        training.embedding_alpha, training.lookups_per_layer, training.steps,
        training.seed);
    w.trace = TrainingTrace(training);
    w.layer_blocks = layer;
    w.caches = {{"25% layers", layer / 4},
                {"50% layers", layer / 2, lookups == 1 ? 1.02 : 1.05},
                {"100% layers + 256", layer + 256, 1.05}};
    suite.push_back(std::move(w));
  }
  return suite;
}

}  // namespace strata::policy
