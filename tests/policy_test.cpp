// Tests of the eviction policies: one contract every policy keeps (a
// value-parameterized suite over AllPolicyNames()), then the measured targets
// of docs/PERFORMANCE.md on small deterministic traces, and trace parsing.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/policy/belady.h"
#include "engine/policy/policies.h"
#include "engine/policy/policy.h"
#include "engine/policy/simulate.h"
#include "engine/policy/traces.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::policy {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<EvictionPolicy> Make(std::string_view name, size_t capacity) {
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy =
      MakePolicy(name, capacity);
  EXPECT_TRUE(policy.ok()) << policy.status();
  return std::move(policy).value();
}

class PolicyContractTest : public ::testing::TestWithParam<std::string_view> {
 protected:
  std::unique_ptr<EvictionPolicy> policy_ = Make(GetParam(), kCapacity);
  static constexpr size_t kCapacity = 16;
};

TEST_P(PolicyContractTest, NameMatches) {
  EXPECT_EQ(policy_->name(), GetParam());
}

TEST_P(PolicyContractTest, CapacityRespectedInSimLoop) {
  std::mt19937_64 rng(7);
  std::set<uint64_t> resident;
  for (int i = 0; i < 20000; ++i) {
    // Mix of a hot set, a loop and one-off keys.
    const uint64_t key = i % 3 == 0   ? rng() % 8
                         : i % 3 == 1 ? 100 + i % 40
                                      : 1000 + rng() % 5000;
    if (resident.contains(key)) {
      policy_->Access(key);
    } else {
      if (resident.size() == kCapacity) {
        const std::optional<uint64_t> victim =
            policy_->Evict([](uint64_t) { return true; });
        ASSERT_TRUE(victim.has_value());
        ASSERT_EQ(resident.erase(*victim), 1u) << *victim << " not resident";
      }
      policy_->Insert(key);
      resident.insert(key);
    }
    ASSERT_EQ(policy_->size(), resident.size());
    ASSERT_LE(policy_->size(), kCapacity);
  }
}

TEST_P(PolicyContractTest, EvictOffersEveryKeyBeforeGivingUp) {
  for (uint64_t k = 0; k < kCapacity; ++k) policy_->Insert(k * 11);
  for (uint64_t k = 0; k < kCapacity; k += 2) policy_->Access(k * 11);
  std::set<uint64_t> offered;
  const std::optional<uint64_t> victim = policy_->Evict([&](uint64_t key) {
    offered.insert(key);
    return false;
  });
  EXPECT_FALSE(victim.has_value());
  EXPECT_EQ(offered.size(), kCapacity);
  for (uint64_t k = 0; k < kCapacity; ++k) EXPECT_TRUE(offered.contains(k * 11));
  // Refused keys stay resident and can still be evicted later.
  EXPECT_EQ(policy_->size(), kCapacity);
  const std::optional<uint64_t> next =
      policy_->Evict([](uint64_t) { return true; });
  ASSERT_TRUE(next.has_value());
  EXPECT_TRUE(offered.contains(*next));
  EXPECT_EQ(policy_->size(), kCapacity - 1);
}

TEST_P(PolicyContractTest, PinnedKeysAreSkippedAndStay) {
  for (uint64_t k = 0; k < kCapacity; ++k) policy_->Insert(k);
  const std::set<uint64_t> pinned = {0, 5, 15};
  std::set<uint64_t> evicted;
  while (true) {
    const std::optional<uint64_t> victim = policy_->Evict(
        [&](uint64_t key) { return !pinned.contains(key); });
    if (!victim) break;
    EXPECT_FALSE(pinned.contains(*victim));
    EXPECT_TRUE(evicted.insert(*victim).second) << "evicted twice";
  }
  EXPECT_EQ(evicted.size(), kCapacity - pinned.size());
  EXPECT_EQ(policy_->size(), pinned.size());
  // Unpinned, they go too.
  for (size_t i = 0; i < pinned.size(); ++i) {
    const std::optional<uint64_t> victim =
        policy_->Evict([](uint64_t) { return true; });
    ASSERT_TRUE(victim.has_value());
    EXPECT_TRUE(pinned.contains(*victim));
  }
  EXPECT_EQ(policy_->size(), 0u);
  EXPECT_FALSE(policy_->Evict([](uint64_t) { return true; }).has_value());
}

TEST_P(PolicyContractTest, EraseRemovesAndUnknownEraseIsNoOp) {
  for (uint64_t k = 1; k <= 8; ++k) policy_->Insert(k);
  policy_->Erase(3);
  policy_->Erase(3);
  policy_->Erase(12345);
  EXPECT_EQ(policy_->size(), 7u);
  std::set<uint64_t> evicted;
  while (auto victim = policy_->Evict([](uint64_t) { return true; })) {
    evicted.insert(*victim);
  }
  EXPECT_EQ(evicted, (std::set<uint64_t>{1, 2, 4, 5, 6, 7, 8}));
  // An erased key can come back.
  policy_->Insert(3);
  EXPECT_EQ(policy_->size(), 1u);
}

TEST_P(PolicyContractTest, AccessOfUnknownKeyIsHarmless) {
  policy_->Access(42);
  EXPECT_EQ(policy_->size(), 0u);
  EXPECT_FALSE(policy_->Evict([](uint64_t) { return true; }).has_value());
  policy_->Insert(1);
  policy_->Access(42);
  policy_->Access(1);
  EXPECT_EQ(policy_->size(), 1u);
  EXPECT_EQ(policy_->Evict([](uint64_t) { return true; }), uint64_t{1});
}

TEST_P(PolicyContractTest, RandomOpsMatchSetOracle) {
  std::mt19937_64 rng(1234);
  std::set<uint64_t> oracle;
  for (int i = 0; i < 30000; ++i) {
    const uint64_t key = rng() % 64;
    switch (rng() % 8) {
      case 0:
      case 1:
      case 2: {  // Request: hit or miss with eviction, like the engine.
        if (oracle.contains(key)) {
          policy_->Access(key);
          break;
        }
        if (oracle.size() == kCapacity) {
          const std::optional<uint64_t> victim =
              policy_->Evict([](uint64_t) { return true; });
          ASSERT_TRUE(victim.has_value());
          ASSERT_EQ(oracle.erase(*victim), 1u);
        }
        policy_->Insert(key);
        oracle.insert(key);
        break;
      }
      case 3:
      case 4:  // Access, possibly of a key that is not resident.
        policy_->Access(key);
        break;
      case 5:
        policy_->Erase(key);
        oracle.erase(key);
        break;
      case 6: {  // Evict with some keys pinned.
        const uint64_t pin_mod = 2 + rng() % 3;
        const std::optional<uint64_t> victim = policy_->Evict(
            [&](uint64_t k) { return k % pin_mod != 0; });
        if (victim) {
          ASSERT_NE(*victim % pin_mod, 0u);
          ASSERT_EQ(oracle.erase(*victim), 1u);
        } else {
          for (uint64_t k : oracle) ASSERT_EQ(k % pin_mod, 0u);
        }
        break;
      }
      default:
        policy_->OnStepBoundary();
        break;
    }
    ASSERT_EQ(policy_->size(), oracle.size()) << "after op " << i;
  }
}

// Long phases without step boundaries, random keys out of `universe` and
// then a loop 1.5x the cache, with prefetches (InsertWithoutAccess) among
// the requests: the ensemble puts followers to sleep in one phase and wakes
// them in the next, and a woken follower must hold exactly the resident
// keys. Every victim and the size are checked against an oracle.
void PhasesAgainstOracle(EvictionPolicy& policy, size_t capacity,
                         uint64_t universe, int phase_ops) {
  std::mt19937_64 rng(99);
  std::set<uint64_t> oracle;
  auto make_room = [&] {
    if (oracle.size() < capacity) return;
    const std::optional<uint64_t> victim =
        policy.Evict([](uint64_t) { return true; });
    ASSERT_TRUE(victim.has_value());
    ASSERT_EQ(oracle.erase(*victim), 1u);
  };
  // The loop's requests come in order (other operations take a random
  // key of it), so the stream is periodic.
  const uint64_t loop_length = 3 * capacity / 2;
  const uint64_t loop_base = universe;
  uint64_t loop_position = 0;
  for (int i = 0; i < 4 * phase_ops; ++i) {
    const bool loop = (i / phase_ops) % 2 == 1;
    const uint64_t op = rng() % 16;
    const uint64_t key =
        !loop    ? rng() % universe
        : op < 3 ? loop_base + rng() % loop_length
                 : loop_base + loop_position++ % loop_length;
    switch (op) {
      case 0: {  // Prefetch: resident ahead of its use.
        if (oracle.contains(key)) break;
        make_room();
        policy.InsertWithoutAccess(key);
        oracle.insert(key);
        break;
      }
      case 1:
        policy.Erase(key);
        oracle.erase(key);
        break;
      case 2: {  // Evict with some keys pinned.
        const std::optional<uint64_t> victim =
            policy.Evict([&](uint64_t k) { return k % 3 != 0; });
        if (victim) {
          ASSERT_NE(*victim % 3, 0u);
          ASSERT_EQ(oracle.erase(*victim), 1u);
        } else {
          for (uint64_t k : oracle) ASSERT_EQ(k % 3, 0u);
        }
        break;
      }
      default:  // Request: hit or miss with eviction, like the engine.
        if (oracle.contains(key)) {
          policy.Access(key);
          break;
        }
        make_room();
        policy.Insert(key);
        oracle.insert(key);
        break;
    }
    ASSERT_EQ(policy.size(), oracle.size()) << "after op " << i;
  }
  // Every key still resident is offered, and only those.
  while (!oracle.empty()) {
    const std::optional<uint64_t> victim =
        policy.Evict([](uint64_t) { return true; });
    ASSERT_TRUE(victim.has_value());
    ASSERT_EQ(oracle.erase(*victim), 1u);
  }
  EXPECT_EQ(policy.size(), 0u);
}

TEST_P(PolicyContractTest, PhasesWithPrefetchesMatchSetOracle) {
  PhasesAgainstOracle(*policy_, kCapacity, /*universe=*/64,
                      /*phase_ops=*/20000);
}

INSTANTIATE_TEST_SUITE_P(
    AllPolicies, PolicyContractTest, ::testing::ValuesIn(AllPolicyNames()),
    [](const ::testing::TestParamInfo<std::string_view>& info) {
      return std::string(info.param);
    });

// The same at 1,024 blocks: a woken follower is given the resident keys a
// few per request, while the stream erases and evicts some of them and
// brings others back, and must lead with exactly the resident ones.
TEST(DefaultPolicyTest, AFollowerWokenMidStreamMatchesTheOracle) {
  std::unique_ptr<EvictionPolicy> policy = Make("default", 1024);
  PhasesAgainstOracle(*policy, 1024, /*universe=*/4096, /*phase_ops=*/40000);
}

TEST(MakePolicyTest, RejectsUnknownNameAndZeroCapacity) {
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> p = MakePolicy("mru", 4);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("lru"));
  p = MakePolicy("lru", 0);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MakePolicyTest, EngineNamesAreASubsetOfAll) {
  const std::vector<std::string_view> all = AllPolicyNames();
  for (std::string_view name : EnginePolicyNames()) {
    EXPECT_NE(std::find(all.begin(), all.end(), name), all.end()) << name;
  }
  for (std::string_view name :
       {"default", "lru", "lfu", "hinted", "s3fifo", "wtinylfu", "arc", "lirs",
        "sieve"}) {
    EXPECT_NE(std::find(all.begin(), all.end(), name), all.end()) << name;
  }
}

double MissRatio(std::string_view name, absl::Span<const uint64_t> trace,
                 size_t capacity) {
  absl::StatusOr<SimResult> r = Simulate(name, trace, capacity);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->miss_ratio() : 1.0;
}

// Target 1: default <= 0.9x LRU on Zipf 0.99 at 1% and 10% of the keys.
TEST(PolicyTargetTest, DefaultBeatsLruOnZipf) {
  ZipfParams zipf;
  zipf.universe = 10'000;
  zipf.length = 200'000;
  const std::vector<uint64_t> trace = ZipfTrace(zipf);
  for (size_t capacity : {100, 1000}) {
    const double lru = MissRatio("lru", trace, capacity);
    const double def = MissRatio("default", trace, capacity);
    EXPECT_LE(def, 0.9 * lru) << "capacity " << capacity;
  }
}

// Target 2 on the small suite: default within 3% of the best baseline.
TEST(PolicyTargetTest, DefaultNearBestBaselineOnSmallSuite) {
  for (const SuiteWorkload& w : StandardSuite(0.1)) {
    for (const SuiteWorkload::Cache& cache : w.caches) {
      double best = 1;
      for (std::string_view b :
           {"lru", "lfu", "s3fifo", "wtinylfu", "arc", "lirs", "sieve"}) {
        best = std::min(best, MissRatio(b, w.trace, cache.capacity));
      }
      EXPECT_LE(MissRatio("default", w.trace, cache.capacity), 1.03 * best)
          << w.name << " @ " << cache.label;
    }
  }
}

// Target 3: hinted within 2% of Belady with half the layer blocks cached.
TEST(PolicyTargetTest, HintedNearBeladyOnTrainingSteps) {
  const TrainingParams params;
  const std::vector<uint64_t> trace = TrainingTrace(params);
  const size_t capacity = params.layer_blocks() / 2;
  const double belady = MissRatio("belady", trace, capacity);
  const double hinted = MissRatio("hinted", trace, capacity);
  EXPECT_LE(hinted, 1.02 * belady);
  // And it learned something: far better than LRU on the loop.
  EXPECT_LT(hinted, 0.6 * MissRatio("lru", trace, capacity));
}

TEST(PolicyTargetTest, HintedUsesStepBoundaries) {
  // With boundaries the engine tells the period: same trace, fed by hand.
  const TrainingParams params;
  const std::vector<uint64_t> trace = TrainingTrace(params);
  const size_t step = trace.size() / params.steps;
  const size_t capacity = params.layer_blocks() / 2;
  std::unique_ptr<EvictionPolicy> hinted = Make("hinted", capacity);
  std::set<uint64_t> resident;
  uint64_t misses = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    if (i % step == 0) hinted->OnStepBoundary();
    if (resident.contains(trace[i])) {
      hinted->Access(trace[i]);
      continue;
    }
    ++misses;
    if (resident.size() == capacity) {
      resident.erase(*hinted->Evict([](uint64_t) { return true; }));
    }
    hinted->Insert(trace[i]);
    resident.insert(trace[i]);
  }
  EXPECT_LE(static_cast<double>(misses),
            1.03 * static_cast<double>(BeladyMisses(trace, capacity)));
}

// The hinted targets with 1, 2 and 4 embedding lookups per layer, on the
// suite's training trace scaled to half in every dimension (16 layers of
// 8 + 8 blocks, 512 embedding rows, 128 blocks of embedding room beside all
// layer blocks) with the same 50 steps: about 28k requests a trace.
TrainingParams ScaledTraining(size_t lookups_per_layer) {
  TrainingParams params;
  params.layers = 16;
  params.embedding_rows = 512;
  params.lookups_per_layer = lookups_per_layer;
  return params;
}
constexpr size_t kScaledRoom = 128;

struct ClassMisses {
  uint64_t layer = 0;
  uint64_t rows = 0;
  uint64_t total() const { return layer + rows; }
};

// Replays `trace` like Replay does, counting layer-block and embedding-row
// misses apart; with `step_length` > 0 the policy also hears a step
// boundary every `step_length` requests, as the engine's EndStep does.
ClassMisses ReplayByClass(std::string_view name,
                          const std::vector<uint64_t>& trace, size_t capacity,
                          size_t step_length = 0) {
  std::unique_ptr<EvictionPolicy> policy = Make(name, capacity);
  std::set<uint64_t> resident;
  ClassMisses misses;
  for (size_t i = 0; i < trace.size(); ++i) {
    if (step_length != 0 && i % step_length == 0) policy->OnStepBoundary();
    const uint64_t key = trace[i];
    if (resident.contains(key)) {
      policy->Access(key);
      continue;
    }
    ++(TrainingEmbeddingRank(key) ? misses.rows : misses.layer);
    if (resident.size() == capacity) {
      const std::optional<uint64_t> victim =
          policy->Evict([](uint64_t) { return true; });
      EXPECT_TRUE(victim.has_value());
      if (victim) resident.erase(*victim);
    }
    policy->Insert(key);
    resident.insert(key);
  }
  return misses;
}

// A reference for independent requests of unknown probabilities: LFU with
// complete counts (every request ever made counts, resident or not); the
// victim has the fewest requests, the least recent first among equals.
uint64_t PerfectLfuMisses(const std::vector<uint64_t>& trace,
                          size_t capacity) {
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> seen;  // count, last
  std::set<std::tuple<uint64_t, uint64_t, uint64_t>> resident;
  uint64_t misses = 0;
  for (uint64_t t = 0; t < trace.size(); ++t) {
    auto& [count, last] = seen[trace[t]];
    const bool hit = resident.erase({count, last, trace[t]}) == 1;
    if (!hit) {
      ++misses;
      if (resident.size() == capacity) resident.erase(resident.begin());
    }
    ++count;
    last = t;
    resident.insert({count, last, trace[t]});
  }
  return misses;
}

TEST(PolicyTargetTest, HintedNearBeladyWithHalfTheLayerBlocks) {
  for (size_t lookups : {1, 2, 4}) {
    const TrainingParams params = ScaledTraining(lookups);
    const std::vector<uint64_t> trace = TrainingTrace(params);
    const size_t capacity = params.layer_blocks() / 2;
    const double target = lookups == 1 ? 1.02 : 1.05;
    const double belady =
        static_cast<double>(BeladyMisses(trace, capacity));
    EXPECT_LE(ReplayByClass("hinted", trace, capacity).total(),
              target * belady)
        << lookups << " lookups per layer";
    // The engine's path: the period from step boundaries.
    EXPECT_LE(ReplayByClass("hinted", trace, capacity,
                            trace.size() / params.steps)
                  .total(),
              target * belady)
        << lookups << " lookups per layer, with step boundaries";
  }
}

// With room for every layer block, a layer block is missed only once: hinted
// never evicts a block of the step plan in favour of an embedding row, and
// manages the rows in the leftover room as well as LFU with complete counts
// does on the lookups alone. (Within 1.05x of Belady is out of reach for any
// online policy here with 2 or 4 lookups: see TrainingA0Misses.)
TEST(PolicyTargetTest, HintedKeepsEveryLayerBlockWhenTheyFit) {
  for (size_t lookups : {1, 2, 4}) {
    const TrainingParams params = ScaledTraining(lookups);
    const std::vector<uint64_t> trace = TrainingTrace(params);
    const size_t capacity = params.layer_blocks() + kScaledRoom;
    std::vector<uint64_t> lookups_only;
    for (uint64_t key : trace) {
      if (TrainingEmbeddingRank(key)) lookups_only.push_back(key);
    }
    const double lfu =
        static_cast<double>(PerfectLfuMisses(lookups_only, kScaledRoom));
    for (size_t step_length : {size_t{0}, trace.size() / params.steps}) {
      const ClassMisses hinted =
          ReplayByClass("hinted", trace, capacity, step_length);
      EXPECT_EQ(hinted.layer, params.layer_blocks())
          << lookups << " lookups per layer, step boundaries "
          << (step_length != 0);
      EXPECT_LE(hinted.rows, 1.02 * lfu)
          << lookups << " lookups per layer, step boundaries "
          << (step_length != 0);
    }
  }
}

// Keys are opaque: renaming them must not change hinted's choices. (The
// generators number embedding rows by popularity, so a tie broken by key
// value would be a hint no real workload gives.)
TEST(PolicyTargetTest, HintedIgnoresKeyValues) {
  const TrainingParams params = ScaledTraining(2);
  const std::vector<uint64_t> trace = TrainingTrace(params);
  std::vector<uint64_t> renamed = trace;
  for (uint64_t& key : renamed) key = Mix64(key);
  for (size_t capacity :
       {params.layer_blocks() / 2, params.layer_blocks() + kScaledRoom}) {
    EXPECT_EQ(ReplayByClass("hinted", trace, capacity).total(),
              ReplayByClass("hinted", renamed, capacity).total())
        << "capacity " << capacity;
  }
}

// Replays `trace` as the engine runs a recorded step: each key is loaded
// `ahead` requests before its use (InsertWithoutAccess, the step plan's
// prefetch), and the use is a hit (Access). Keys loaded and not used yet are
// refused as victims, as the engine passes over prefetched blocks. Returns
// the loads. Steps begin at the indices in `boundaries`. Hits at the
// indices in `lost` are not told to the policy: the engine's access logs
// may lose a few (a pin's hit on a copy the loader has published and not
// yet filed with the policy, drained before the filing).
uint64_t ReplayPrefetchedSteps(std::string_view name,
                               const std::vector<uint64_t>& trace,
                               size_t capacity,
                               const std::set<size_t>& boundaries, size_t ahead,
                               const std::set<size_t>& lost = {}) {
  std::unique_ptr<EvictionPolicy> policy = Make(name, capacity);
  std::set<uint64_t> resident, waiting;
  uint64_t loads = 0;
  auto load = [&](uint64_t key, bool for_use) {
    ++loads;
    if (resident.size() == capacity) {
      const std::optional<uint64_t> victim = policy->Evict(
          [&](uint64_t k) { return !waiting.contains(k); });
      EXPECT_TRUE(victim.has_value());
      if (victim) resident.erase(*victim);
    }
    resident.insert(key);
    if (for_use) {
      policy->Insert(key);
    } else {
      policy->InsertWithoutAccess(key);
      waiting.insert(key);
    }
  };
  for (size_t i = 0; i < trace.size(); ++i) {
    if (boundaries.contains(i)) policy->OnStepBoundary();
    if (i + ahead < trace.size() && !resident.contains(trace[i + ahead])) {
      load(trace[i + ahead], /*for_use=*/false);
    }
    if (resident.contains(trace[i])) {
      if (!lost.contains(i)) policy->Access(trace[i]);
      waiting.erase(trace[i]);
    } else {
      load(trace[i], /*for_use=*/true);
    }
  }
  return loads;
}

// The same with a step every `step_length` requests.
uint64_t ReplayPrefetched(std::string_view name,
                          const std::vector<uint64_t>& trace, size_t capacity,
                          size_t step_length, size_t ahead,
                          const std::set<size_t>& lost = {}) {
  std::set<size_t> boundaries;
  for (size_t i = 0; i < trace.size(); i += step_length) boundaries.insert(i);
  return ReplayPrefetchedSteps(name, trace, capacity, boundaries, ahead, lost);
}

// A training step's pins: block b of p, m and v, for every b, `steps` times.
std::vector<uint64_t> StepLoop(size_t blocks, size_t steps) {
  std::vector<uint64_t> trace;
  for (size_t s = 0; s < steps; ++s) {
    for (uint64_t b = 0; b < blocks; ++b) {
      for (uint64_t tensor = 1; tensor <= 3; ++tensor) {
        trace.push_back(tensor << 32 | b);
      }
    }
  }
  return trace;
}

// A training step over p, m and v, 4x the cache, with the step plan loading
// each block a few pins ahead: hinted, and default once it hears step
// boundaries, keep a fixed part of the loop resident, as Belady does with
// the frames the prefetch window leaves (measured: 2060 loads, Belady 2064).
// With loads taken for accesses (a prefetched block counted twice, its
// predicted use moved by the distance) hinted loaded 2261 (1.10x); the
// ensemble following W-TinyLFU, which here can only rank blocks it must
// admit, 2493 (1.21x).
TEST(PolicyTargetTest, PrefetchedStepLoopKeepsAFixedPart) {
  constexpr size_t kCapacity = 32, kBlocks = 42, kAhead = 8, kSteps = 20;
  const std::vector<uint64_t> trace = StepLoop(kBlocks, kSteps);
  const double belady =
      static_cast<double>(BeladyMisses(trace, kCapacity - kAhead));
  for (std::string_view name : {"hinted", "default"}) {
    const uint64_t loads =
        ReplayPrefetched(name, trace, kCapacity, 3 * kBlocks, kAhead);
    EXPECT_LE(static_cast<double>(loads), 1.02 * belady) << name;
  }
}

// The same loop with a hit the policy never hears now and then (the
// engine's access logs may lose one): the step it fell in is one request
// short. hinted took that length for the period at once; under a period
// one short, each key's access of a period ago left the window just
// before its next use, so every access missed its prediction and every
// block was filed as random, evicted by recency for the next two steps
// (the engine's train workload read 241-350 MB in such a step, ~214
// otherwise). With the same length twice in a row the period still moves,
// and must not cost the loop its place either.
TEST(PolicyTargetTest, APeriodSurvivesALostHit) {
  constexpr size_t kCapacity = 32, kBlocks = 42, kAhead = 8, kSteps = 20;
  const std::vector<uint64_t> trace = StepLoop(kBlocks, kSteps);
  const size_t step = 3 * kBlocks;
  const double belady =
      static_cast<double>(BeladyMisses(trace, kCapacity - kAhead));
  // A lost hit in each of four steps, at different places in them; two of
  // the steps in a row (two steps of the same shorter length).
  const std::set<size_t> lost = {5 * step + 17, 9 * step + 64, 10 * step + 30,
                                 14 * step + 120};
  for (std::string_view name : {"hinted", "default"}) {
    const uint64_t heard = ReplayPrefetched(name, trace, kCapacity, step, kAhead);
    const uint64_t loads =
        ReplayPrefetched(name, trace, kCapacity, step, kAhead, lost);
    // The key whose hit was lost may be loaded again once; the rest of
    // the loop keeps its place.
    EXPECT_LE(loads, heard + 2 * lost.size()) << name;
    EXPECT_LE(static_cast<double>(loads), 1.02 * belady) << name;
  }
}

// A loop that really changed by a few requests (one block of each tensor
// fewer, 3 in 126) is taken for the new period from its second step on.
TEST(PolicyTargetTest, ASmallChangeOfTheLoopIsTakenUp) {
  constexpr size_t kCapacity = 32, kAhead = 8, kSteps = 10;
  std::vector<uint64_t> trace = StepLoop(42, kSteps);
  const std::vector<uint64_t> shorter = StepLoop(41, kSteps);
  trace.insert(trace.end(), shorter.begin(), shorter.end());
  const double belady =
      static_cast<double>(BeladyMisses(trace, kCapacity - kAhead));
  std::set<size_t> boundaries;
  for (size_t s = 0; s < kSteps; ++s) {
    boundaries.insert(s * 3 * 42);
    boundaries.insert(kSteps * 3 * 42 + s * 3 * 41);
  }
  for (std::string_view name : {"hinted", "default"}) {
    const uint64_t loads =
        ReplayPrefetchedSteps(name, trace, kCapacity, boundaries, kAhead);
    EXPECT_LE(static_cast<double>(loads), 1.02 * belady) << name;
  }
}

// Lookups whose misses are loaded a few requests ahead of their use (the
// engine's gather prefetch): a block loaded and then used once is one
// access, as a miss is. When a prefetch counted as an access too, every
// missed block looked reused at once: ARC put it in T2, LIRS made it LIR,
// W-TinyLFU and LFU counted it twice; the ensemble's ARC follower, leading
// on the embed workload, held 0.829 of the lookups instead of 0.850.
// Measured (Zipf 0.99, 10,000 keys, 1,000 cached, 4 ahead; loads against
// demand misses): lfu 1.032 (the keys waiting for their use cannot be
// evicted, a cache 4 keys smaller), wtinylfu, arc, lirs and default 1.000;
// counted twice: 1.047, 1.014, 1.186, 1.172 (default, then led by hinted,
// which never counted loads: 1.014).
TEST(PolicyTargetTest, APrefetchedBlockThenUsedCountsOnce) {
  ZipfParams zipf;
  zipf.universe = 10'000;
  zipf.length = 200'000;
  const std::vector<uint64_t> trace = ZipfTrace(zipf);
  constexpr size_t kCapacity = 1000, kAhead = 4;
  for (std::string_view name : {"lfu", "wtinylfu", "arc", "lirs", "default"}) {
    absl::StatusOr<SimResult> demand = Simulate(name, trace, kCapacity);
    ASSERT_TRUE(demand.ok()) << demand.status();
    const uint64_t loads =
        ReplayPrefetchedSteps(name, trace, kCapacity, {}, kAhead);
    EXPECT_LE(static_cast<double>(loads),
              1.04 * static_cast<double>(demand->misses))
        << name;
  }
}

// Demand paging of `trace` under policy `name`: the misses from request
// `from` on.
uint64_t MissesFrom(std::string_view name, const std::vector<uint64_t>& trace,
                    size_t capacity, size_t from) {
  std::unique_ptr<EvictionPolicy> policy = Make(name, capacity);
  std::set<uint64_t> resident;
  uint64_t misses = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    if (resident.contains(trace[i])) {
      policy->Access(trace[i]);
      continue;
    }
    misses += i >= from;
    if (resident.size() == capacity) {
      const std::optional<uint64_t> victim =
          policy->Evict([](uint64_t) { return true; });
      EXPECT_TRUE(victim.has_value());
      if (victim) resident.erase(*victim);
    }
    policy->Insert(trace[i]);
    resident.insert(trace[i]);
  }
  return misses;
}

// Lookups long enough for the ensemble to put its followers that cannot
// lead to sleep (hinted, without a loop), then a loop 1.5x the cache: the
// candidate that keeps part of the loop must wake, follow the stream and
// take the lead, or every request of the loop misses, as under LRU.
// Measured: hinted 22,184 misses of 60,000, lirs 22,380, default 24,433
// (1.10x; the epochs it takes to see the loop and to follow it; when
// hinted followed every stream, it led through the lookups: 22,184).
TEST(PolicyTargetTest, DefaultTakesUpALoopAfterLookups) {
  constexpr size_t kCapacity = 1000;
  ZipfParams zipf;
  zipf.universe = 10'000;
  zipf.length = 100'000;
  std::vector<uint64_t> trace = ZipfTrace(zipf);
  const size_t loop_start = trace.size();
  for (int round = 0; round < 40; ++round) {
    for (uint64_t key = 0; key < 3 * kCapacity / 2; ++key) {
      trace.push_back(1'000'000 + key);
    }
  }
  const uint64_t requests = trace.size() - loop_start;
  const uint64_t hinted = MissesFrom("hinted", trace, kCapacity, loop_start);
  const uint64_t lirs = MissesFrom("lirs", trace, kCapacity, loop_start);
  const uint64_t lru = MissesFrom("lru", trace, kCapacity, loop_start);
  const uint64_t def = MissesFrom("default", trace, kCapacity, loop_start);
  EXPECT_EQ(lru, requests);
  EXPECT_LE(static_cast<double>(def),
            1.15 * static_cast<double>(std::min(hinted, lirs)));
}

TEST(PolicyTargetTest, A0IsAnOnlineReferenceAboveBelady) {
  const TrainingParams params = ScaledTraining(2);
  const std::vector<uint64_t> trace = TrainingTrace(params);
  const size_t layer = params.layer_blocks();
  EXPECT_EQ(TrainingA0Misses(trace, layer, layer).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<uint64_t> a0 =
      TrainingA0Misses(trace, layer + kScaledRoom, layer);
  ASSERT_TRUE(a0.ok()) << a0.status();
  EXPECT_GE(*a0, BeladyMisses(trace, layer + kScaledRoom));
  // It keeps every layer block, so it misses each once, plus rows.
  EXPECT_GT(*a0, layer);
  EXPECT_LE(*a0, ReplayByClass("lru", trace, layer + kScaledRoom).total());
}

TEST(PolicyTargetTest, BeladyIsNeverBeaten) {
  ZipfScanParams scan;
  scan.zipf.universe = 2000;
  scan.zipf.length = 40'000;
  TrainingParams training;
  training.steps = 10;
  const std::vector<std::vector<uint64_t>> traces = {
      ZipfScanTrace(scan), TrainingTrace(training)};
  for (const std::vector<uint64_t>& trace : traces) {
    for (size_t capacity : {20, 200}) {
      const double belady = MissRatio("belady", trace, capacity);
      for (std::string_view name : AllPolicyNames()) {
        EXPECT_LE(belady, MissRatio(name, trace, capacity))
            << name << " at " << capacity;
      }
    }
  }
}

TEST(TraceTest, GeneratorsAreDeterministicAndShaped) {
  ZipfParams zipf;
  zipf.universe = 100;
  zipf.length = 1000;
  EXPECT_EQ(ZipfTrace(zipf), ZipfTrace(zipf));
  for (uint64_t key : ZipfTrace(zipf)) EXPECT_LT(key, 100u);
  TrainingParams training;
  training.steps = 2;
  const std::vector<uint64_t> trace = TrainingTrace(training);
  const size_t per_step =
      training.layers * (3 * training.blocks_per_layer +
                         training.optimizer_blocks_per_layer +
                         training.lookups_per_layer);
  EXPECT_EQ(trace.size(), 2 * per_step);
}

TEST(TraceTest, ParseTraceNamesTheBadLine) {
  absl::StatusOr<std::vector<uint64_t>> t = ParseTrace("1\n 2 \n\n3\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, (std::vector<uint64_t>{1, 2, 3}));
  for (const char* bad : {"1\n2\nx7\n", "1\n2\n-4\n", "1\n2\n1.5\n",
                          "1\n2\n99999999999999999999999\n"}) {
    t = ParseTrace(bad);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(t.status().message(), HasSubstr("line 3")) << bad;
  }
}

TEST(TraceTest, FilesRoundTripAndMissingFileIsAnError) {
  const std::string path =
      ::testing::TempDir() + "/policy_test_trace.txt";
  const std::vector<uint64_t> trace = {5, 1, 18446744073709551615ULL, 5};
  ASSERT_TRUE(WriteTraceFile(path, trace).ok());
  absl::StatusOr<std::vector<uint64_t>> read = ReadTraceFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, trace);
  read = ReadTraceFile(path + ".missing");
  EXPECT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr(".missing"));
}

TEST(SimulateTest, RejectsUnknownPolicyAndZeroCapacity) {
  const std::vector<uint64_t> trace = {1, 2, 3};
  EXPECT_EQ(Simulate("nope", trace, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Simulate("belady", trace, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<SimResult> r = Simulate("lru", trace, 2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->requests, 3u);
  EXPECT_EQ(r->misses, 3u);
}

}  // namespace
}  // namespace strata::policy
