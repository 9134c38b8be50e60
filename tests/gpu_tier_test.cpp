// The GPU tier over the device double (tiers/gpu/fake_gpu_device.h), so
// that CI runs its bookkeeping without a GPU: the pool (one reservation,
// frames carved from it), transfers on the two copy streams and their
// completions, a held stream standing for a busy device, sticky errors
// fencing the tier; then the engine with the GPU on top of host and NVMe:
// pins against host copies with fresh random data, eviction under VRAM
// pressure, dirty write-back round trips, injected out-of-memory, fencing,
// and stream-ordered unpins. The real-CUDA counterpart is
// tests/gpu_cuda_test.cpp (suite gpu).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "api/strata/strata.h"
#include "engine/testing.h"
#include "gtest/gtest.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"
#include "strata_config.h"
#include "tiers/gpu/fake_gpu_device.h"
#if STRATA_HAVE_CUDA
#include "tiers/gpu/cuda_device.h"
#endif
#include "tiers/gpu/gpu_tier.h"

namespace strata {
namespace {

using ::absl::StatusCode;
using test::FirstNonZero;
using test::FirstPatternMismatch;
using test::kKiB;
using test::kMiB;
using test::RunTag;
using test::Seed;
using tiers::CopyDir;
using tiers::FakeGpuDevice;
using tiers::GpuTier;
using tiers::Transfer;

constexpr uint64_t kBlock = 64 * kKiB;
constexpr absl::Duration kPatience = absl::Seconds(20);

std::vector<std::byte> Pattern(uint64_t bytes, uint64_t seed) {
  std::vector<std::byte> v(bytes);
  test::FillPattern(v, seed);
  return v;
}

// ---------------------------------------------------------------------------
// The tier alone

struct Done {
  std::atomic<int> calls{0};
  absl::Status status;
  static void Call(Transfer* t) {
    auto* d = static_cast<Done*>(t->user);
    d->status = t->status;
    d->calls.fetch_add(1, std::memory_order_release);
  }
};

Transfer MakeTransfer(Transfer::Op op, const tiers::Frame& frame,
                      std::span<std::byte> host, Done& done) {
  Transfer t;
  t.op = op;
  t.frame = frame;
  t.host = host;
  t.on_done = &Done::Call;
  t.user = &done;
  return t;
}

absl::Status SubmitOne(GpuTier& tier, Transfer& t) {
  Transfer* one[1] = {&t};
  return tier.Submit(one);
}

// Waits for a transfer's completion, which comes from the tier's lane.
bool AwaitDone(const Done& d) {
  const absl::Time until = absl::Now() + kPatience;
  while (d.calls.load(std::memory_order_acquire) == 0) {
    if (absl::Now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST(GpuTierTest, RejectsBadCapacities) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  EXPECT_STATUS(GpuTier::Create({.capacity_bytes = 0, .capacity_fraction = 0}, dev),
                StatusCode::kInvalidArgument);
  EXPECT_STATUS(GpuTier::Create({.capacity_bytes = 0, .capacity_fraction = 1.5}, dev),
                StatusCode::kInvalidArgument);
  EXPECT_STATUS(GpuTier::Create({.capacity_bytes = 4097}, dev),
                StatusCode::kInvalidArgument);
  auto big = GpuTier::Create({.capacity_bytes = 128 * kMiB}, dev);
  EXPECT_STATUS(big, StatusCode::kResourceExhausted);
  EXPECT_NE(big.status().message().find("67108864 of 67108864 bytes free"),
            std::string::npos) << big.status();
  dev->FailReserve(absl::ResourceExhaustedError("cudaMalloc: out of memory"));
  EXPECT_STATUS(GpuTier::Create({.capacity_bytes = 4 * kMiB}, dev),
                StatusCode::kResourceExhausted);
}

TEST(GpuTierTest, CapacityIsAFractionOfFreeMemory) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  dev->SetFreeBytes(40 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_fraction = 0.25}, dev));
  EXPECT_EQ(tier->capacity(), 10 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto info, dev->MemoryInfo());
  EXPECT_EQ(info.free_bytes, 30 * kMiB);  // one reservation of the pool
}

TEST(GpuTierTest, FramesAreCarvedFromOneReservation) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB}, dev));
  EXPECT_FALSE(tier->addressable());
  std::vector<tiers::Frame> frames;
  for (int i = 0; i < 16; ++i) {
    ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBlock - 100));
    EXPECT_EQ(f.bytes, kBlock);
    EXPECT_EQ(f.data, nullptr);
    ASSERT_NE(f.device, nullptr);
    frames.push_back(f);
  }
  // Disjoint extents of one base: device pointers follow the offsets.
  auto* base = static_cast<std::byte*>(frames[0].device) - frames[0].offset;
  for (const tiers::Frame& f : frames) {
    EXPECT_EQ(static_cast<std::byte*>(f.device), base + f.offset);
  }
  auto full = tier->Allocate(kBlock);
  EXPECT_STATUS(full, StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("1048576 bytes, 1048576 used"),
            std::string::npos) << full.status();
  for (const tiers::Frame& f : frames) tier->Free(f);
  EXPECT_EQ(tier->used(), 0u);
  EXPECT_EQ(tier->largest_free(), 1 * kMiB);  // coalesced again
}

TEST(GpuTierTest, TransfersRoundTripOnTheCopyStreams) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB}, dev));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBlock));
  std::vector<std::byte> in = Pattern(kBlock, Seed(RunTag(), 1, 1));
  std::vector<std::byte> out(kBlock);
  Done w, r;
  Transfer tw = MakeTransfer(Transfer::Op::kWrite, f, in, w);
  ASSERT_OK(SubmitOne(*tier, tw));
  ASSERT_TRUE(AwaitDone(w));
  ASSERT_OK(w.status);
  EXPECT_EQ(FirstPatternMismatch(dev->Peek(f.device, kBlock), Seed(RunTag(), 1, 1)), -1)
      << "run tag " << RunTag();
  Transfer tr = MakeTransfer(Transfer::Op::kRead, f, out, r);
  ASSERT_OK(SubmitOne(*tier, tr));
  ASSERT_TRUE(AwaitDone(r));
  ASSERT_OK(r.status);
  EXPECT_EQ(out, in);
  EXPECT_EQ(dev->copies(CopyDir::kHostToDevice), 1u);
  EXPECT_EQ(dev->copies(CopyDir::kDeviceToHost), 1u);
  EXPECT_EQ(tier->bytes_in(), kBlock);
  EXPECT_EQ(tier->bytes_out(), kBlock);
  tier->Free(f);
}

TEST(GpuTierTest, ACopyCompletesOnlyWhenTheDeviceFinishedIt) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB}, dev));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBlock));
  std::vector<std::byte> in = Pattern(kBlock, Seed(RunTag(), 2, 1));
  dev->Hold(dev->copy_stream(CopyDir::kHostToDevice));  // a busy device
  Done w;
  Transfer tw = MakeTransfer(Transfer::Op::kWrite, f, in, w);
  ASSERT_OK(SubmitOne(*tier, tw));
  ASSERT_TRUE(dev->AwaitWaiters(1, kPatience));  // the lane waits on its event
  EXPECT_EQ(w.calls.load(), 0);
  EXPECT_EQ(dev->copies(CopyDir::kHostToDevice), 0u);
  dev->Release(dev->copy_stream(CopyDir::kHostToDevice));
  ASSERT_TRUE(AwaitDone(w));
  EXPECT_OK(w.status);
  EXPECT_EQ(dev->copies(CopyDir::kHostToDevice), 1u);
  tier->Free(f);
}

TEST(GpuTierTest, AFailedCopyFailsItsTransferOnly) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB}, dev));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBlock));
  std::vector<std::byte> in = Pattern(kBlock, Seed(RunTag(), 3, 1));
  dev->FailNthCopy(1, absl::InvalidArgumentError("cudaMemcpyAsync: invalid value"));
  Done a, b;
  Transfer ta = MakeTransfer(Transfer::Op::kWrite, f, in, a);
  Transfer tb = MakeTransfer(Transfer::Op::kWrite, f, in, b);
  Transfer* two[2] = {&ta, &tb};
  ASSERT_OK(tier->Submit(two));
  ASSERT_TRUE(AwaitDone(a));
  ASSERT_TRUE(AwaitDone(b));
  EXPECT_STATUS(a.status, StatusCode::kInvalidArgument);
  EXPECT_OK(b.status);
  EXPECT_OK(tier->fenced());  // not sticky: the tier goes on
  EXPECT_OK(tier->Allocate(kBlock).status());
}

TEST(GpuTierTest, ACopyIntoAFrameAnnouncesItsReadyEventWhenEnqueued) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB}, dev));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBlock));
  ASSERT_OK_AND_ASSIGN(void* unfilled, tier->ReadyEvent(f));  // no copy yet
  ASSERT_OK_AND_ASSIGN(bool done, dev->Query(unfilled));
  EXPECT_TRUE(done);
  std::vector<std::byte> in = Pattern(kBlock, Seed(RunTag(), 4, 1));
  tiers::DeviceStream h2d = dev->copy_stream(CopyDir::kHostToDevice);
  dev->Hold(h2d);
  // on_enqueued sees the copy's event, pending, before any completion.
  struct Seen : Done {
    GpuTier* tier = nullptr;
    int enqueued = 0;
    int completions_before = -1;
    void* event = nullptr;
    static void Enqueued(Transfer* t) {
      // `user` is the Seen (Done::Call reads its Done part).
      auto* s = static_cast<Seen*>(static_cast<Done*>(t->user));
      ++s->enqueued;
      s->completions_before = s->calls.load();
      absl::StatusOr<void*> e = s->tier->ReadyEvent(t->frame);
      s->event = e.ok() ? *e : nullptr;
    }
  };
  Seen seen;
  seen.tier = tier.get();
  Transfer tw = MakeTransfer(Transfer::Op::kWrite, f, in, seen);
  tw.on_enqueued = &Seen::Enqueued;
  ASSERT_OK(SubmitOne(*tier, tw));
  EXPECT_EQ(seen.enqueued, 1);  // from Submit, on this thread
  EXPECT_EQ(seen.completions_before, 0);
  ASSERT_NE(seen.event, nullptr);
  ASSERT_OK_AND_ASSIGN(done, dev->Query(seen.event));
  EXPECT_FALSE(done);
  dev->Release(h2d);
  ASSERT_TRUE(AwaitDone(seen));
  ASSERT_OK(seen.status);
  ASSERT_OK_AND_ASSIGN(void* landed, tier->ReadyEvent(f));
  EXPECT_EQ(landed, seen.event);
  ASSERT_OK_AND_ASSIGN(done, dev->Query(landed));
  EXPECT_TRUE(done);
  // A copy that fails when it runs: its error stays with the frame until
  // the frame is freed.
  dev->FailNthCopyWhenItRuns(1, absl::InternalError("cudaErrorUnknown (fake)"));
  Done bad;
  Transfer tb = MakeTransfer(Transfer::Op::kWrite, f, in, bad);
  ASSERT_OK(SubmitOne(*tier, tb));
  ASSERT_TRUE(AwaitDone(bad));
  EXPECT_STATUS(bad.status, StatusCode::kInternal);
  EXPECT_STATUS(tier->ReadyEvent(f), StatusCode::kInternal);
  EXPECT_STATUS(tier->WaitReady(f, dev->CreateStream()), StatusCode::kInternal);
  EXPECT_OK(tier->fenced());
  tier->Free(f);
  ASSERT_OK_AND_ASSIGN(tiers::Frame again, tier->Allocate(kBlock));
  EXPECT_EQ(again.offset, f.offset);
  EXPECT_OK(tier->ReadyEvent(again).status());
  tier->Free(again);
}

TEST(GpuTierTest, AStickyErrorFencesTheTier) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  std::vector<std::string> logged;
  ASSERT_OK_AND_ASSIGN(
      auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB,
                                  .log = [&](std::string_view m) { logged.emplace_back(m); }},
                                 dev));
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(kBlock));
  std::vector<std::byte> in = Pattern(kBlock, Seed(RunTag(), 4, 1));
  // A transfer waiting for the device when the context dies fails too.
  dev->Hold(dev->copy_stream(CopyDir::kHostToDevice));
  Done w;
  Transfer tw = MakeTransfer(Transfer::Op::kWrite, f, in, w);
  ASSERT_OK(SubmitOne(*tier, tw));
  ASSERT_TRUE(dev->AwaitWaiters(1, kPatience));
  dev->InjectStickyError(absl::InternalError(
      "cudaEventSynchronize: cudaErrorIllegalAddress (an illegal memory access)"));
  ASSERT_TRUE(AwaitDone(w));
  EXPECT_STATUS(w.status, StatusCode::kInternal);
  EXPECT_NE(w.status.message().find("cudaErrorIllegalAddress"), std::string::npos);
  EXPECT_STATUS(tier->fenced(), StatusCode::kInternal);
  ASSERT_EQ(logged.size(), 1u);
  auto again = tier->Allocate(kBlock);
  EXPECT_STATUS(again, StatusCode::kFailedPrecondition);
  EXPECT_NE(again.status().message().find("restart the process"), std::string::npos);
  Done later;
  Transfer tl = MakeTransfer(Transfer::Op::kRead, f, in, later);
  EXPECT_STATUS(SubmitOne(*tier, tl), StatusCode::kFailedPrecondition);
  EXPECT_EQ(later.calls.load(), 0);  // refused: no completion
  tier->Free(f);
}

TEST(GpuTierTest, AFrameFencedByAStreamThatNeverFinishesIsNotReused) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB,
                                                   .stream_wait_timeout = absl::Milliseconds(50)},
                                                  dev));
  tiers::DeviceStream stream = dev->CreateStream();
  ASSERT_OK_AND_ASSIGN(tiers::Frame f, tier->Allocate(1 * kMiB));
  dev->Hold(stream);  // a kernel that never ends
  ASSERT_OK(tier->FenceAfter(f, stream));
  tier->Free(f);
  EXPECT_EQ(tier->deferred_frames(), 1u);
  auto again = tier->Allocate(kBlock);  // gives up after the timeout
  EXPECT_STATUS(again, StatusCode::kResourceExhausted);
  EXPECT_NE(again.status().message().find("wait for callers' streams"), std::string::npos)
      << again.status();
  dev->Release(stream);
  ASSERT_OK_AND_ASSIGN(tiers::Frame g, tier->Allocate(1 * kMiB));
  EXPECT_EQ(tier->deferred_frames(), 0u);
  tier->Free(g);
}

// The device's teardown never fails but says what went wrong there through
// the tier's log (EngineOptions::log), which the tier hands down.
TEST(GpuTierTest, HandsItsLogToTheDevice) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(
      auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB,
                                  .log = [](std::string_view) {}},
                                 dev));
  EXPECT_TRUE(dev->has_log());
}

TEST(GpuTierTest, RegistersTheHostArenaOnce) {
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  ASSERT_OK_AND_ASSIGN(auto tier, GpuTier::Create({.capacity_bytes = 1 * kMiB}, dev));
  std::vector<std::byte> arena(3 * kMiB);
  ASSERT_OK(tier->RegisterHostMemory(arena));
  EXPECT_EQ(dev->registered_bytes(), 3 * kMiB);
}

#if STRATA_HAVE_CUDA
// Built with CUDA, on a machine without a GPU (CI's cuda builds, this
// repository's build machine): opening the device says so and what to do.
TEST(GpuTierTest, TheCudaDeviceSaysWhenThereIsNoGpu) {
  auto dev = tiers::OpenCudaDevice(0);
  if (dev.ok()) GTEST_SKIP() << "a GPU is here; gpu_cuda_test covers it";
  EXPECT_STATUS(dev, StatusCode::kFailedPrecondition);
  EXPECT_NE(dev.status().message().find("leave Tier::kGpu out"), std::string::npos)
      << dev.status();
}
#endif

// ---------------------------------------------------------------------------
// The engine with a GPU tier over the double

class GpuEngineTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  // gpu (`gpu_blocks` of kBlock) over host (`host_blocks`) over NVMe.
  void Open(uint64_t gpu_blocks, uint64_t host_blocks, bool with_nvme = true) {
    EngineOptions o =
        test::GpuEngineOptions(dir_.Sub("nvme"), host_blocks * kBlock, kBlock, with_nvme);
    if (pin_wait_ != absl::ZeroDuration()) o.pin_wait_timeout = pin_wait_;
    o.readahead_blocks = readahead_;
    dev_ = std::make_shared<FakeGpuDevice>(256 * kMiB);
    auto gpu = GpuTier::Create({.capacity_bytes = gpu_blocks * kBlock}, dev_);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = gpu->get();
    internal::TierOverrides overrides;
    overrides.tiers[Tier::kGpu] = std::move(gpu).value();
    auto engine = testing::OpenWithTiers(std::move(o), std::move(overrides));
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    ASSERT_EQ(dev_->registered_bytes(), host_blocks * kBlock);  // at Open
  }

  Tensor Make(const std::string& name, uint64_t blocks) {
    return test::MakeBlocks(*engine_, name, blocks, kBlock);
  }

  void WriteHost(const Tensor& t, uint64_t b, uint64_t v) {
    test::WriteHostBlock(*engine_, t, b, v);
  }
  // Writes it on the GPU, as a kernel on `stream` would.
  void WriteGpu(const Tensor& t, uint64_t b, uint64_t v) {
    auto pin = engine_->Pin(t, b, Tier::kGpu, Access::kOverwrite);
    ASSERT_TRUE(pin.ok()) << pin.status();
    const uint64_t seed = Seed(RunTag(), b, v);
    ASSERT_OK(dev_->Launch(stream_, pin->device_ptr(), pin->size(),
                           [seed](std::span<std::byte> mem) { test::FillPattern(mem, seed); }));
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  void ExpectHost(const Tensor& t, uint64_t b, uint64_t v) {
    test::ExpectHostBlock(*engine_, t, b, v);
  }
  void ExpectGpu(const Tensor& t, uint64_t b, uint64_t v) {
    auto pin = engine_->Pin(t, b, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    ASSERT_OK(pin->WaitOn(stream_));
    std::vector<std::byte> seen = dev_->Peek(pin->device_ptr(), pin->size());
    ASSERT_EQ(seen.size(), pin->size());
    EXPECT_EQ(FirstPatternMismatch(seen, Seed(RunTag(), b, v)), -1)
        << "block " << b << " version " << v << " on the GPU; run tag " << RunTag();
  }
  TierStats Of(Tier tier) { return engine_->GetStats().tier(tier); }
  // Pins block `b` on the GPU on a thread of its own (the pin may wait for
  // a frame); `pinned` turns true once it has.
  std::thread PinOnAThread(const Tensor& t, uint64_t b, std::atomic<bool>& pinned) {
    return std::thread([this, &t, b, &pinned] {
      auto pin = engine_->Pin(t, b, Tier::kGpu, Access::kRead);
      EXPECT_TRUE(pin.ok()) << pin.status();
      pinned.store(true);
    });
  }

  test::TempDir dir_;
  std::shared_ptr<FakeGpuDevice> dev_;
  GpuTier* gpu_ = nullptr;
  std::unique_ptr<Engine> engine_;
  tiers::DeviceStream stream_ = nullptr;
  absl::Duration pin_wait_ = absl::ZeroDuration();  // zero: the default
  int readahead_ = 0;  // EngineOptions::readahead_blocks; -1: automatic

 public:
  GpuEngineTest() = default;
};

TEST_F(GpuEngineTest, PinsSeeTheHostCopiesBytes) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/8, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 6);
  for (uint64_t b = 0; b < 4; ++b) WriteHost(t, b, 1);
  for (uint64_t b = 0; b < 4; ++b) ExpectGpu(t, b, 1);
  // Never written: zeros, also on the device (written there by a copy).
  auto pin = engine_->Pin(t, 5, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(FirstNonZero(dev_->Peek(pin->device_ptr(), pin->size())), -1);
  EXPECT_EQ(pin->tier(), Tier::kGpu);
  ASSERT_OK_AND_ASSIGN(GpuEvent ready, pin->ready_event());
  EXPECT_NE(ready, nullptr);
  ASSERT_OK(pin->Release());
  // A GPU pin returns with its copy in flight; the copy counts once done.
  ASSERT_TRUE(testing::WaitForBackgroundWork(*engine_, absl::Seconds(10)));
  EXPECT_EQ(Of(Tier::kGpu).bytes_in, 5 * kBlock);
  // A host pin has no device side.
  auto host = engine_->Pin(t, 0, Tier::kHost, Access::kRead);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(host->device_ptr(), nullptr);
  EXPECT_STATUS(host->WaitOn(stream_), StatusCode::kFailedPrecondition);
  EXPECT_STATUS(host->ReleaseAfter(stream_), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(host->valid());  // kept on error
}

TEST_F(GpuEngineTest, DirtyGpuCopiesRoundTripThroughHostAndNvme) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/8, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 4);
  for (uint64_t b = 0; b < 4; ++b) WriteGpu(t, b, 7);
  ASSERT_OK(engine_->Flush(t));  // GPU -> staging -> NVMe
  EXPECT_GE(Of(Tier::kNvme).bytes_in, 4 * kBlock);
  for (uint64_t b = 0; b < 4; ++b) ExpectHost(t, b, 7);
  // A write on the host makes the GPU copy stale; the GPU loads it again.
  WriteHost(t, 2, 8);
  ExpectGpu(t, 2, 8);
  ExpectGpu(t, 3, 7);
}

// Host is the lowest tier here (no NVMe): Flush still writes the GPU's
// dirty copies down to it (found on the GPU machine: gpu_bench's
// BM_GpuDemote measured a Flush that moved nothing).
TEST_F(GpuEngineTest, FlushWritesDirtyGpuCopiesToHostWhenHostIsLowest) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/8, /*host_blocks=*/16, /*with_nvme=*/false));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 4);
  for (uint64_t b = 0; b < 4; ++b) WriteGpu(t, b, 3);
  const uint64_t out0 = Of(Tier::kGpu).bytes_out;
  const uint64_t written0 = Of(Tier::kGpu).write_backs;
  ASSERT_OK(engine_->Flush(t));
  EXPECT_EQ(Of(Tier::kGpu).bytes_out - out0, 4 * kBlock);
  EXPECT_EQ(Of(Tier::kGpu).write_backs - written0, 4u);
  for (uint64_t b = 0; b < 4; ++b) ExpectHost(t, b, 3);
  // Clean now: a second Flush has nothing to move.
  ASSERT_OK(engine_->Flush(t));
  EXPECT_EQ(Of(Tier::kGpu).bytes_out - out0, 4 * kBlock);
}

TEST_F(GpuEngineTest, PromotionsAndDemotionsOverlap) {
  // gpu_bench's BM_GpuPromoteDemote, small: one tensor comes up while the
  // other's dirty copies go down, on a GPU that holds only one of them.
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/10, /*host_blocks=*/24, /*with_nvme=*/false));
  stream_ = dev_->CreateStream();
  Tensor a = Make("a", 8);
  Tensor b = Make("b", 8);
  for (uint64_t i = 0; i < 8; ++i) WriteHost(b, i, 1);
  for (uint64_t i = 0; i < 8; ++i) WriteGpu(a, i, 2);
  auto up = engine_->Prefetch(b, BlockRange::All(), Tier::kGpu);
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_OK(engine_->Flush(a));
  ASSERT_OK(up->Wait());
  for (uint64_t i = 0; i < 8; ++i) ExpectHost(a, i, 2);
  for (uint64_t i = 0; i < 8; ++i) ExpectGpu(b, i, 1);
  EXPECT_GE(dev_->copies(CopyDir::kDeviceToHost), 8u);
}

TEST_F(GpuEngineTest, ATrainingLoopOverGpuPinsKeepsEveryUpdate) {
  // offload_train --gpu's shape: per block, the next block prefetched,
  // write pins of three tensors, a kernel on each, stream-ordered unpins;
  // the state is 3x the GPU, so dirty blocks keep going down and up.
  constexpr uint64_t kBlocks = 6;
  constexpr int kSteps = 3;
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/6, /*host_blocks=*/8));
  stream_ = dev_->CreateStream();
  const Tensor ts[3] = {Make("p", kBlocks), Make("m", kBlocks), Make("v", kBlocks)};
  for (int k = 0; k < 3; ++k) {
    for (uint64_t b = 0; b < kBlocks; ++b) {
      auto pin = engine_->Pin(ts[k], b, Tier::kHost, Access::kOverwrite);
      ASSERT_TRUE(pin.ok()) << pin.status();
      std::ranges::fill(pin->as<uint32_t>(), static_cast<uint32_t>(1000 * k + b));
    }
  }
  auto bump = [](std::span<std::byte> mem) {
    for (size_t i = 0; i + 4 <= mem.size(); i += 4) {
      uint32_t w;
      std::memcpy(&w, mem.data() + i, 4);
      ++w;
      std::memcpy(mem.data() + i, &w, 4);
    }
  };
  for (int step = 0; step < kSteps; ++step) {
    for (uint64_t b = 0; b < kBlocks; ++b) {
      for (int k = 0; k < 3 && b + 1 < kBlocks; ++k) {
        ASSERT_OK(engine_->Prefetch(ts[k], BlockRange::One(b + 1), Tier::kGpu).status());
      }
      for (int k = 0; k < 3; ++k) {
        auto pin = engine_->Pin(ts[k], b, Tier::kGpu, Access::kWrite);
        ASSERT_TRUE(pin.ok()) << pin.status();
        ASSERT_OK(pin->WaitOn(stream_));
        ASSERT_OK(dev_->Launch(stream_, pin->device_ptr(), pin->size(), bump));
        ASSERT_OK(pin->ReleaseAfter(stream_));
      }
    }
  }
  for (int k = 0; k < 3; ++k) {
    for (uint64_t b = 0; b < kBlocks; ++b) {
      auto pin = engine_->Pin(ts[k], b, Tier::kHost, Access::kRead);
      ASSERT_TRUE(pin.ok()) << pin.status();
      const uint32_t want = static_cast<uint32_t>(1000 * k + b + kSteps);
      EXPECT_EQ(std::ranges::count(pin->as<uint32_t>(), want),
                static_cast<std::ptrdiff_t>(pin->size() / 4))
          << "tensor " << k << " block " << b;
    }
  }
  EXPECT_GT(Of(Tier::kGpu).write_backs, 0u);
}

TEST_F(GpuEngineTest, EvictionUnderVramPressureLosesNothing) {
  // The working set is 10x the GPU's budget and 2.5x the host's.
  constexpr uint64_t kBlocks = 40;
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", kBlocks);
  for (uint64_t b = 0; b < kBlocks; ++b) WriteGpu(t, b, 1);
  for (uint64_t b = 0; b < kBlocks; b += 3) WriteGpu(t, b, 2);
  const uint64_t nvme_out = Of(Tier::kNvme).bytes_out;
  for (uint64_t b = 0; b < kBlocks; ++b) ExpectGpu(t, b, b % 3 == 0 ? 2 : 1);
  // The host holds 16 of the 40 blocks: the rest came NVMe -> host staging
  // buffer -> GPU.
  EXPECT_GE(Of(Tier::kNvme).bytes_out - nvme_out, (kBlocks - 16) * kBlock);
  for (uint64_t b = 0; b < kBlocks; ++b) ExpectHost(t, b, b % 3 == 0 ? 2 : 1);
  const TierStats gpu = Of(Tier::kGpu);
  EXPECT_GT(gpu.evictions, 0u);
  EXPECT_GE(gpu.write_backs, kBlocks - 4);  // dirty copies went down first
  EXPECT_LE(gpu_->used(), 4 * kBlock);
}

TEST_F(GpuEngineTest, RefusedFramesAreRetriedThenTakenFromEvictedCopies) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 8);
  for (uint64_t b = 0; b < 8; ++b) WriteHost(t, b, 1);
  for (uint64_t b = 0; b < 2; ++b) ExpectGpu(t, b, 1);
  // The next frame asked of the pool is refused (out of device memory):
  // the engine asks again and gets one.
  dev_->RefuseNthFrame(1);
  ExpectGpu(t, 2, 1);
  EXPECT_EQ(dev_->frames_refused(), 1u);
  // Every new frame refused (the device out of memory): the pin takes the
  // frame of an unpinned copy it evicts, as a pin short of space does.
  // (Once the frames it evicted went back to the device and the pin failed;
  // with nothing left to evict it does: OutOfDeviceMemoryWithEveryFrame-
  // PinnedIsResourceExhausted.)
  dev_->RefuseNthFrame(1, /*every=*/true);
  const uint64_t evictions = Of(Tier::kGpu).evictions;
  ExpectGpu(t, 3, 1);
  EXPECT_GT(Of(Tier::kGpu).evictions, evictions);
  // The device recovered: every block loads and reads right.
  dev_->RefuseNthFrame(0);
  for (uint64_t b = 0; b < 8; ++b) ExpectGpu(t, b, 1);
}

TEST_F(GpuEngineTest, OutOfDeviceMemoryWithEveryFramePinnedIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/2, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 4);
  for (uint64_t b = 0; b < 4; ++b) WriteHost(t, b, 1);
  auto p0 = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
  auto p1 = engine_->Pin(t, 1, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(p0.ok() && p1.ok());
  auto p2 = engine_->Pin(t, 2, Tier::kGpu, Access::kRead);
  EXPECT_STATUS(p2, StatusCode::kResourceExhausted);
  EXPECT_NE(p2.status().message().find("tier gpu"), std::string::npos) << p2.status();
  EXPECT_NE(p2.status().message().find("gpu.capacity_bytes"), std::string::npos);
  EXPECT_NE(p2.status().message().find(std::to_string(2 * kBlock) + " bytes"),
            std::string::npos) << p2.status();
  // Every new frame refused (the device out of memory): an unpinned copy
  // is evicted and its frame reused; then nothing is left to evict.
  ASSERT_OK(p1->Release());
  dev_->RefuseNthFrame(1, /*every=*/true);
  auto p3 = engine_->Pin(t, 3, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(p3.ok()) << p3.status();
  EXPECT_GE(Of(Tier::kGpu).evictions, 1u);
  EXPECT_STATUS(engine_->Pin(t, 2, Tier::kGpu, Access::kRead),
                StatusCode::kResourceExhausted);
  dev_->RefuseNthFrame(0);
  ASSERT_OK(p0->Release());
  ASSERT_OK(p3->Release());
  // The device still works: the next pins and kernels run.
  ExpectGpu(t, 2, 1);
  ExpectGpu(t, 1, 1);
}

TEST_F(GpuEngineTest, AStickyErrorFencesTheGpuAndTheOtherTiersGoOn) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 6);
  WriteGpu(t, 0, 1);  // dirty on the GPU only
  for (uint64_t b = 1; b < 6; ++b) WriteHost(t, b, 1);
  dev_->InjectStickyError(absl::InternalError(
      "cudaEventSynchronize: cudaErrorIllegalAddress (an illegal memory access)"));
  // The first GPU call meets the error; every later one is refused.
  auto pin = engine_->Pin(t, 2, Tier::kGpu, Access::kRead);
  EXPECT_FALSE(pin.ok());
  EXPECT_STATUS(gpu_->fenced(), StatusCode::kInternal);
  auto again = engine_->Pin(t, 3, Tier::kGpu, Access::kRead);
  EXPECT_STATUS(again, StatusCode::kFailedPrecondition);
  // The block whose only copy was on the GPU is reported, never zeros.
  absl::Status flush = engine_->Flush(t);
  EXPECT_FALSE(flush.ok());
  // Host and NVMe keep working.
  for (uint64_t b = 1; b < 6; ++b) ExpectHost(t, b, 1);
  Tensor u = Make("u", 2);
  WriteHost(u, 0, 3);
  ASSERT_OK(engine_->Flush(u));
  ExpectHost(u, 0, 3);
}

TEST_F(GpuEngineTest, AFrameIsNotReusedBeforeTheUnpinningStreamFinished) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  WriteHost(t, 1, 1);
  // A kernel still queued behind earlier work reads block 0's frame.
  dev_->Hold(stream_);
  std::vector<std::byte> kernel_saw;
  {
    auto pin = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    ASSERT_OK(pin->WaitOn(stream_));
    ASSERT_OK(dev_->Launch(stream_, pin->device_ptr(), pin->size(),
                           [&](std::span<std::byte> mem) {
                             kernel_saw.assign(mem.begin(), mem.end());
                           }));
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  // Block 1 needs the only frame: block 0 is evicted, but the copy into
  // its frame waits (on the device) for the kernel.
  std::atomic<bool> pinned{false};
  std::thread other = PinOnAThread(t, 1, pinned);
  EXPECT_TRUE(dev_->AwaitWaiters(1, kPatience));
  EXPECT_FALSE(pinned.load());
  EXPECT_EQ(dev_->copies(CopyDir::kHostToDevice), 1u);  // block 0's only
  dev_->Release(stream_);
  other.join();
  EXPECT_TRUE(pinned.load());
  EXPECT_EQ(FirstPatternMismatch(kernel_saw, Seed(RunTag(), 0, 1)), -1)
      << "the kernel saw its frame overwritten; run tag " << RunTag();
  ExpectGpu(t, 1, 1);
}

// A block read by kernels on two streams (a Python view handed to two
// consumers): the frame waits for both, whichever finishes first. One of
// them is CUDA's legacy default stream, by its handle (cudaStreamLegacy,
// 0x1), as DLPack names it.
class GpuReleaseAfterTwoStreamsTest : public GpuEngineTest,
                                      public ::testing::WithParamInterface<int> {};

TEST_P(GpuReleaseAfterTwoStreamsTest, TheFrameWaitsForBoth) {
  const int first_done = GetParam();
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/16));
  const tiers::DeviceStream streams[] = {dev_->CreateStream(),
                                         reinterpret_cast<tiers::DeviceStream>(1)};
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  WriteHost(t, 1, 1);
  std::vector<std::byte> saw[2];
  {
    auto pin = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    for (int i = 0; i < 2; ++i) {
      dev_->Hold(streams[i]);
      ASSERT_OK(pin->WaitOn(streams[i]));
      ASSERT_OK(dev_->Launch(streams[i], pin->device_ptr(), pin->size(),
                             [&saw, i](std::span<std::byte> mem) {
                               saw[i].assign(mem.begin(), mem.end());
                             }));
    }
    ASSERT_OK(pin->ReleaseAfter(streams));
    EXPECT_FALSE(pin->valid());
  }
  std::atomic<bool> pinned{false};
  std::thread other = PinOnAThread(t, 1, pinned);
  EXPECT_TRUE(dev_->AwaitWaiters(1, kPatience));
  dev_->Release(streams[first_done]);  // one reader done: the frame waits on
  EXPECT_FALSE(pinned.load());
  EXPECT_EQ(dev_->copies(CopyDir::kHostToDevice), 1u);  // block 0's only
  dev_->Release(streams[1 - first_done]);
  other.join();
  EXPECT_TRUE(pinned.load());
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(FirstPatternMismatch(saw[i], Seed(RunTag(), 0, 1)), -1)
        << "the kernel on stream " << i << " saw its frame overwritten; run tag "
        << RunTag();
  }
  ExpectGpu(t, 1, 1);
}

INSTANTIATE_TEST_SUITE_P(WhicheverFinishesFirst, GpuReleaseAfterTwoStreamsTest,
                         ::testing::Values(0, 1));

// Readahead into a tier of one frame can only evict the block the reader
// holds or has just released: it loaded blocks twice, and a pin could find
// the only frame taken by the speculative load (kResourceExhausted). Such a
// tier reads nothing ahead.
TEST_F(GpuEngineTest, ASequentialScanOfAOneFrameTierLoadsEachBlockOnce) {
  readahead_ = -1;  // automatic, as Python's engines have it
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/40));
  constexpr uint64_t kBlocks = 32;
  Tensor t = Make("t", kBlocks);
  for (uint64_t b = 0; b < kBlocks; ++b) WriteHost(t, b, 1);
  for (uint64_t b = 0; b < kBlocks; ++b) ExpectGpu(t, b, 1);
  ASSERT_OK(engine_->Close());  // nothing left in flight
  EXPECT_EQ(dev_->copies(CopyDir::kHostToDevice), kBlocks);
  EXPECT_EQ(Of(Tier::kGpu).misses, kBlocks);
}

// A prefetch that takes a tier's only free frame counts it in transit from
// before it takes it: a pin that finds no frame meanwhile waits for the
// load (and then evicts its block) instead of failing with
// kResourceExhausted because it looked between the two.
TEST_F(GpuEngineTest, APinNeverFailsForAFrameAPrefetchIsTaking) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/16));
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  WriteHost(t, 1, 1);
  std::atomic<bool> stop{false};
  std::thread prefetcher([&] {
    for (uint64_t i = 0; !stop.load(); ++i) {
      const uint64_t block[] = {i % 2};
      auto h = engine_->PrefetchBlocks(t, block, Tier::kGpu);
      if (h.ok()) (void)h->Wait();  // speculative: may lose to the pins
    }
  });
  int failed = 0;
  absl::Status first;
  for (int i = 0; i < 4000; ++i) {
    auto pin = engine_->Pin(t, i % 2, Tier::kGpu, Access::kRead);
    if (!pin.ok() && failed++ == 0) first = pin.status();
  }
  stop.store(true);
  prefetcher.join();
  EXPECT_EQ(failed, 0) << "first: " << first;
}

TEST_F(GpuEngineTest, ReleaseAfterNoStreamUnpinsAtOnceAndOtherTiersRefuse) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/2, /*host_blocks=*/16));
  Tensor t = Make("t", 1);
  WriteHost(t, 0, 2);
  auto pin = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(Of(Tier::kGpu).pinned_bytes, kBlock);
  ASSERT_OK(pin->ReleaseAfter(std::span<const GpuStream>()));
  EXPECT_EQ(Of(Tier::kGpu).pinned_bytes, 0u);
  EXPECT_STATUS(pin->ReleaseAfter(std::span<const GpuStream>()),
                StatusCode::kFailedPrecondition);
  auto host = engine_->Pin(t, 0, Tier::kHost, Access::kRead);
  ASSERT_TRUE(host.ok()) << host.status();
  const GpuStream one[] = {nullptr};
  EXPECT_STATUS(host->ReleaseAfter(one), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(host->valid());  // kept on error
}

// The GPU tier built by the engine's own factory over a device given in
// place of CUDA's (what the Python tests use): works in builds without CUDA.
TEST_F(GpuEngineTest, TheFactoryBuildsTheGpuTierOverAGivenDevice) {
  EngineOptions o = test::GpuEngineOptions(dir_.Sub("nvme"), 16 * kBlock, kBlock, true);
  o.gpu.capacity_bytes = 4 * kBlock;
  auto dev = std::make_shared<FakeGpuDevice>(64 * kMiB);
  internal::TierOverrides overrides;
  overrides.gpu_device = dev;
  auto engine = testing::OpenWithTiers(std::move(o), std::move(overrides));
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ(dev->registered_bytes(), 16 * kBlock);
  EXPECT_EQ((*engine)->GetStats().tier(Tier::kGpu).capacity_bytes, 4 * kBlock);
  Tensor t = test::MakeBlocks(**engine, "t", 1, kBlock);
  test::WriteHostBlock(**engine, t, 0, 7);
  auto pin = (*engine)->Pin(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(FirstPatternMismatch(dev->Peek(pin->device_ptr(), pin->size()),
                                 Seed(RunTag(), 0, 7)),
            -1);
}

TEST_F(GpuEngineTest, ADemotionWaitsForTheKernelThatWroteTheBlock) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 1);
  dev_->Hold(stream_);  // the writing kernel has not run yet
  WriteGpu(t, 0, 5);
  std::atomic<bool> flushed{false};
  absl::Status flush;
  std::thread flusher([&] {
    flush = engine_->Flush(t);
    flushed.store(true);
  });
  EXPECT_TRUE(dev_->AwaitWaiters(1, kPatience));  // the copy out waits
  EXPECT_FALSE(flushed.load());
  dev_->Release(stream_);
  flusher.join();
  ASSERT_OK(flush);
  ExpectHost(t, 0, 5);  // the kernel's bytes, not the frame's old ones
}

TEST_F(GpuEngineTest, DeferredFramesComeBackWhenTheirStreamsFinish) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/2, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  dev_->Hold(stream_);
  {
    auto pin = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok());
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  // Dropping the tensor frees the frame; the pool takes it back only once
  // the stream got past the unpin.
  ASSERT_OK(engine_->DropTensor(t));
  EXPECT_EQ(gpu_->deferred_frames(), 1u);
  dev_->Release(stream_);
  auto whole = gpu_->Allocate(2 * kBlock);  // reaps, then fits
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(gpu_->deferred_frames(), 0u);
  gpu_->Free(*whole);
}

// ---------------------------------------------------------------------------
// PinAsync: a GPU read pin granted once its copy is enqueued. The double's
// held host-to-device stream stands for a copy still running.

// Whether some thread waits on the copy of `b` in `tier` (a pin parked on
// it), within kPatience.
bool AwaitCopyWaiters(Engine& engine, const Tensor& t, Tier tier, uint64_t b) {
  const absl::Time until = absl::Now() + kPatience;
  while (!internal::EngineCore::Of(engine).CopyHasWaiters(t, tier, b)) {
    if (absl::Now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST_F(GpuEngineTest, PinAsyncReturnsBeforeTheCopyAndTheStreamWaitsForIt) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/8, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  tiers::DeviceStream h2d = dev_->copy_stream(CopyDir::kHostToDevice);
  dev_->Hold(h2d);  // the copy into VRAM is enqueued, and does not run
  // Everything below returns while the copy has not run: the CPU never
  // waits for it (a wait would end in kDeadlineExceeded, not here).
  auto pin = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(dev_->copies(CopyDir::kHostToDevice), 0u);
  ASSERT_OK_AND_ASSIGN(GpuEvent ready, pin->ready_event());
  ASSERT_OK_AND_ASSIGN(bool done, dev_->Query(ready));
  EXPECT_FALSE(done);
  std::vector<std::byte> kernel_saw;
  ASSERT_OK(pin->WaitOn(stream_));
  ASSERT_OK(dev_->Launch(stream_, pin->device_ptr(), pin->size(),
                         [&](std::span<std::byte> mem) {
                           kernel_saw.assign(mem.begin(), mem.end());
                         }));
  EXPECT_TRUE(kernel_saw.empty());  // ordered after the copy
  // A second asynchronous pin of the copy in flight: at once, same event.
  auto again = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_OK_AND_ASSIGN(GpuEvent ready_again, again->ready_event());
  EXPECT_EQ(ready_again, ready);
  EXPECT_EQ(again->device_ptr(), pin->device_ptr());
  ASSERT_OK(again->Release());
  // A plain pin never gets a copy in flight: TryPin declines, Pin waits.
  auto tried = engine_->TryPin(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(tried.ok()) << tried.status();
  EXPECT_FALSE(tried->has_value());
  std::atomic<bool> pinned{false};
  absl::Status plain;
  std::thread other([&] {
    auto p = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
    plain = p.status();
    pinned.store(true);
  });
  EXPECT_TRUE(AwaitCopyWaiters(*engine_, t, Tier::kGpu, 0));
  EXPECT_FALSE(pinned.load());
  ASSERT_OK(pin->ReleaseAfter(stream_));  // also before the copy ran
  dev_->Release(h2d);
  other.join();
  ASSERT_OK(plain);
  EXPECT_EQ(FirstPatternMismatch(kernel_saw, Seed(RunTag(), 0, 1)), -1)
      << "the kernel ran before the copy, or saw other bytes; run tag " << RunTag();
  EXPECT_EQ(Of(Tier::kGpu).misses + Of(Tier::kGpu).hits, 3u);
  // A resident copy: PinAsync is Pin, its event complete.
  auto resident = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(resident.ok()) << resident.status();
  ASSERT_OK(resident->Synchronize());
  ASSERT_OK_AND_ASSIGN(GpuEvent landed, resident->ready_event());
  ASSERT_OK_AND_ASSIGN(done, dev_->Query(landed));
  EXPECT_TRUE(done);
}

TEST_F(GpuEngineTest, PinAsyncFromNvmeStagesThenDoesNotWaitForTheLastCopy) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/2));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 4);
  for (uint64_t b = 0; b < 4; ++b) WriteHost(t, b, 2);
  ASSERT_OK(engine_->Flush(t));
  // The host holds two blocks: block 0 is on NVMe only by now.
  for (uint64_t b = 2; b < 4; ++b) ExpectHost(t, b, 2);
  dev_->Hold(dev_->copy_stream(CopyDir::kHostToDevice));
  auto on_host = engine_->TryPin(t, 0, Tier::kHost, Access::kRead);
  ASSERT_TRUE(on_host.ok()) << on_host.status();
  ASSERT_FALSE(on_host->has_value()) << "block 0 should be on NVMe only";
  auto pin = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(dev_->copies(CopyDir::kHostToDevice), 0u);  // not waited for
  dev_->Release(dev_->copy_stream(CopyDir::kHostToDevice));
  ASSERT_OK(pin->Synchronize());
  ASSERT_OK(pin->Release());
  ExpectGpu(t, 0, 2);
}

TEST_F(GpuEngineTest, ACopyInFlightIsNeitherEvictedNorItsFrameReused) {
  pin_wait_ = absl::Milliseconds(200);
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  WriteHost(t, 1, 1);
  tiers::DeviceStream h2d = dev_->copy_stream(CopyDir::kHostToDevice);
  dev_->Hold(h2d);
  {
    auto pin = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
  }  // unpinned, still in flight
  // Block 1 needs the only frame: the copy in flight is no victim, so the
  // pin finds none until its deadline (had block 0 been evicted, its
  // frame would be block 1's, and this pin would wait for its own copy).
  auto starved = engine_->Pin(t, 1, Tier::kGpu, Access::kRead);
  EXPECT_STATUS(starved, StatusCode::kDeadlineExceeded);
  EXPECT_NE(starved.status().message().find("no frame came free"), std::string::npos)
      << starved.status();
  EXPECT_EQ(Of(Tier::kGpu).evictions, 0u);
  dev_->Release(h2d);
  ExpectGpu(t, 0, 1);
  ExpectGpu(t, 1, 1);  // now block 0 goes
  EXPECT_EQ(Of(Tier::kGpu).evictions, 1u);
  // DropTensor of a copy in flight (no pin: not refused as pinned) waits
  // for the copy before it frees the frame.
  Tensor u = Make("u", 1);
  WriteHost(u, 0, 4);
  dev_->Hold(h2d);
  {
    auto pin = engine_->PinAsync(u, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
  }
  std::atomic<bool> dropped{false};
  absl::Status drop;
  std::thread dropper([&] {
    drop = engine_->DropTensor(u);
    dropped.store(true);
  });
  EXPECT_TRUE(AwaitCopyWaiters(*engine_, u, Tier::kGpu, 0));
  EXPECT_FALSE(dropped.load());
  dev_->Release(h2d);
  dropper.join();
  ASSERT_OK(drop);
}

TEST_F(GpuEngineTest, AFailedAsyncCopyReachesThePinAndTheBlockLoadsAgain) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/2, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 1);
  WriteHost(t, 0, 3);
  tiers::DeviceStream h2d = dev_->copy_stream(CopyDir::kHostToDevice);
  dev_->Hold(h2d);
  dev_->FailNthCopyWhenItRuns(1, absl::InternalError("cudaErrorUnknown (fake)"));
  auto pin = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_OK(pin->WaitOn(stream_));  // nobody knows yet
  dev_->Release(h2d);
  absl::Status copy = pin->Synchronize();
  EXPECT_STATUS(copy, StatusCode::kInternal);
  EXPECT_NE(copy.message().find("cudaErrorUnknown"), std::string::npos) << copy;
  EXPECT_NE(copy.message().find("pin the block again"), std::string::npos) << copy;
  EXPECT_STATUS(pin->ready_event(), StatusCode::kInternal);
  EXPECT_STATUS(pin->WaitOn(stream_), StatusCode::kInternal);
  EXPECT_EQ(Of(Tier::kGpu).errors, 1u);
  // Nobody else gets the failed copy; once released, the next pin drops it
  // and loads the block again, from the host copy the failure left intact.
  ASSERT_OK(pin->Release());
  ExpectGpu(t, 0, 3);
  ExpectHost(t, 0, 3);
  auto fresh = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ASSERT_OK(fresh->Synchronize());
  ASSERT_OK(fresh->WaitOn(stream_));
}

TEST_F(GpuEngineTest, AFailedAsyncCopyIsEvictedOnceReleased) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 5);
  WriteHost(t, 1, 5);
  dev_->FailNthCopyWhenItRuns(1, absl::InternalError("cudaErrorUnknown (fake)"));
  {
    auto pin = engine_->PinAsync(t, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    EXPECT_STATUS(pin->Synchronize(), StatusCode::kInternal);
  }
  ExpectGpu(t, 1, 5);  // takes the failed copy's frame
  EXPECT_EQ(Of(Tier::kGpu).evictions, 1u);
  ExpectGpu(t, 0, 5);
}

TEST_F(GpuEngineTest, PinAsyncOfOtherTiersAndWritePinsIsPin) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/2, /*host_blocks=*/16));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 6);
  auto host = engine_->PinAsync(t, 0, Tier::kHost, Access::kRead);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(FirstPatternMismatch(host->bytes(), Seed(RunTag(), 0, 6)), -1);
  EXPECT_STATUS(host->Synchronize(), StatusCode::kFailedPrecondition);
  ASSERT_OK(host->Release());
  auto write = engine_->PinAsync(t, 1, Tier::kGpu, Access::kWrite);
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_EQ(write->access(), Access::kWrite);
  ASSERT_OK_AND_ASSIGN(GpuEvent ready, write->ready_event());
  ASSERT_OK_AND_ASSIGN(bool done, dev_->Query(ready));
  EXPECT_TRUE(done);  // it waited, as Pin does
  ASSERT_OK(write->Release());
  EXPECT_STATUS(engine_->PinAsync(t, 9, Tier::kGpu, Access::kRead), StatusCode::kOutOfRange);
  EXPECT_STATUS(engine_->PinAsync(t, 0, Tier::kNvme, Access::kRead),
                StatusCode::kInvalidArgument);
}

TEST_F(GpuEngineTest, AsyncAndPlainPinsRaceWithEvictionAndHostWrites) {
  // Readers pin blocks of a tensor 3x the GPU, asynchronously or not, and
  // check them with a kernel ordered by WaitOn; a writer keeps rewriting
  // blocks on the host with the same bytes, which drops their GPU copies
  // (waiting for copies in flight). Every kernel must see the block's bytes.
  constexpr int kReaders = 3;
  // Per reader: the frame of its pin (or of its load in flight) and up to
  // two it released whose streams have not got there yet (ReleaseAfter
  // keeps them until then). With fewer frames than that a pin can meet
  // every frame pinned, loading or waiting for a stream, and gets
  // kResourceExhausted, which is the API's answer then: with 4 frames, in
  // about 1 run of 60 (and with 5, 1 of 120; with 9, 1 of 500, when
  // another pinner took the frames a reaping just gave back). So that
  // answer is counted, not failed, as long as nearly every pin succeeds;
  // any other error fails the test.
  constexpr uint64_t kGpuBlocks = 3 * kReaders;
  constexpr uint64_t kBlocks = 3 * kGpuBlocks;
  constexpr int kRounds = 150;
  ASSERT_NO_FATAL_FAILURE(Open(kGpuBlocks, /*host_blocks=*/kBlocks + 4));
  stream_ = dev_->CreateStream();
  Tensor t = Make("t", kBlocks);
  for (uint64_t b = 0; b < kBlocks; ++b) WriteHost(t, b, 1);
  std::atomic<int> bad{0};
  std::atomic<int> errors{0};
  std::atomic<int> full{0};  // kResourceExhausted: every frame busy
  absl::Mutex first_error_mu;
  std::string first_error;  // what the first failing call said
  auto error = [&](const absl::Status& s) {
    if (absl::IsResourceExhausted(s)) {
      full.fetch_add(1);
      return;
    }
    errors.fetch_add(1);
    absl::MutexLock lock(&first_error_mu);
    if (first_error.empty()) first_error = s.ToString();
  };
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      tiers::DeviceStream stream = dev_->CreateStream();
      std::mt19937_64 rng(Seed(RunTag(), 100 + r, 0));
      for (int i = 0; i < kRounds; ++i) {
        const uint64_t b = rng() % kBlocks;
        auto pin = (rng() & 1) ? engine_->PinAsync(t, b, Tier::kGpu, Access::kRead)
                               : engine_->Pin(t, b, Tier::kGpu, Access::kRead);
        if (!pin.ok()) {
          error(pin.status());
          continue;
        }
        if (absl::Status s = pin->WaitOn(stream); !s.ok()) {
          error(s);
          continue;
        }
        const uint64_t seed = Seed(RunTag(), b, 1);
        absl::Status launched = dev_->Launch(
            stream, pin->device_ptr(), pin->size(), [&bad, seed](std::span<std::byte> mem) {
              if (FirstPatternMismatch(mem, seed) != -1) bad.fetch_add(1);
            });
        if (!launched.ok()) error(launched);
        if (absl::Status s = pin->ReleaseAfter(stream); !s.ok()) error(s);
      }
    });
  }
  std::thread writer([&] {
    std::mt19937_64 rng(Seed(RunTag(), 200, 0));
    while (!stop.load()) {
      const uint64_t b = rng() % kBlocks;
      auto pin = engine_->Pin(t, b, Tier::kHost, Access::kWrite);
      if (!pin.ok()) {
        error(pin.status());
        continue;
      }
      test::FillPattern(pin->bytes(), Seed(RunTag(), b, 1));
    }
  });
  for (std::thread& th : readers) th.join();
  stop.store(true);
  writer.join();
  EXPECT_EQ(errors.load(), 0) << "the first: " << first_error;
  EXPECT_LE(full.load(), kReaders * kRounds / 20) << "pins refused for a full tier";
  EXPECT_EQ(bad.load(), 0) << "kernels saw other bytes; run tag " << RunTag();
  EXPECT_EQ(Of(Tier::kGpu).errors, 0u);
  for (uint64_t b = 0; b < kBlocks; ++b) ExpectGpu(t, b, 1);
}

TEST_F(GpuEngineTest, OpenRejectsBadGpuOptions) {
  EngineOptions o = test::SmallOptions(dir_.Sub("nvme"));
  o.tiers = {Tier::kGpu, Tier::kHost};
  o.gpu.capacity_bytes = 12345;
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.gpu.capacity_bytes = 0;
  o.gpu.capacity_fraction = 0;
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
  o.gpu.capacity_fraction = 0.5;
  o.gpu.device = -1;
  EXPECT_STATUS(Engine::Open(o), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata
