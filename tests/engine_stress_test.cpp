// Many threads pinning at once, checked by invariants that need no lock in
// the test:
//
//   - every 8-byte word of block b holds the same value Encode(b, seq);
//   - a write pin sees seq and leaves seq + 1 (write pins are exclusive, so
//     the writes to one block form one chain);
//   - the seq a thread sees for a block never goes down;
//   - at the end, each block's seq equals the number of write pins that were
//     granted for it: no write was lost or applied twice, across evictions,
//     reloads, prefetches and flushes.
//
// Every test runs over three chains: host -> nvme; host -> remote -> nvme
// with a test tier in the remote slot (asynchronous, no host-addressable
// frames: copies to and from NVMe stage through host memory); and
// host -> shm -> remote -> nvme, where the workers pin in host and shm at
// random (write pins exclusive across both tiers).
//
// Sized for 2 cores under TSan (a few hundred ops per thread there).
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "api/strata/strata.h"
#include "engine/testing.h"
#include "gtest/gtest.h"
#include "tests/test_tier.h"
#include "tests/test_util.h"

namespace strata {
namespace {

using ::absl::StatusCode;
using test::kKiB;
using test::kMiB;
using test::Decode;
using test::Decoded;
using test::FillEncoded;
using test::TempDir;

#if defined(__SANITIZE_THREAD__)
constexpr int kOpsPerThread = 2000;
#elif defined(__SANITIZE_ADDRESS__)
constexpr int kOpsPerThread = 3000;
#else
constexpr int kOpsPerThread = 8000;
#endif
constexpr int kThreads = 4;

constexpr uint64_t kBlock = 64 * kKiB;
constexpr uint64_t kHost = 2 * kMiB;  // 32 frames
constexpr uint64_t kFrames = kHost / kBlock;

// A small fast random generator per thread (no shared state).
struct Rng {
  uint64_t s;
  uint64_t Next() { return s = test::Mix(s); }
  uint64_t Below(uint64_t n) { return Next() % n; }
};

struct Shared {
  explicit Shared(uint64_t blocks) : writes(new std::atomic<uint64_t>[blocks]) {
    for (uint64_t b = 0; b < blocks; ++b) writes[b].store(0);
  }

  std::unique_ptr<std::atomic<uint64_t>[]> writes;  // granted write pins
  std::atomic<uint64_t> bad_bytes{0};     // non-uniform or foreign blocks
  std::atomic<uint64_t> bad_chain{0};     // seq went backwards
  std::atomic<uint64_t> pin_errors{0};
  std::atomic<uint64_t> other_errors{0};
  absl::Mutex mu;
  std::string first_error ABSL_GUARDED_BY(mu);

  void Error(std::atomic<uint64_t>& counter, const std::string& what) {
    counter.fetch_add(1);
    absl::MutexLock lock(&mu);
    if (first_error.empty()) first_error = what;
  }
};

// The chain a test runs over, and the tiers its workers pin in.
struct ChainCase {
  const char* name;
  std::vector<Tier> tiers;
  std::vector<Tier> pin_in;
};

// One worker: random pins over `t` in the tiers of `pin_in`, writes with
// probability write_pct%.
void Worker(Engine& e, const Tensor& t, Shared& sh, uint64_t seed, int ops,
            int write_pct, const std::vector<Tier>& pin_in) {
  Rng rng{seed};
  std::vector<uint64_t> last_seen(t.num_blocks(), 0);
  for (int i = 0; i < ops; ++i) {
    // Mostly a hot quarter, sometimes anywhere: hits and misses both.
    const uint64_t n = t.num_blocks();
    const uint64_t b = rng.Below(4) != 0 ? rng.Below(std::max<uint64_t>(n / 4, 1))
                                         : rng.Below(n);
    const bool write = rng.Below(100) < static_cast<uint64_t>(write_pct);
    const Tier tier = pin_in[rng.Below(pin_in.size())];
    auto pin = e.Pin(t, b, tier, write ? Access::kWrite : Access::kRead);
    if (!pin.ok()) {
      sh.Error(sh.pin_errors, "pin of block " + std::to_string(b) + ": " +
                                  pin.status().ToString());
      continue;
    }
    const Decoded d = Decode(pin->bytes(), b);
    if (!d.uniform || !d.ours) {
      sh.Error(sh.bad_bytes, "block " + std::to_string(b) +
                                 (d.uniform ? " holds another block's bytes"
                                            : " is torn (mixed words)"));
      continue;
    }
    if (d.seq < last_seen[b]) {
      sh.Error(sh.bad_chain, "block " + std::to_string(b) + " went back from " +
                                 std::to_string(last_seen[b]) + " to " +
                                 std::to_string(d.seq));
    }
    last_seen[b] = d.seq;
    if (write) {
      FillEncoded(pin->bytes(), b, d.seq + 1);
      last_seen[b] = d.seq + 1;
      sh.writes[b].fetch_add(1, std::memory_order_relaxed);
    }
  }
}

class EngineStressTest : public ::testing::TestWithParam<ChainCase> {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  EngineOptions Options() {
    EngineOptions o = test::SmallOptions(dir_.Sub("nvme"), kHost, kBlock);
    o.pin_wait_timeout = absl::Seconds(60);
    o.tiers = GetParam().tiers;
    return o;
  }

  // Opens the engine of the chain; the shm and remote slots get test tiers
  // of half the host tier (so that they too evict).
  absl::StatusOr<std::unique_ptr<Engine>> Open(EngineOptions o) {
    internal::TierOverrides overrides;
    for (Tier kind : o.tiers) {
      if (kind != Tier::kShm && kind != Tier::kRemote) continue;
      test::TestTierConfig config{.capacity_bytes = kHost / 2,
                                  .host_data = kind == Tier::kShm,
                                  .asynchronous = kind == Tier::kRemote,
                                  .delay = absl::Microseconds(20)};
      overrides.tiers[kind] =
          test::MakeTestTier(config, std::make_shared<test::TestTierControl>());
    }
    return testing::OpenWithTiers(std::move(o), std::move(overrides));
  }
  const std::vector<Tier>& PinIn() const { return GetParam().pin_in; }

  // Every block's final seq equals its granted write pins.
  void CheckFinal(Engine& e, const Tensor& t, Shared& sh) {
    for (uint64_t b = 0; b < t.num_blocks(); ++b) {
      ASSERT_OK_AND_ASSIGN(Pin p, e.Pin(t, b, Tier::kHost, Access::kRead));
      const Decoded d = Decode(p.bytes(), b);
      ASSERT_TRUE(d.uniform && d.ours) << "block " << b;
      EXPECT_EQ(d.seq, sh.writes[b].load()) << "block " << b
                                            << ": a write was lost or doubled";
    }
  }

  static TensorSpec Blocks(uint64_t blocks) {
    return {.dtype = DType::kU8, .shape = {static_cast<int64_t>(blocks * kBlock)}};
  }

  // Starts `count` random pinners, seeded seed, seed + 1, ...
  void StartWorkers(std::vector<std::thread>& threads, Engine& e,
                    const Tensor& t, Shared& sh, int count, uint64_t seed,
                    int write_percent) {
    for (int i = 0; i < count; ++i) {
      threads.emplace_back(Worker, std::ref(e), std::cref(t), std::ref(sh),
                           seed + i, kOpsPerThread, write_percent,
                           std::cref(PinIn()));
    }
  }

  void ExpectClean(Shared& sh) {
    absl::MutexLock lock(&sh.mu);
    EXPECT_EQ(sh.bad_bytes.load(), 0u) << sh.first_error;
    EXPECT_EQ(sh.bad_chain.load(), 0u) << sh.first_error;
    EXPECT_EQ(sh.pin_errors.load(), 0u) << sh.first_error;
    EXPECT_EQ(sh.other_errors.load(), 0u) << sh.first_error;
  }

  TempDir dir_;
};

TEST_P(EngineStressTest, RandomPinsOverFourTimesTheHostTier) {
  ASSERT_OK_AND_ASSIGN(auto e, Open(Options()));
  const uint64_t n = 4 * kFrames;
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", Blocks(n)));
  Shared sh(n);
  std::vector<std::thread> threads;
  StartWorkers(threads, *e, t, sh, kThreads, 1000, 30);
  for (auto& th : threads) th.join();
  ExpectClean(sh);
  const EngineStats s = e->GetStats();
  EXPECT_GT(s.tier(Tier::kHost).evictions, 0u);
  EXPECT_GT(s.tier(Tier::kHost).write_backs, 0u);
  // Readahead started by the last misses may still hold its sources pinned.
  ASSERT_TRUE(testing::WaitForBackgroundWork(*e, absl::Seconds(60)));
  const EngineStats quiet = e->GetStats();
  uint64_t pins = 0;
  for (Tier tier : PinIn()) {
    pins += s.tier(tier).hits + s.tier(tier).misses;
    EXPECT_EQ(quiet.tier(tier).pinned_bytes, 0u) << TierName(tier);
  }
  EXPECT_EQ(pins, static_cast<uint64_t>(kThreads) * kOpsPerThread);
  CheckFinal(*e, t, sh);
  ASSERT_OK(e->FlushAll());
  ASSERT_OK(e->Close());
}

TEST_P(EngineStressTest, PrefetchFlushAndStatsDuringPins) {
  ASSERT_OK_AND_ASSIGN(auto e, Open(Options()));
  const uint64_t n = 4 * kFrames;
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", Blocks(n)));
  Shared sh(n);
  std::vector<std::thread> threads;
  StartWorkers(threads, *e, t, sh, kThreads - 1, 2000, 40);
  // A prefetcher over random ranges; a flusher that also reads the stats.
  threads.emplace_back([&] {
    Rng rng{77};
    for (int i = 0; i < kOpsPerThread / 8; ++i) {
      const uint64_t begin = rng.Below(n);
      auto h = e->Prefetch(t, {begin, begin + 1 + rng.Below(8)}, Tier::kHost);
      if (!h.ok()) {
        sh.Error(sh.other_errors, "Prefetch: " + h.status().ToString());
        continue;
      }
      if (i % 2 == 0) {  // wait on half of them, drop the others
        absl::Status s = h->Wait();
        if (!s.ok()) sh.Error(sh.other_errors, "Prefetch wait: " + s.ToString());
      }
    }
  });
  threads.emplace_back([&] {
    for (int i = 0; i < kOpsPerThread / 40; ++i) {
      absl::Status s = i % 2 == 0 ? e->Flush(t) : e->FlushAll();
      // A block pinned for writing at that moment is a legitimate refusal.
      if (!s.ok() && s.code() != StatusCode::kFailedPrecondition) {
        sh.Error(sh.other_errors, "Flush: " + s.ToString());
      }
      const EngineStats st = e->GetStats();
      const TierStats& h = st.tier(Tier::kHost);
      if (h.used_bytes > h.capacity_bytes || h.pinned_bytes > h.used_bytes) {
        sh.Error(sh.other_errors, "stats: used " + std::to_string(h.used_bytes) +
                                      " pinned " + std::to_string(h.pinned_bytes) +
                                      " capacity " + std::to_string(h.capacity_bytes));
      }
    }
  });
  for (auto& th : threads) th.join();
  ExpectClean(sh);
  CheckFinal(*e, t, sh);
  // Everything acknowledged survives a flush and a full eviction cycle.
  ASSERT_OK(e->FlushAll());
  ASSERT_OK_AND_ASSIGN(Tensor other, e->CreateTensor("other", Blocks(2 * kFrames)));
  for (uint64_t b = 0; b < other.num_blocks(); ++b) {
    ASSERT_OK(e->Pin(other, b, Tier::kHost, Access::kWrite));
  }
  CheckFinal(*e, t, sh);
  ASSERT_OK(e->Close());
}

TEST_P(EngineStressTest, HotBlocksWriteHeavy) {
  ASSERT_OK_AND_ASSIGN(auto e, Open(Options()));
  // Four blocks, everyone on them, half writes: exclusivity under contention
  // (a torn block would show as mixed words).
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("hot", Blocks(4)));
  Shared sh(4);
  std::vector<std::thread> threads;
  StartWorkers(threads, *e, t, sh, kThreads, 3000, 50);
  for (auto& th : threads) th.join();
  ExpectClean(sh);
  CheckFinal(*e, t, sh);
  ASSERT_OK(e->Close());
}

TEST_P(EngineStressTest, CreateAndDropWhileOthersPin) {
  ASSERT_OK_AND_ASSIGN(auto e, Open(Options()));
  const uint64_t n = 2 * kFrames;
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", Blocks(n)));
  Shared sh(n);
  std::vector<std::thread> threads;
  StartWorkers(threads, *e, t, sh, kThreads - 1, 4000, 30);
  threads.emplace_back([&] {
    for (int i = 0; i < kOpsPerThread / 20; ++i) {
      const std::string name = "tmp" + std::to_string(i % 3);
      auto tmp = e->CreateTensor(name, Blocks(kFrames / 2));
      if (!tmp.ok()) {
        sh.Error(sh.other_errors, "CreateTensor: " + tmp.status().ToString());
        continue;
      }
      for (uint64_t b = 0; b < tmp->num_blocks(); ++b) {
        auto p = e->Pin(*tmp, b, Tier::kHost, Access::kWrite);
        if (!p.ok()) {
          sh.Error(sh.other_errors, "tmp pin: " + p.status().ToString());
          continue;
        }
        FillEncoded(p->bytes(), b, 1);
      }
      if (i % 4 == 0) (void)e->Prefetch(*tmp, BlockRange::All(), Tier::kHost);
      absl::Status s = e->DropTensor(*tmp);
      if (!s.ok()) sh.Error(sh.other_errors, "DropTensor: " + s.ToString());
    }
  });
  for (auto& th : threads) th.join();
  ExpectClean(sh);
  CheckFinal(*e, t, sh);
  ASSERT_OK(e->Close());
}

TEST_P(EngineStressTest, StepsFromOneThreadWhileOthersPin) {
  EngineOptions o = Options();
  o.policy = "hinted";
  ASSERT_OK_AND_ASSIGN(auto e, Open(std::move(o)));
  const uint64_t n = 4 * kFrames;
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor("t", Blocks(n)));
  Shared sh(n);
  std::vector<std::thread> threads;
  // The step driver: every step pins the same sequence (a sweep), so the
  // replayed plans prefetch ahead of it while the others pin at random.
  threads.emplace_back([&] {
    std::vector<uint64_t> last(n, 0);
    const int steps = std::max(2, kOpsPerThread / static_cast<int>(n));
    for (int s = 0; s < steps; ++s) {
      if (absl::Status st = e->BeginStep(); !st.ok()) {
        sh.Error(sh.other_errors, "BeginStep: " + st.ToString());
        return;
      }
      for (uint64_t b = 0; b < n; ++b) {
        auto p = e->Pin(t, b, Tier::kHost, Access::kRead);
        if (!p.ok()) {
          sh.Error(sh.pin_errors, "step pin: " + p.status().ToString());
          continue;
        }
        const Decoded d = Decode(p->bytes(), b);
        if (!d.uniform || !d.ours) sh.Error(sh.bad_bytes, "step: bad block");
        if (d.seq < last[b]) sh.Error(sh.bad_chain, "step: seq went back");
        last[b] = d.seq;
      }
      if (absl::Status st = e->EndStep(); !st.ok()) {
        sh.Error(sh.other_errors, "EndStep: " + st.ToString());
      }
    }
  });
  StartWorkers(threads, *e, t, sh, kThreads - 1, 5000, 30);
  for (auto& th : threads) th.join();
  ExpectClean(sh);
  CheckFinal(*e, t, sh);
  ASSERT_OK(e->Close());
}

INSTANTIATE_TEST_SUITE_P(
    Chains, EngineStressTest,
    ::testing::Values(
        ChainCase{"HostNvme", {Tier::kHost, Tier::kNvme}, {Tier::kHost}},
        ChainCase{"HostRemoteNvme", {Tier::kHost, Tier::kRemote, Tier::kNvme},
                  {Tier::kHost}},
        ChainCase{"HostShmRemoteNvme",
                  {Tier::kHost, Tier::kShm, Tier::kRemote, Tier::kNvme},
                  {Tier::kHost, Tier::kShm}}),
    [](const ::testing::TestParamInfo<ChainCase>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace strata
