// The tier chain with three and four tiers, built from test tiers
// (tests/test_tier.h) in the shm, remote and gpu slots: demotion to the
// first lower tier that takes a block, fall-through when it is full, loads
// from the nearest tier holding the block, Flush to the lowest tier, pins in
// two pinnable tiers, errors of a middle tier, io_timeout, and a full lowest
// tier failing fast.
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/strata/strata.h"
#include "strata_config.h"
#include "engine/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_tier.h"
#include "tests/test_util.h"

namespace strata {
namespace {

using ::absl::StatusCode;
using test::FillPattern;
using test::FirstNonZero;
using test::FirstPatternMismatch;
using test::kKiB;
using test::kMiB;
using test::Seed;
using test::TempDir;
using test::TestOps;
using test::TestTierConfig;
using test::TestTierControl;

constexpr uint64_t kBlock = 64 * kKiB;

TensorSpec Blocks(uint64_t n) {
  return {.dtype = DType::kU8, .shape = {static_cast<int64_t>(n * kBlock)},
          .block_bytes = kBlock};
}

// An engine over `tiers`, with test tiers of `test_blocks` blocks in every
// slot other than host and nvme; controls[kind] steers each one.
struct Chain {
  std::unique_ptr<Engine> engine;
  std::map<Tier, std::shared_ptr<TestTierControl>> controls;
  TestTierControl& control(Tier kind) { return *controls.at(kind); }
};

absl::StatusOr<Chain> OpenChain(const std::string& nvme_dir,
                                std::vector<Tier> tiers, uint64_t host_blocks,
                                uint64_t test_blocks,
                                bool asynchronous = false,
                                EngineOptions base = {}) {
  EngineOptions o = test::SmallOptions(nvme_dir, host_blocks * kBlock, kBlock);
  o.tiers = std::move(tiers);
  o.policy = "lru";
  o.readahead_blocks = 0;
  o.io_timeout = base.io_timeout;
  o.pin_wait_timeout = base.pin_wait_timeout;
  Chain chain;
  internal::TierOverrides overrides;
  for (Tier kind : o.tiers) {
    if (kind == Tier::kHost || kind == Tier::kNvme) continue;
    auto control = std::make_shared<TestTierControl>();
    TestTierConfig config{.capacity_bytes = test_blocks * kBlock,
                          .host_data = kind != Tier::kRemote,
                          .asynchronous = asynchronous,
                          .delay = absl::Microseconds(asynchronous ? 50 : 0)};
    overrides.tiers[kind] = test::MakeTestTier(config, control);
    chain.controls[kind] = control;
  }
  auto engine = testing::OpenWithTiers(std::move(o), std::move(overrides));
  if (!engine.ok()) return engine.status();
  chain.engine = std::move(engine).value();
  return chain;
}

// host (8 frames) -> shm (a synchronous test tier of `shm_blocks`) -> nvme,
// pins waiting at most 5 s.
absl::StatusOr<Chain> OpenShmChain(const std::string& nvme_dir, uint64_t shm_blocks) {
  EngineOptions base;
  base.pin_wait_timeout = absl::Seconds(5);
  return OpenChain(nvme_dir, {Tier::kHost, Tier::kShm, Tier::kNvme}, 8, shm_blocks,
                   /*asynchronous=*/false, base);
}

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  std::string Nvme() const { return dir_.Sub("nvme"); }

  static void Write(Engine& e, const Tensor& t, uint64_t b, uint64_t v,
                    Tier tier = Tier::kHost) {
    auto pin = e.Pin(t, b, tier, Access::kWrite);
    ASSERT_TRUE(pin.ok()) << "block " << b << ": " << pin.status();
    FillPattern(pin->bytes(), Seed(1, b, v));
  }
  static void Expect(Engine& e, const Tensor& t, uint64_t b, uint64_t v,
                     Tier tier = Tier::kHost) {
    auto pin = e.Pin(t, b, tier, Access::kRead);
    ASSERT_TRUE(pin.ok()) << "block " << b << ": " << pin.status();
    EXPECT_EQ(v == 0 ? FirstNonZero(pin->bytes())
                     : FirstPatternMismatch(pin->bytes(), Seed(1, b, v)),
              -1)
        << "block " << b << " version " << v << " in tier " << TierName(tier);
  }
  // Stats once no write-back is in flight (they finish asynchronously);
  // bounded: each one completes within io_timeout.
  static TierStats Of(Engine& e, Tier t) {
    for (int i = 0; i < 1000000; ++i) {
      const EngineStats s = e.GetStats();
      bool idle = true;
      for (const TierStats& ts : s.tiers) idle = idle && ts.write_backs_in_flight == 0;
      if (idle) return s.tier(t);
      std::this_thread::yield();
    }
    return e.GetStats().tier(t);
  }

  TempDir dir_;
};

TEST_F(ChainTest, OpenRefusesBadChains) {
  EngineOptions o = test::SmallOptions(Nvme());
  o.tiers = {};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.tiers = {Tier::kNvme, Tier::kHost};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.tiers = {Tier::kHost, Tier::kHost};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.tiers = {Tier::kNvme};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.tiers = {Tier::kHost, static_cast<Tier>(9)};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.tiers = {Tier::kHost, Tier::kShm, Tier::kNvme};
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument)
      << "the node segment needs EngineOptions::shm.name";
  o.tiers = {Tier::kGpu, Tier::kHost};
#if STRATA_HAVE_CUDA
  // Built with CUDA: Open works where a GPU is, and says there is none
  // elsewhere (tests/gpu_tier_test.cpp runs the GPU tier over a double).
  auto gpu = Engine::Open(o);
  if (!gpu.ok()) {
    EXPECT_STATUS(gpu, StatusCode::kFailedPrecondition);
  }
#else
  EXPECT_STATUS(Engine::Open(o), StatusCode::kUnimplemented);
#endif
}

TEST_F(ChainTest, DirtyVictimsDemoteToTheMiddleTierAndLoadFromThere) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          /*host_blocks=*/8, /*test_blocks=*/16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(12)));
  for (uint64_t b = 0; b < 12; ++b) Write(e, t, b, 1);
  // Four host-fulls of room below: every victim fits in the remote tier, so
  // nothing reached NVMe yet.
  EXPECT_GE(Of(e, Tier::kRemote).bytes_in, 4 * kBlock);
  EXPECT_EQ(Of(e, Tier::kNvme).bytes_in, 0u);
  EXPECT_GE(Of(e, Tier::kHost).write_backs, 4u);
  // Block 0 was demoted: it comes back from the remote tier, not NVMe.
  const TierStats remote_before = Of(e, Tier::kRemote);
  Expect(e, t, 0, 1);
  EXPECT_EQ(Of(e, Tier::kRemote).bytes_out, remote_before.bytes_out + kBlock);
  EXPECT_EQ(Of(e, Tier::kNvme).bytes_out, 0u);
  for (uint64_t b = 0; b < 12; ++b) Expect(e, t, b, 1);
  EXPECT_GT(c.control(Tier::kRemote).writes(), 0u);
}

TEST_F(ChainTest, AFullMiddleTierFallsThroughToNvme) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          8, 16));
  Engine& e = *c.engine;
  c.control(Tier::kRemote).FailAllocations(true);
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(24)));
  for (uint64_t b = 0; b < 24; ++b) Write(e, t, b, 1);
  EXPECT_EQ(Of(e, Tier::kRemote).bytes_in, 0u);
  EXPECT_GE(Of(e, Tier::kNvme).bytes_in, 16 * kBlock);
  for (uint64_t b = 0; b < 24; ++b) Expect(e, t, b, 1);
  // Room again: later victims go to the remote tier first.
  c.control(Tier::kRemote).FailAllocations(false);
  for (uint64_t b = 0; b < 24; ++b) Write(e, t, b, 2);
  EXPECT_GT(Of(e, Tier::kRemote).bytes_in, 0u);
  for (uint64_t b = 0; b < 24; ++b) Expect(e, t, b, 2);
}

TEST_F(ChainTest, MiddleTierEvictsItsOwnVictimsToNvme) {
  // The remote tier holds 4 blocks: pushing 24 through an 8-block host tier
  // makes it evict its dirty copies down to NVMe (staged through host
  // memory: neither of them has host-addressable frames).
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          8, 4));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(24)));
  for (int round = 1; round <= 3; ++round) {
    for (uint64_t b = 0; b < 24; ++b) Write(e, t, b, round);
    for (uint64_t b = 0; b < 24; ++b) Expect(e, t, b, round);
  }
  const TierStats remote = Of(e, Tier::kRemote);
  EXPECT_GT(remote.write_backs, 0u) << "the remote tier never wrote down";
  EXPECT_GT(Of(e, Tier::kNvme).bytes_in, 0u);
  EXPECT_LE(remote.used_bytes, remote.capacity_bytes);
}

TEST_F(ChainTest, FlushWritesToTheLowestTier) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          8, 16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(12)));
  for (uint64_t b = 0; b < 12; ++b) Write(e, t, b, 1);
  ASSERT_OK(e.Flush(t));
  // Every block reached NVMe: the 8 still in host and the 4 in the remote
  // tier (written down from there, staged through host memory).
  EXPECT_EQ(Of(e, Tier::kNvme).bytes_in, 12 * kBlock);
  ASSERT_OK(e.Flush(t));  // nothing dirty is left
  EXPECT_EQ(Of(e, Tier::kNvme).bytes_in, 12 * kBlock);
  for (uint64_t b = 0; b < 12; ++b) Expect(e, t, b, 1);
}

TEST_F(ChainTest, FailedWriteToTheMiddleTierKeepsTheBlockAndReachesFlush) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          8, 16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(12)));
  c.control(Tier::kRemote).FailNth(TestOps::kWrite, 1,
                                   absl::UnavailableError("test: link down"));
  for (uint64_t b = 0; b < 12; ++b) Write(e, t, b, 1);  // all pins succeed
  EXPECT_EQ(c.control(Tier::kRemote).injected(), 1u);
  EXPECT_EQ(Of(e, Tier::kRemote).errors, 1u);
  const absl::Status flushed = e.Flush(t);
  EXPECT_EQ(flushed.code(), StatusCode::kUnavailable) << flushed;
  EXPECT_NE(flushed.message().find("link down"), std::string_view::npos) << flushed;
  ASSERT_OK(e.Flush(t));  // reported once
  for (uint64_t b = 0; b < 12; ++b) Expect(e, t, b, 1);
}

// A background write-back that fails while a Flush of its tensor runs is
// that Flush's to report: the Flush waited for the block in transit, so it
// returns only after the failure. Before the fix the Flush collected the
// tensor's errors before it waited, returned OK, and the failure surfaced in
// the next Flush (seen in CI as a FlushAll after the faults failing twice).
TEST_F(ChainTest, AWriteBackFailingDuringAFlushIsReportedByThatFlush) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          /*host_blocks=*/2, /*test_blocks=*/8));
  Engine& e = *c.engine;
  TestTierControl& remote = c.control(Tier::kRemote);
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(3)));
  Write(e, t, 0, 1);
  Write(e, t, 1, 1);  // the host is full of dirty blocks
  // Pinning block 2 evicts block 0 to remote; that write stalls.
  remote.HoldCompletions(TestOps::kWrite);
  absl::Status pinned;
  std::thread writer([&] {
    auto pin = e.Pin(t, 2, Tier::kHost, Access::kWrite);
    pinned = pin.status();
    if (pin.ok()) FillPattern(pin->bytes(), Seed(1, 2, 1));
  });
  // Bounded waits, no I/O involved: the eviction is submitted at once, and
  // the Flush reaches block 0 at once.
  for (int i = 0; i < 10000000 && remote.held() == 0; ++i) std::this_thread::yield();
  ASSERT_EQ(remote.held(), 1u) << "the eviction of block 0 did not start";
  absl::Status flushed;
  std::thread flusher([&] { flushed = e.Flush(t); });
  for (int i = 0; i < 10000000 && !testing::CopyHasWaiters(e, t, Tier::kHost, 0); ++i) {
    std::this_thread::yield();
  }
  ASSERT_TRUE(testing::CopyHasWaiters(e, t, Tier::kHost, 0))
      << "the Flush did not wait for block 0 in transit";
  remote.FailHeld(absl::UnavailableError("test: link down"));
  flusher.join();
  writer.join();
  EXPECT_EQ(flushed.code(), StatusCode::kUnavailable)
      << "the Flush running while the write-back failed must report it: "
      << flushed;
  EXPECT_NE(flushed.message().find("link down"), std::string_view::npos) << flushed;
  EXPECT_OK(e.Flush(t)) << "reported once";
  Expect(e, t, 0, 1);
  Expect(e, t, 1, 1);
  if (pinned.ok()) Expect(e, t, 2, 1);
}

// A middle tier's dirty copy, claimed for its eviction to NVMe, can lose its
// dirty mark before the eviction claims the copy below: a write pin of the
// block's host copy takes it (the bytes there are newer), and those newer
// bytes can reach NVMe first (here a Flush; in engine_stress_test the host
// copy's own eviction, which skips the busy middle copy). The middle copy's
// write-back must then write nothing. Before the fix it wrote its stale
// bytes over the newer NVMe copy, and once the host copy was gone the
// block's newest version was in no tier: "has no copy in any tier"
// (DATA_LOSS, met once in CI under TSan).
TEST_F(ChainTest, AMiddleCopyThatLostItsDirtyMarkIsNotWrittenDown) {
  EngineOptions base;
  base.pin_wait_timeout = absl::Seconds(5);
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          /*host_blocks=*/4, /*test_blocks=*/2,
                                          /*asynchronous=*/false, base));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor b, e.CreateTensor("b", Blocks(1)));
  ASSERT_OK_AND_ASSIGN(Tensor y, e.CreateTensor("y", Blocks(4)));
  ASSERT_OK_AND_ASSIGN(Tensor x, e.CreateTensor("x", Blocks(16)));
  // Block b0's only copy of version 1: dirty, in the remote tier.
  Write(e, b, 0, 1);
  for (uint64_t i = 0; i < 4; ++i) Write(e, y, i, 1);  // b0 is evicted first
  ASSERT_OK(e.DropTensor(y));                          // the host empties
  ASSERT_EQ(Of(e, Tier::kRemote).bytes_in, 2 * kBlock) << "b0 and y0 went to remote";
  ASSERT_EQ(Of(e, Tier::kNvme).bytes_in, 0u);
  // A clean host copy of it beside x0 and x1 (older) and x2.
  Write(e, x, 0, 1);
  Write(e, x, 1, 1);
  Expect(e, b, 0, 1);
  Write(e, x, 2, 1);

  // x3 evicts x0 into the remote tier's free frame, then x1 (the reserve):
  // the remote tier, full, evicts b0's copy to NVMe. In that window another
  // thread writes b0 in host (version 2) and flushes it to NVMe.
  int fired = 0;
  absl::Status written, flushed;
  testing::SetEvictionHook(e, [&](std::string_view tensor, uint64_t block, Tier from) {
    if (tensor != "b" || block != 0 || from != Tier::kRemote || fired++ > 0) return;
    std::thread other([&] {
      {
        auto pin = e.Pin(b, 0, Tier::kHost, Access::kWrite);
        written = pin.status();
        if (pin.ok()) FillPattern(pin->bytes(), Seed(1, 0, 2));
      }
      if (written.ok()) flushed = e.Flush(b);
    });
    other.join();
  });
  Write(e, x, 3, 1);
  for (uint64_t i = 4; i < 16 && fired == 0; ++i) Write(e, x, i, 1);
  ASSERT_EQ(fired, 1) << "b0's remote copy was never evicted";
  Of(e, Tier::kHost);  // no write-back left in flight
  testing::SetEvictionHook(e, {});
  ASSERT_OK(written);
  ASSERT_OK(flushed);

  // Push b0 out of host (clean: dropped), then read it from below.
  for (uint64_t i = 0; i < 16; ++i) Write(e, x, i, 2);
  Expect(e, b, 0, 2);
  ASSERT_OK(e.Flush(b));
}

// A load chooses its source under the block's latch and sets the shared bit
// on every other pinnable copy there, also on one a DropTensor has claimed
// meanwhile (it looked at the gate before). A drop that is then refused (a
// caller's pin) must not put back the word it claimed as it was: without the
// shared bit, the host copy's next write pin is the hot path's one CAS and
// leaves the new shm copy current, so a read pin of shm returns the bytes
// from before that write.
TEST_F(ChainTest, ARefusedDropKeepsTheSharedBitALoadSetMeanwhile) {
  EngineOptions base;
  base.pin_wait_timeout = absl::Seconds(5);
  base.io_timeout = absl::Seconds(5);
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kShm, Tier::kNvme},
                                          /*host_blocks=*/8, /*test_blocks=*/4,
                                          /*asynchronous=*/false, base));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(1)));
  Write(e, t, 0, 1);
  ASSERT_OK(e.Flush(t));  // host copy clean, unpinned, not shared

  // A read pin of shm loads the block; as it is about to choose its
  // source, another thread drops the tensor: the drop claims the host copy
  // and waits for the shm copy being loaded, and then finds it pinned.
  int fired = 0;
  absl::Status dropped;
  std::thread dropper;
  testing::SetLoadSourceHook(e, [&](std::string_view tensor, uint64_t block, Tier into) {
    if (tensor != "t" || block != 0 || into != Tier::kShm || fired++ > 0) return;
    dropper = std::thread([&] { dropped = e.DropTensor(t); });
    for (int i = 0; i < 10000000 && !testing::CopyHasWaiters(e, t, Tier::kShm, 0); ++i) {
      std::this_thread::yield();
    }
  });
  absl::Status pinned;
  std::thread reader([&] {
    auto pin = e.Pin(t, 0, Tier::kShm, Access::kRead);
    pinned = pin.status();
    if (dropper.joinable()) dropper.join();  // while the pin lives
  });
  reader.join();
  testing::SetLoadSourceHook(e, {});
  ASSERT_EQ(fired, 1);
  ASSERT_OK(pinned);
  ASSERT_EQ(dropped.code(), StatusCode::kFailedPrecondition) << dropped;

  Write(e, t, 0, 2);  // in host
  Expect(e, t, 0, 2, Tier::kShm);
  Expect(e, t, 0, 2);
}

TEST_F(ChainTest, ReadFailureOfTheMiddleTierReachesThePin) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote, Tier::kNvme},
                                          8, 16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(12)));
  for (uint64_t b = 0; b < 12; ++b) Write(e, t, b, 1);
  c.control(Tier::kRemote).FailNth(TestOps::kRead, 1,
                                   absl::UnavailableError("test: link down"));
  EXPECT_STATUS(e.Pin(t, 0, Tier::kHost, Access::kRead), StatusCode::kUnavailable);
  // The copy is still there: the next pin reads it.
  for (uint64_t b = 0; b < 12; ++b) Expect(e, t, b, 1);
}

TEST_F(ChainTest, PinsInTwoPinnableTiersSeeOneBlock) {
  ASSERT_OK_AND_ASSIGN(
      Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kShm, Tier::kRemote, Tier::kNvme},
                         8, 16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(4)));
  Write(e, t, 0, 1, Tier::kHost);
  Expect(e, t, 0, 1, Tier::kShm);   // a second copy, loaded from host
  Expect(e, t, 0, 1, Tier::kHost);
  Write(e, t, 0, 2, Tier::kShm);    // drops the host copy first
  Expect(e, t, 0, 2, Tier::kHost);
  Write(e, t, 0, 3, Tier::kHost);
  Expect(e, t, 0, 3, Tier::kShm);
  // Never-written blocks read zeros in both.
  Expect(e, t, 3, 0, Tier::kShm);
  Expect(e, t, 3, 0, Tier::kHost);
  // Pins of a tier that holds copies only are refused.
  EXPECT_STATUS(e.Pin(t, 0, Tier::kRemote, Access::kRead),
                StatusCode::kInvalidArgument);
}

TEST_F(ChainTest, WritePinWaitsForReadPinsInAnotherTier) {
  ASSERT_OK_AND_ASSIGN(
      Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kShm, Tier::kNvme}, 8, 16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(2)));
  Write(e, t, 0, 1, Tier::kHost);
  ASSERT_OK_AND_ASSIGN(Pin reader, e.Pin(t, 0, Tier::kShm, Access::kRead));
  std::atomic<bool> granted{false};
  std::thread writer([&] {
    auto pin = e.Pin(t, 0, Tier::kHost, Access::kWrite);
    EXPECT_TRUE(pin.ok()) << pin.status();
    granted.store(true);
    if (pin.ok()) FillPattern(pin->bytes(), Seed(1, 0, 2));
  });
  // The writer cannot have its pin while the shm copy is read-pinned.
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(granted.load());
    std::this_thread::yield();
  }
  EXPECT_EQ(FirstPatternMismatch(reader.bytes(), Seed(1, 0, 1)), -1);
  ASSERT_OK(reader.Release());
  writer.join();
  EXPECT_TRUE(granted.load());
  Expect(e, t, 0, 2, Tier::kShm);
}

// A write pin in a tier where another copy is current loads its copy,
// which is published unpinned (the write waits until the other copies are
// dropped: MakeSoleAndPin). The load's refill of the tier's reserve must not
// evict that copy: with every other frame of the tier pinned it is the only
// victim, and the pin loaded it again and again for ever (engine_stress_test's
// HostShmRemoteNvme chain hung so under load; here made certain).
TEST_F(ChainTest, AWritePinIsNotEvictedByItsOwnLoadsRefill) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenShmChain(Nvme(), 2));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(4)));
  for (uint64_t b = 0; b < 4; ++b) Write(e, t, b, 1);  // current in host
  // Fill the two shm frames, then pin block 1 there and keep it: the tier
  // is under pressure, and its only other frame is the write's.
  Expect(e, t, 2, 1, Tier::kShm);
  Expect(e, t, 3, 1, Tier::kShm);
  ASSERT_OK_AND_ASSIGN(Pin held, e.Pin(t, 1, Tier::kShm, Access::kRead));
  const TierStats before = e.GetStats().tier(Tier::kShm);
  {
    auto pin = e.Pin(t, 0, Tier::kShm, Access::kWrite);
    ASSERT_TRUE(pin.ok()) << pin.status();
    EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(1, 0, 1)), -1);
    FillPattern(pin->bytes(), Seed(1, 0, 2));
  }
  const TierStats after = e.GetStats().tier(Tier::kShm);
  // One load into shm: the copy the write waited for was not evicted and
  // loaded again (before the fix: two loads here, and no end of them when
  // the tier's policy kept choosing that copy).
  EXPECT_EQ(after.bytes_in - before.bytes_in, kBlock);
  held = Pin();
  Expect(e, t, 0, 2, Tier::kHost);
  Expect(e, t, 1, 1, Tier::kHost);
}

// A prefetch loads its blocks in one batch. A block whose source it must
// wait for (here: write-pinned in another tier) must not hold back the
// loads already gathered: they hold their sources pinned and their target
// copies loading, and the pin that releases the waited-for block may be
// waiting for one of them. Before the fix the batch went out only after the
// wait, so the writer below waited for block 0 until the prefetch's wait
// for block 1 ran out (kDeadlineExceeded in the handle).
TEST_F(ChainTest, APrefetchWaitingForOneBlockSubmitsTheOthersFirst) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenShmChain(Nvme(), 16));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(2)));
  Write(e, t, 0, 1, Tier::kShm);  // block 0: in shm only
  ASSERT_OK_AND_ASSIGN(Pin writer, e.Pin(t, 1, Tier::kShm, Access::kWrite));
  FillPattern(writer.bytes(), Seed(1, 1, 1));
  ASSERT_OK_AND_ASSIGN(PrefetchHandle h, e.Prefetch(t, {0, 2}, Tier::kHost));
  // Once the prefetch holds a host frame, it loads block 0 (not this
  // thread's pin below); bounded, the prefetch needs no I/O to get there.
  for (int i = 0; i < 1000000 && e.GetStats().tier(Tier::kHost).used_bytes == 0; ++i) {
    std::this_thread::yield();
  }
  // Block 0 must arrive while block 1 stays write-pinned.
  Expect(e, t, 0, 1, Tier::kHost);
  ASSERT_OK(writer.Release());
  EXPECT_OK(h.Wait()) << "the prefetch of block 1 gave up waiting for the "
                         "writer, which waited for block 0 of the same batch";
  Expect(e, t, 1, 1, Tier::kHost);
}

TEST_F(ChainTest, GpuSlotAboveHostDemotesIntoHost) {
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kGpu, Tier::kHost, Tier::kNvme},
                                          /*host_blocks=*/16, /*test_blocks=*/4));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(32)));
  // Write through the 4-block gpu tier: its dirty victims go to host, whose
  // victims go to NVMe.
  for (uint64_t b = 0; b < 32; ++b) Write(e, t, b, 1, Tier::kGpu);
  EXPECT_GT(Of(e, Tier::kGpu).write_backs, 0u);
  EXPECT_GT(Of(e, Tier::kNvme).bytes_in, 0u);
  for (uint64_t b = 0; b < 32; ++b) Expect(e, t, b, 1, Tier::kHost);
  for (uint64_t b = 0; b < 32; b += 3) Expect(e, t, b, 1, Tier::kGpu);
  ASSERT_OK(e.Flush(t));
  for (uint64_t b = 0; b < 32; ++b) Expect(e, t, b, 1, Tier::kGpu);
}

// Write-backs in flight from a tier: 1/8 of its frames (4 of 32 here), and
// half that while loads into it are in flight (the reads keep the device
// busy too; a write-back's frame is one the cache does not hold). The lower
// tier holds every write (and the one load) until the end; a pin that
// needs a frame starts write-backs up to the depth, then waits, and gives
// up at pin_wait_timeout; what it started is then held below.
uint64_t WriteBacksStartedWhileStalled(const std::string& nvme_dir, bool with_load) {
  constexpr uint64_t kFrames = 32, kBlocks = 2 * kFrames;
  EngineOptions base;
  base.pin_wait_timeout = absl::Milliseconds(300);
  auto c = OpenChain(nvme_dir, {Tier::kHost, Tier::kRemote}, kFrames, 2 * kBlocks,
                     /*asynchronous=*/false, base);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return 0;
  Engine& e = *c->engine;
  TestTierControl& remote = c->control(Tier::kRemote);
  auto t = e.CreateTensor("t", Blocks(kBlocks));
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return 0;
  // Blocks 0..7 go down to the remote tier; 8..39 fill the host, dirty.
  for (uint64_t b = 0; b < kFrames + 8; ++b) {
    auto pin = e.Pin(*t, b, Tier::kHost, Access::kWrite);
    EXPECT_TRUE(pin.ok()) << pin.status();
    if (!pin.ok()) return 0;
    FillPattern(pin->bytes(), Seed(1, b, 1));
  }
  std::optional<PrefetchHandle> load;
  if (with_load) {
    remote.HoldCompletions(TestOps::kRead);
    auto h = e.Prefetch(*t, BlockRange::One(0), Tier::kHost);
    EXPECT_TRUE(h.ok()) << h.status();
    if (!h.ok()) return 0;
    load = std::move(*h);
    // Bounded, no I/O involved: the mover submits the load at once.
    for (int i = 0; i < 10000000 && remote.held() == 0; ++i) std::this_thread::yield();
    EXPECT_EQ(remote.held(), 1u) << "the load of block 0 did not start";
  }
  remote.HoldCompletions(TestOps::kAny);
  absl::Status last;
  for (uint64_t b = kFrames + 8; b < kBlocks && last.ok(); ++b) {
    auto pin = e.Pin(*t, b, Tier::kHost, Access::kOverwrite);
    last = pin.status();
    if (pin.ok()) FillPattern(pin->bytes(), Seed(1, b, 1));
  }
  EXPECT_FALSE(last.ok()) << "every pin found a frame with the tier below stalled";
  const uint64_t in_flight = e.GetStats().tier(Tier::kHost).write_backs_in_flight;
  EXPECT_EQ(remote.held(), in_flight + (with_load ? 1 : 0));
  remote.Clear();
  if (load) {
    EXPECT_OK(load->Wait());
  }
  for (uint64_t b = 0; b < kFrames + 8; ++b) {
    auto pin = e.Pin(*t, b, Tier::kHost, Access::kRead);
    EXPECT_TRUE(pin.ok()) << "block " << b << ": " << pin.status();
    if (pin.ok()) {
      EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(1, b, 1)), -1) << b;
    }
  }
  EXPECT_OK(e.Close());
  return in_flight;
}

TEST_F(ChainTest, WriteBacksInFlightHalveWhileLoadsAreInFlight) {
  EXPECT_EQ(WriteBacksStartedWhileStalled(dir_.Sub("alone"), /*with_load=*/false), 4u)
      << "with nothing loading, write-backs keep 1/8 of the tier's frames in flight";
  EXPECT_EQ(WriteBacksStartedWhileStalled(dir_.Sub("loading"), /*with_load=*/true), 2u)
      << "with a load in flight, half as many";
}

TEST_F(ChainTest, StalledLoadTimesOutAndKeepsItsFrame) {
  EngineOptions base;
  base.io_timeout = absl::Milliseconds(200);
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote},
                                          4, 16, /*asynchronous=*/false, base));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(8)));
  for (uint64_t b = 0; b < 8; ++b) Write(e, t, b, 1);  // 0..3 now only below
  c.control(Tier::kRemote).HoldCompletions(TestOps::kRead);
  const uint64_t used_before = Of(e, Tier::kHost).used_bytes;
  auto pin = e.Pin(t, 0, Tier::kHost, Access::kRead);
  EXPECT_EQ(pin.status().code(), StatusCode::kDeadlineExceeded) << pin.status();
  EXPECT_NE(pin.status().message().find("io_timeout"), std::string_view::npos);
  EXPECT_EQ(c.control(Tier::kRemote).held(), 1u);
  // The frame stays reserved (quarantined) until the completion comes.
  EXPECT_GE(Of(e, Tier::kHost).used_bytes, used_before);
  c.control(Tier::kRemote).ReleaseHeld();
  for (uint64_t b = 0; b < 8; ++b) Expect(e, t, b, 1);
}

TEST_F(ChainTest, AFullLowestTierFailsFast) {
  // host (4 blocks) over a remote tier of 2 blocks and nothing below it:
  // once both are full of dirty blocks, a miss must fail at once, asking the
  // remote tier for a frame a bounded number of times.
  ASSERT_OK_AND_ASSIGN(Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kRemote}, 4, 2));
  Engine& e = *c.engine;
  ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor("t", Blocks(12)));
  for (uint64_t b = 0; b < 6; ++b) Write(e, t, b, 1);
  for (int i = 0; i < 5; ++i) {
    const uint64_t before = c.control(Tier::kRemote).allocations();
    EXPECT_STATUS(e.Pin(t, 6 + i, Tier::kHost, Access::kWrite),
                  StatusCode::kResourceExhausted);
    EXPECT_LE(c.control(Tier::kRemote).allocations() - before, 2u * 4)
        << "a failing miss asked the full tier below for a frame too often";
  }
  // Nothing was lost: the blocks in host read back; those only in the
  // remote tier need a host frame that only an eviction into the full tier
  // could free, so they are refused, not wrong.
  for (uint64_t b = 0; b < 6; ++b) {
    auto pin = e.Pin(t, b, Tier::kHost, Access::kRead);
    if (!pin.ok()) {
      EXPECT_EQ(pin.status().code(), StatusCode::kResourceExhausted) << pin.status();
      continue;
    }
    EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(1, b, 1)), -1) << b;
  }
  EXPECT_EQ(Of(e, Tier::kHost).used_bytes, 4 * kBlock);
}

// DropTensor while another thread pins blocks in a 2-frame shm tier, each
// pin loading its shm copy from the block's host copy, with the last pin
// held while the next one loads. Required:
//   - a pin gets OK, or kNotFound while a drop is under way: never
//     kResourceExhausted because the drop claimed the tier's frames for a
//     moment (it was so), nor a wait for a frame the drop holds while the
//     drop waits for that load (it then hung for pin_wait_timeout);
//   - kFailedPrecondition from the drop names only the tier the caller pins
//     (shm): a load's read pin of its host source is the engine's.
TEST_F(ChainTest, DropRacingLoadsBlamesOnlyTheCallersPins) {
  constexpr int kRounds = 300;
  constexpr uint64_t kN = 8;
  ASSERT_OK_AND_ASSIGN(
      Chain c, OpenChain(Nvme(), {Tier::kHost, Tier::kShm, Tier::kNvme}, 16, 2));
  Engine& e = *c.engine;
  int refusals = 0;
  for (int round = 0; round < kRounds && !HasFailure(); ++round) {
    const std::string name = "t" + std::to_string(round);
    ASSERT_OK_AND_ASSIGN(Tensor t, e.CreateTensor(name, Blocks(kN)));
    for (uint64_t b = 0; b < kN; ++b) Write(e, t, b, 1);
    ASSERT_OK(e.Flush(t));  // clean: no write-back pins the host copies
    std::atomic<bool> stop{false};
    std::atomic<int> pins{0};
    std::thread pinner([&] {
      uint64_t x = round + 1;
      Pin held;  // the last pin lives while the next loads
      while (!stop.load(std::memory_order_relaxed)) {
        x = test::Mix(x);
        // The shm tier holds 2 blocks: most pins load from host.
        auto pin = e.Pin(t, x % kN, Tier::kShm, Access::kRead);
        // kNotFound while a drop is under way (it may still be refused).
        if (absl::IsNotFound(pin.status())) {
          held = Pin();
          continue;
        }
        if (!pin.ok()) {
          ADD_FAILURE() << "round " << round << ", pin " << pins.load()
                        << " in shm: " << pin.status();
          return;
        }
        held = std::move(pin).value();
        pins.fetch_add(1, std::memory_order_relaxed);
      }
    });
    // Drop once the pinner is under way (bounded: it pins or fails).
    for (int i = 0; i < 10000000 && pins.load() < 2 && !HasFailure(); ++i) {
      std::this_thread::yield();
    }
    absl::Status s;
    for (int tries = 0; tries < 1000000; ++tries) {
      s = e.DropTensor(t);
      if (!absl::IsFailedPrecondition(s)) break;
      ++refusals;
      if (tries == 200) stop = true;  // then the pinner lets go
      EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("tier shm"))
          << "round " << round << ": the drop blamed a pin the caller does "
          << "not hold: " << s;
      if (HasFailure()) break;
    }
    stop = true;
    pinner.join();
    EXPECT_OK(s) << "round " << round;
  }
  // The race happened: drops met the caller's pins.
  EXPECT_GT(refusals, 0);
}

}  // namespace
}  // namespace strata
