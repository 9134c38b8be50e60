// What an eviction policy costs the engine per request, beside the cheapest
// one. The engine calls its tier's policy under one mutex, on the mover and
// on every pinner that misses, so this CPU is spent between a workload's
// reads (the embed workload waited on it: docs/PERFORMANCE.md, "The
// ensemble's followers sleep").
//
//   BM_PolicyZipf   demand paging of Zipf 1.0 lookups over 262,144 keys with
//                   16,384 cached (the embed workload's 4 KiB blocks at 4x
//                   its 64 MiB host tier), one request per iteration, after
//                   300,000 requests of warm-up
//     /strata       the engine's default policy (the adaptive ensemble)
//     /baseline     lru (a list move per request)
//     /hinted /wtinylfu /arc /lirs   the ensemble's candidates alone
//   BM_PolicyLoop   a loop over 24,576 keys (1.5x the cache), the shape of
//                   a training sweep heard without step boundaries
//     /strata /baseline /hinted      as above
//
// Counters: miss_ratio over the timed requests. Read each group as strata /
// baseline, time per request, measured in the same run.
//
//   build/bench/policy_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/container/flat_hash_set.h"
#include "engine/policy/policy.h"
#include "engine/policy/traces.h"

namespace {

constexpr size_t kCapacity = 16'384;
constexpr size_t kWarmup = 300'000;

const std::vector<uint64_t>& ZipfLookups() {
  static const std::vector<uint64_t> trace = [] {
    strata::policy::ZipfParams p;
    p.universe = 262'144;
    p.alpha = 1.0;
    p.length = 2'000'000;
    p.seed = 3;
    return strata::policy::ZipfTrace(p);
  }();
  return trace;
}

const std::vector<uint64_t>& Loop() {
  static const std::vector<uint64_t> trace = [] {
    std::vector<uint64_t> t;
    for (uint64_t k = 0; k < 3 * kCapacity / 2; ++k) t.push_back(k);
    return t;
  }();
  return trace;
}

// A policy and the resident set it ranks, paged on demand.
class Pager {
 public:
  Pager(const std::string& policy, benchmark::State& state) {
    absl::StatusOr<std::unique_ptr<strata::policy::EvictionPolicy>> p =
        strata::policy::MakePolicy(policy, kCapacity);
    if (!p.ok()) {
      state.SkipWithError(std::string(p.status().message()).c_str());
      return;
    }
    policy_ = std::move(*p);
    resident_.reserve(kCapacity);
  }
  bool ok() const { return policy_ != nullptr; }

  // One request; true on a miss.
  bool Request(uint64_t key) {
    if (resident_.contains(key)) {
      policy_->Access(key);
      return false;
    }
    if (resident_.size() == kCapacity) {
      const std::optional<uint64_t> victim =
          policy_->Evict([](uint64_t) { return true; });
      if (victim) resident_.erase(*victim);
    }
    policy_->Insert(key);
    resident_.insert(key);
    return true;
  }

 private:
  std::unique_ptr<strata::policy::EvictionPolicy> policy_;
  absl::flat_hash_set<uint64_t> resident_;
};

void Run(benchmark::State& state, const std::string& policy,
         const std::vector<uint64_t>& trace) {
  Pager pager(policy, state);
  if (!pager.ok()) return;
  size_t i = 0;
  for (; i < kWarmup; ++i) pager.Request(trace[i % trace.size()]);
  uint64_t misses = 0, requests = 0;
  for (auto _ : state) {
    misses += pager.Request(trace[i++ % trace.size()]);
    ++requests;
  }
  state.SetItemsProcessed(static_cast<int64_t>(requests));
  state.counters["miss_ratio"] =
      requests == 0 ? 0.0 : static_cast<double>(misses) / requests;
}

void RegisterAll() {
  struct Side {
    const char* label;
    const char* policy;
  };
  const Side zipf[] = {{"strata", "default"}, {"baseline", "lru"},
                       {"hinted", "hinted"},  {"wtinylfu", "wtinylfu"},
                       {"arc", "arc"},        {"lirs", "lirs"}};
  for (const Side& s : zipf) {
    const std::string policy = s.policy;
    benchmark::RegisterBenchmark(
        (std::string("BM_PolicyZipf/") + s.label).c_str(),
        [policy](benchmark::State& st) { Run(st, policy, ZipfLookups()); });
  }
  const Side loop[] = {
      {"strata", "default"}, {"baseline", "lru"}, {"hinted", "hinted"}};
  for (const Side& s : loop) {
    const std::string policy = s.policy;
    benchmark::RegisterBenchmark(
        (std::string("BM_PolicyLoop/") + s.label).c_str(),
        [policy](benchmark::State& st) { Run(st, policy, Loop()); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
