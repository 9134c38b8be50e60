// The GPU tier on a real GPU (suite gpu; built with -Dcuda): the engine's
// own CUDA device, the pool, both copy streams, stream-ordered unpins
// against a kernel still running, out of VRAM, and a sticky error. Every
// test skips when the machine has no usable GPU. The same behaviours run
// in CI over the device double (tests/gpu_tier_test.cpp).
//
// The sticky-error test kills the process's CUDA context, so it runs in a
// process of its own: meson registers this program twice (gpu_cuda_test
// with --gtest_filter=-*Sticky*, gpu_cuda_sticky_test with *Sticky*).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "api/strata/strata.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/gpu_kernels.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"
#include "tiers/gpu/cuda_device.h"

namespace strata {
namespace {

using ::absl::StatusCode;
using test::kMiB;
using test::RunTag;
using test::Seed;

constexpr uint64_t kBlock = 2 * kMiB;

bool HaveGpu(std::string* why) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
    return false;
  }
  return true;
}

#define CUDA_OK(expr)                                                   \
  do {                                                                  \
    const int strata_cuda_e = static_cast<int>(expr);                   \
    ASSERT_EQ(strata_cuda_e, 0)                                         \
        << #expr << ": "                                                \
        << cudaGetErrorString(static_cast<cudaError_t>(strata_cuda_e)); \
  } while (0)

class GpuCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!HaveGpu(&why)) GTEST_SKIP() << "no usable GPU here (" << why << ")";
    ASSERT_TRUE(dir_.ok());
    CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&mismatches_), sizeof(unsigned long long)));
  }
  void TearDown() override {
    engine_.reset();
    if (mismatches_ != nullptr) (void)cudaFree(mismatches_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  void Open(uint64_t gpu_blocks, uint64_t host_blocks) {
    EngineOptions o = test::GpuEngineOptions(dir_.Sub("nvme"), host_blocks * kBlock, kBlock);
    o.nvme.capacity_bytes = 1024 * kMiB;
    o.gpu.capacity_bytes = gpu_blocks * kBlock;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
  }
  Tensor Make(const std::string& name, uint64_t blocks) {
    return test::MakeBlocks(*engine_, name, blocks, kBlock);
  }
  void WriteHost(const Tensor& t, uint64_t b, uint64_t v) {
    test::WriteHostBlock(*engine_, t, b, v);
  }
  void WriteGpu(const Tensor& t, uint64_t b, uint64_t v) {
    auto pin = engine_->Pin(t, b, Tier::kGpu, Access::kOverwrite);
    ASSERT_TRUE(pin.ok()) << pin.status();
    CUDA_OK(test::LaunchFillPattern(pin->device_ptr(), pin->size(),
                                    Seed(RunTag(), b, v), stream_));
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  // Mismatching words of `device` against (b, v), counted by a kernel.
  uint64_t Mismatches(const void* device, uint64_t bytes, uint64_t b, uint64_t v) {
    unsigned long long host = ~0ull;
    if (cudaMemsetAsync(mismatches_, 0, sizeof(host), stream_) != cudaSuccess ||
        test::LaunchCountMismatches(device, bytes, Seed(RunTag(), b, v), mismatches_,
                                    stream_) != 0 ||
        cudaMemcpyAsync(&host, mismatches_, sizeof(host), cudaMemcpyDeviceToHost,
                        stream_) != cudaSuccess ||
        cudaStreamSynchronize(stream_) != cudaSuccess) {
      return ~0ull;
    }
    return host;
  }
  void ExpectGpu(const Tensor& t, uint64_t b, uint64_t v) {
    auto pin = engine_->Pin(t, b, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    ASSERT_OK(pin->WaitOn(stream_));
    EXPECT_EQ(Mismatches(pin->device_ptr(), pin->size(), b, v), 0u)
        << "block " << b << " version " << v << "; run tag " << RunTag();
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  void ExpectHost(const Tensor& t, uint64_t b, uint64_t v) {
    test::ExpectHostBlock(*engine_, t, b, v);
  }

  test::TempDir dir_;
  cudaStream_t stream_ = nullptr;
  unsigned long long* mismatches_ = nullptr;
  std::unique_ptr<Engine> engine_;
};

TEST_F(GpuCudaTest, PinsMatchHostCopiesBothWays) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/8, /*host_blocks=*/16));
  Tensor t = Make("t", 8);
  for (uint64_t b = 0; b < 4; ++b) WriteHost(t, b, 1);
  for (uint64_t b = 0; b < 4; ++b) ExpectGpu(t, b, 1);
  for (uint64_t b = 4; b < 8; ++b) WriteGpu(t, b, 2);
  ASSERT_OK(engine_->Flush(t));
  for (uint64_t b = 4; b < 8; ++b) ExpectHost(t, b, 2);
  auto pin = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(pin.ok());
  cudaPointerAttributes attr{};
  CUDA_OK(cudaPointerGetAttributes(&attr, pin->device_ptr()));
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  ASSERT_OK_AND_ASSIGN(GpuEvent ready, pin->ready_event());
  EXPECT_EQ(cudaEventQuery(static_cast<cudaEvent_t>(ready)), cudaSuccess);
}

// PinAsync returns once the copy into VRAM is enqueued; the kernel, ordered
// after the copy's event by WaitOn, reads the block's bytes. A third of the
// blocks come from NVMe (staged through host), and the GPU holds a third
// of them, so later pins evict earlier ones while their kernels are queued.
TEST_F(GpuCudaTest, PinAsyncThenWaitOnGivesKernelsTheBlocksBytes) {
  constexpr uint64_t kBlocks = 24;
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/8, /*host_blocks=*/16));
  Tensor t = Make("t", kBlocks);
  for (uint64_t b = 0; b < kBlocks; ++b) WriteHost(t, b, 1);
  ASSERT_OK(engine_->Flush(t));
  CUDA_OK(cudaMemsetAsync(mismatches_, 0, sizeof(unsigned long long), stream_));
  int pending_at_return = 0;
  for (uint64_t b = 0; b < kBlocks; ++b) {
    auto pin = engine_->PinAsync(t, b, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    ASSERT_OK_AND_ASSIGN(GpuEvent ready, pin->ready_event());
    pending_at_return +=
        cudaEventQuery(static_cast<cudaEvent_t>(ready)) == cudaErrorNotReady;
    ASSERT_OK(pin->WaitOn(stream_));
    CUDA_OK(test::LaunchCountMismatches(pin->device_ptr(), pin->size(),
                                        Seed(RunTag(), b, 1), mismatches_, stream_));
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  unsigned long long bad = ~0ull;
  CUDA_OK(cudaMemcpyAsync(&bad, mismatches_, sizeof(bad), cudaMemcpyDeviceToHost,
                          stream_));
  CUDA_OK(cudaStreamSynchronize(stream_));
  EXPECT_EQ(bad, 0u) << "kernels ordered by WaitOn saw other bytes; run tag " << RunTag();
  // How often the CPU went on before the copy finished (informational: a
  // fast copy may beat the query).
  RecordProperty("pending_at_return", pending_at_return);
  EXPECT_GE(engine_->GetStats().tier(Tier::kGpu).misses, kBlocks);
  EXPECT_EQ(engine_->GetStats().tier(Tier::kGpu).errors, 0u);
}

// A shared tensor's block promotes to VRAM from the node segment, whose
// mapping the engine registered with CUDA at Open (cudaHostRegister on a
// shm mapping: verified to work on the GPU machine).
TEST_F(GpuCudaTest, SharedBlocksPromoteFromTheRegisteredSegment) {
  EngineOptions o = test::GpuEngineOptions(dir_.Sub("nvme"), 16 * kBlock, kBlock);
  o.tiers = {Tier::kGpu, Tier::kHost, Tier::kShm};
  o.gpu.capacity_bytes = 8 * kBlock;
  o.shm.name = absl::StrCat("gpu-cuda-test-", getpid());
  o.shm.capacity_bytes = 16 * kBlock;
  auto e = Engine::Open(o);
  ASSERT_TRUE(e.ok()) << e.status();
  engine_ = std::move(e).value();
  struct Unlink {
    std::string name;
    ~Unlink() { (void)RemoveShmSegment(name); }
  } unlink{o.shm.name};
  auto t = engine_->CreateSharedTensor("shared", {.dtype = DType::kU8,
                                                  .shape = {static_cast<int64_t>(4 * kBlock)},
                                                  .block_bytes = kBlock});
  ASSERT_TRUE(t.ok()) << t.status();
  for (uint64_t b = 0; b < 4; ++b) {
    auto w = engine_->Pin(*t, b, Tier::kShm, Access::kOverwrite);
    ASSERT_TRUE(w.ok()) << w.status();
    test::FillPattern(w->bytes(), Seed(RunTag(), b, 1));
  }
  // The mapping is registered: CUDA knows its pages as host memory.
  auto s = engine_->Pin(*t, 0, Tier::kShm, Access::kRead);
  ASSERT_TRUE(s.ok()) << s.status();
  cudaPointerAttributes attr{};
  CUDA_OK(cudaPointerGetAttributes(&attr, s->bytes().data()));
  EXPECT_EQ(attr.type, cudaMemoryTypeHost) << "the segment's mapping is not registered";
  *s = Pin();
  for (uint64_t b = 0; b < 4; ++b) ExpectGpu(*t, b, 1);
}

TEST_F(GpuCudaTest, EvictionUnderVramPressureLosesNothing) {
  constexpr uint64_t kBlocks = 40;  // 10x the GPU's 4 blocks
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/16));
  Tensor t = Make("t", kBlocks);
  for (uint64_t b = 0; b < kBlocks; ++b) WriteGpu(t, b, 1);
  for (uint64_t b = 0; b < kBlocks; b += 3) WriteGpu(t, b, 2);
  for (uint64_t b = 0; b < kBlocks; ++b) ExpectGpu(t, b, b % 3 == 0 ? 2 : 1);
  for (uint64_t b = 0; b < kBlocks; ++b) ExpectHost(t, b, b % 3 == 0 ? 2 : 1);
  EXPECT_GT(engine_->GetStats().tier(Tier::kGpu).write_backs, 0u);
}

TEST_F(GpuCudaTest, AKernelStillReadingNeverSeesItsFrameOverwritten) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/1, /*host_blocks=*/8));
  Tensor t = Make("t", 2);
  WriteHost(t, 0, 1);
  WriteHost(t, 1, 1);
  void* out = nullptr;
  CUDA_OK(cudaMalloc(&out, kBlock));
  {
    auto pin = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    ASSERT_OK(pin->WaitOn(stream_));
    // Reads its frame 200 ms from now; the caller unpins at once.
    CUDA_OK(test::LaunchSpinThenCopy(pin->device_ptr(), out, kBlock, 200'000'000, stream_));
    ASSERT_OK(pin->ReleaseAfter(stream_));
  }
  // Block 1 takes the only frame while the kernel has not read it yet.
  {
    auto pin = engine_->Pin(t, 1, Tier::kGpu, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
  }
  EXPECT_EQ(Mismatches(out, kBlock, 0, 1), 0u)
      << "the kernel saw its frame overwritten; run tag " << RunTag();
  (void)cudaFree(out);
}

TEST_F(GpuCudaTest, OutOfVramIsResourceExhaustedAndTheNextKernelRuns) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/2, /*host_blocks=*/8));
  Tensor t = Make("t", 3);
  for (uint64_t b = 0; b < 3; ++b) WriteHost(t, b, 1);
  auto p0 = engine_->Pin(t, 0, Tier::kGpu, Access::kRead);
  auto p1 = engine_->Pin(t, 1, Tier::kGpu, Access::kRead);
  ASSERT_TRUE(p0.ok() && p1.ok());
  auto p2 = engine_->Pin(t, 2, Tier::kGpu, Access::kRead);
  EXPECT_STATUS(p2, StatusCode::kResourceExhausted);
  EXPECT_NE(p2.status().message().find("gpu.capacity_bytes"), std::string::npos);
  ASSERT_OK(p1->Release());
  ExpectGpu(t, 2, 1);
}

// Teardown never fails, but the first CUDA error met there is logged once,
// with its name and what was being torn down: here a pool that was never
// reserved (cudaFree of host memory: cudaErrorInvalidValue, not sticky).
TEST(GpuCudaDeviceTest, ATeardownErrorIsLoggedOnce) {
  std::string why;
  if (!HaveGpu(&why)) GTEST_SKIP() << "no usable GPU here (" << why << ")";
  std::vector<std::string> logged;  // outlives the device, which may log
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<tiers::GpuDevice> dev, tiers::OpenCudaDevice(0));
  dev->set_log([&logged](std::string_view m) { logged.emplace_back(m); });
  int not_device_memory[4] = {};
  dev->Unreserve(reinterpret_cast<std::byte*>(not_device_memory));
  dev->Unreserve(reinterpret_cast<std::byte*>(not_device_memory));
  ASSERT_EQ(logged.size(), 1u);
  EXPECT_NE(logged[0].find("cudaFree"), std::string::npos) << logged[0];
  EXPECT_NE(logged[0].find("releasing the pool"), std::string::npos) << logged[0];
  EXPECT_NE(logged[0].find("cudaErrorInvalidValue"), std::string::npos) << logged[0];
  // Cleared: the next call does not report it as its own.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_OK(dev->MemoryInfo().status());
}

TEST_F(GpuCudaTest, StickyErrorFencesTheGpuTierOnly) {
  ASSERT_NO_FATAL_FAILURE(Open(/*gpu_blocks=*/4, /*host_blocks=*/8));
  Tensor t = Make("t", 3);
  for (uint64_t b = 0; b < 3; ++b) WriteHost(t, b, 1);
  ExpectGpu(t, 0, 1);
  CUDA_OK(test::LaunchIllegalAccess(stream_));
  EXPECT_NE(cudaStreamSynchronize(stream_), cudaSuccess);
  // The engine meets the error on its next device call; later ones are
  // refused without touching CUDA.
  EXPECT_FALSE(engine_->Pin(t, 1, Tier::kGpu, Access::kRead).ok());
  EXPECT_STATUS(engine_->Pin(t, 2, Tier::kGpu, Access::kRead),
                StatusCode::kFailedPrecondition);
  for (uint64_t b = 0; b < 3; ++b) ExpectHost(t, b, 1);
  ASSERT_OK(engine_->Flush(t));
  stream_ = nullptr;  // dead with the context
  mismatches_ = nullptr;
}

}  // namespace
}  // namespace strata
