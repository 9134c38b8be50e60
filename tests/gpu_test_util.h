// What the two GPU suites share (gpu_tier_test over the device double,
// gpu_cuda_test on a GPU): fresh random data every run, tensors of whole
// blocks, and writing and checking a block's bytes from the host.
#ifndef STRATA_TESTS_GPU_TEST_UTIL_H_
#define STRATA_TESTS_GPU_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "api/strata/strata.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace strata::test {

// Seeds every pattern of this run (tests print it on failure).
inline uint64_t RunTag() {
  static const uint64_t tag = std::random_device{}() | 1;
  return tag;
}

// The seed of version `v` of block `b` in this run.
inline uint64_t BlockSeed(uint64_t b, uint64_t v) { return Seed(RunTag(), b, v); }

// The GPU over host (`host_bytes`) and, `with_nvme`, NVMe in `nvme_dir`;
// blocks of `block_bytes`, LRU and no readahead, so that a test decides
// what is where. The GPU's capacity is the caller's (options, or the tier
// it brings).
inline EngineOptions GpuEngineOptions(const std::string& nvme_dir, uint64_t host_bytes,
                                      uint64_t block_bytes, bool with_nvme = true) {
  EngineOptions o = SmallOptions(nvme_dir, host_bytes, block_bytes);
  o.tiers = with_nvme ? std::vector<Tier>{Tier::kGpu, Tier::kHost, Tier::kNvme}
                      : std::vector<Tier>{Tier::kGpu, Tier::kHost};
  o.policy = "lru";
  o.readahead_blocks = 0;
  return o;
}

inline Tensor MakeBlocks(Engine& engine, const std::string& name,
                         uint64_t blocks, uint64_t block_bytes) {
  auto t = engine.CreateTensor(
      name, {.dtype = DType::kU8, .shape = {static_cast<int64_t>(blocks * block_bytes)},
             .block_bytes = block_bytes});
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : Tensor();
}

// Writes version `v` of block `b` from the host.
inline void WriteHostBlock(Engine& engine, const Tensor& t, uint64_t b, uint64_t v) {
  auto pin = engine.Pin(t, b, Tier::kHost, Access::kOverwrite);
  ASSERT_TRUE(pin.ok()) << pin.status();
  FillPattern(pin->bytes(), BlockSeed(b, v));
}

inline void ExpectHostBlock(Engine& engine, const Tensor& t, uint64_t b, uint64_t v) {
  auto pin = engine.Pin(t, b, Tier::kHost, Access::kRead);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(FirstPatternMismatch(pin->bytes(), BlockSeed(b, v)), -1)
      << "block " << b << " version " << v << " on host; run tag " << RunTag();
}

}  // namespace strata::test

#endif  // STRATA_TESTS_GPU_TEST_UTIL_H_
