// Small tensors: frames sized to their blocks' bytes in every tier.
//
//   - Tensors of one element, of exactly one block, of one element past a
//     block boundary (one byte, for u8) and of an odd shape, in every dtype:
//     written, forced out to NVMe, read back exactly; the short last block
//     has its own size in Tensor::block_size and in the pin's bytes().
//   - Many small tensors whose bytes fit the host tier stay there: their
//     second pass hits.
//   - NVMe space follows the bytes: 1,000 tensors of 4 KiB take 4 MiB of
//     the NVMe tier, not 1,000 default blocks.
//
// Engines are small (host 8 MiB, 256 KiB default blocks, NVMe in a fresh
// temporary directory).
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "api/strata/strata.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace strata {
namespace {

using test::FillPattern;
using test::FirstPatternMismatch;
using test::kKiB;
using test::kMiB;
using test::Seed;
using test::SmallOptions;
using test::TempDir;

constexpr uint64_t kHost = 8 * kMiB;
constexpr uint64_t kBlock = 256 * kKiB;

// Writes the pattern of (tag, block, 1) into every block of `t`, checking
// that each pin has exactly the block's bytes.
void WriteTensor(Engine& e, const Tensor& t, uint64_t tag) {
  for (uint64_t b = 0; b < t.num_blocks(); ++b) {
    auto pin = e.Pin(t, b, Tier::kHost, Access::kOverwrite);
    ASSERT_TRUE(pin.ok()) << t.name() << " block " << b << ": " << pin.status();
    ASSERT_EQ(pin->bytes().size(), t.block_size(b)) << t.name() << " block " << b;
    FillPattern(pin->bytes(), Seed(tag, b, 1));
  }
}

// Reads every block of `t` back and compares it with its pattern.
void ExpectTensor(Engine& e, const Tensor& t, uint64_t tag) {
  for (uint64_t b = 0; b < t.num_blocks(); ++b) {
    auto pin = e.Pin(t, b, Tier::kHost, Access::kRead);
    ASSERT_TRUE(pin.ok()) << t.name() << " block " << b << ": " << pin.status();
    ASSERT_EQ(pin->bytes().size(), t.block_size(b)) << t.name() << " block " << b;
    EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(tag, b, 1)), -1)
        << t.name() << " block " << b << " read back other bytes";
  }
}

// Fills the host tier twice over with dirty blocks of another tensor, so
// that every earlier block is written back and evicted (LRU).
void FillHost(Engine& e, uint64_t host_bytes) {
  auto filler = e.CreateTensor(
      "filler", {.dtype = DType::kU8, .shape = {static_cast<int64_t>(2 * host_bytes)}});
  ASSERT_TRUE(filler.ok()) << filler.status();
  for (uint64_t b = 0; b < filler->num_blocks(); ++b) {
    auto pin = e.Pin(*filler, b, Tier::kHost, Access::kOverwrite);
    ASSERT_TRUE(pin.ok()) << "filler block " << b << ": " << pin.status();
    std::memset(pin->bytes().data(), 0x5A, pin->bytes().size());
  }
}

const char* DTypeLabel(DType d) {
  switch (d) {
    case DType::kU8: return "U8";
    case DType::kI8: return "I8";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI32: return "I32";
    case DType::kF32: return "F32";
    case DType::kI64: return "I64";
    case DType::kF64: return "F64";
  }
  return "Unknown";
}

class SmallTensorTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  TempDir dir_;
};

TEST_P(SmallTensorTest, ShortBlocksRoundTripThroughNvme) {
  const DType dtype = GetParam();
  const int64_t elem = static_cast<int64_t>(DTypeSize(dtype));
  ASSERT_GT(elem, 0);
  const int64_t per_block = static_cast<int64_t>(kBlock) / elem;
  EngineOptions options = SmallOptions(dir_.Sub("nvme"), kHost, kBlock);
  options.policy = "lru";          // the filler surely evicts every block
  options.readahead_blocks = 0;    // every read below is its own miss
  auto e = Engine::Open(options);
  ASSERT_TRUE(e.ok()) << e.status();

  struct Case {
    const char* name;
    std::vector<int64_t> shape;
    uint64_t blocks;     // expected
    uint64_t last_size;  // expected bytes of the last block
  };
  const uint64_t b = kBlock, el = static_cast<uint64_t>(elem);
  const int64_t odd_cols = per_block / 5 + 3;
  const uint64_t odd_bytes = 3 * 7 * static_cast<uint64_t>(odd_cols) * el;
  const std::vector<Case> cases = {
      {"one_element", {1}, 1, el},
      {"one_block", {per_block}, 1, b},
      {"one_element_past_a_block", {per_block + 1}, 2, el},
      {"odd_shape", {3, 7, odd_cols}, (odd_bytes + b - 1) / b,
       odd_bytes - (odd_bytes - 1) / b * b},
  };
  std::vector<Tensor> tensors;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    auto t = (*e)->CreateTensor(c.name, {.dtype = dtype, .shape = c.shape});
    ASSERT_TRUE(t.ok()) << c.name << ": " << t.status();
    EXPECT_EQ(t->block_bytes(), kBlock) << c.name;
    ASSERT_EQ(t->num_blocks(), c.blocks) << c.name;
    EXPECT_EQ(t->block_size(c.blocks - 1), c.last_size) << c.name;
    for (uint64_t k = 0; k + 1 < c.blocks; ++k) {
      EXPECT_EQ(t->block_size(k), kBlock) << c.name << " block " << k;
    }
    EXPECT_EQ(t->block_size(c.blocks), 0u) << c.name << ": past the last block";
    uint64_t sum = 0;
    for (uint64_t k = 0; k < c.blocks; ++k) sum += t->block_size(k);
    EXPECT_EQ(sum, t->size_bytes()) << c.name;
    ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, *t, i + 1));
    tensors.push_back(*t);
  }
  // A one-element tensor's pin holds exactly one element.
  {
    auto pin = (*e)->Pin(tensors[0], 0, Tier::kHost, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
    EXPECT_EQ(pin->bytes().size(), el);
    if (dtype == DType::kF64) {
      EXPECT_EQ(pin->as<double>().size(), 1u);
    }
  }

  ASSERT_NO_FATAL_FAILURE(FillHost(**e, kHost));
  const TierStats before = (*e)->GetStats().tier(Tier::kHost);
  uint64_t blocks = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, tensors[i], i + 1));
    blocks += tensors[i].num_blocks();
  }
  const TierStats after = (*e)->GetStats().tier(Tier::kHost);
  // Every block came back from NVMe (none was left in the host tier).
  EXPECT_EQ(after.misses - before.misses, blocks);
  EXPECT_EQ(after.errors, 0u);
  EXPECT_OK((*e)->Close());
}

INSTANTIATE_TEST_SUITE_P(EveryDType, SmallTensorTest,
                         ::testing::Values(DType::kU8, DType::kI8, DType::kF16,
                                           DType::kBF16, DType::kI32, DType::kF32,
                                           DType::kI64, DType::kF64),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeLabel(info.param));
                         });

// Small tensors of 4, 8 and 12 KiB whose bytes fill 95% of the host tier
// (frames sized by bytes: with frames of the default block size, 32 of them
// would fit), over NVMe with the default policy: written once and read
// twice, the second pass hits at least 99% of the time.
TEST(ManySmallTensors, ThatFitTheHostTierStayThere) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  auto e = Engine::Open(SmallOptions(dir.Sub("nvme"), kHost, kBlock));
  ASSERT_TRUE(e.ok()) << e.status();
  std::vector<Tensor> tensors;
  uint64_t bytes = 0;
  for (uint64_t i = 0;; ++i) {
    const int64_t elems = 1024 * static_cast<int64_t>(1 + i % 3);  // f32
    if (bytes + elems * 4 > kHost * 95 / 100) break;
    bytes += elems * 4;
    auto t = (*e)->CreateTensor("small." + std::to_string(i),
                                {.dtype = DType::kF32, .shape = {elems}});
    ASSERT_TRUE(t.ok()) << t.status();
    tensors.push_back(*t);
  }
  ASSERT_GT(tensors.size(), 10 * kHost / kBlock);
  for (size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, tensors[i], i + 1));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, tensors[i], i + 1));
  }
  const TierStats first = (*e)->GetStats().tier(Tier::kHost);
  for (size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, tensors[i], i + 1));
  }
  const TierStats second = (*e)->GetStats().tier(Tier::kHost);
  const uint64_t hits = second.hits - first.hits;
  const uint64_t misses = second.misses - first.misses;
  ASSERT_EQ(hits + misses, tensors.size());
  EXPECT_GE(hits * 100, (hits + misses) * 99)
      << hits << " hits and " << misses << " misses on the second pass over "
      << tensors.size() << " tensors of " << bytes << " bytes in a host tier of "
      << kHost << " bytes (" << second.evictions << " evictions)";
  EXPECT_OK((*e)->Close());
}

// 1,000 tensors of 4 KiB, written, evicted (the host tier holds a quarter
// of them) and flushed: the NVMe tier holds 1,000 frames of 4 KiB, and its
// file about that much disk, not 1,000 default blocks of 256 KiB.
TEST(ManySmallTensors, NvmeSpaceFollowsTheirBytes) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  constexpr uint64_t kSmallHost = 1 * kMiB;
  constexpr int kTensors = 1000;
  constexpr uint64_t kBytes = 4 * kKiB;
  auto e = Engine::Open(SmallOptions(dir.Sub("nvme"), kSmallHost, kBlock));
  ASSERT_TRUE(e.ok()) << e.status();
  std::vector<Tensor> tensors;
  for (int i = 0; i < kTensors; ++i) {
    auto t = (*e)->CreateTensor("t" + std::to_string(i),
                                {.dtype = DType::kBF16, .shape = {2048}});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, *t, i + 1));
    tensors.push_back(*t);
  }
  ASSERT_OK((*e)->FlushAll());
  const EngineStats stats = (*e)->GetStats();
  EXPECT_GE(stats.tier(Tier::kHost).evictions, kTensors - kSmallHost / kBytes)
      << "the host tier kept more than it holds";
  EXPECT_LE(stats.tier(Tier::kHost).used_bytes, kSmallHost);
  // Every tensor has its one frame of 4 KiB in NVMe (frames are rounded to
  // 4096 bytes, the I/O alignment of the file systems here).
  EXPECT_EQ(stats.tier(Tier::kNvme).used_bytes, kTensors * kBytes)
      << "default blocks would take " << kTensors * kBlock;
  struct stat st;
  const std::string file = dir.Sub("nvme") + "/blocks.strata";
  ASSERT_EQ(::stat(file.c_str(), &st), 0) << file << ": " << std::strerror(errno);
  const uint64_t disk = static_cast<uint64_t>(st.st_blocks) * 512;
  EXPECT_GE(disk, kTensors * kBytes) << "the file lacks blocks for its frames";
  // Preallocation runs ahead by at most 4 MiB at this size (nvme_tier.cc).
  EXPECT_LE(disk, kTensors * kBytes + 4 * kMiB + 64 * kKiB);
  for (int i = 0; i < kTensors; ++i) {
    ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, tensors[i], i + 1));
  }
  EXPECT_EQ((*e)->GetStats().tier(Tier::kNvme).errors, 0u);
  EXPECT_OK((*e)->Close());
}

// The host tier holds 128 tensors of 64 KiB (full); every other one is
// dropped, so half the tier is free in holes of 64 KiB, and the survivors
// are read in a shuffled order (the LRU order is unrelated to where they
// lie). A block of 256 KiB then fits only where two neighbours go: the
// engine evicts those two (one window of the arena), not survivors in the
// policy's order until two of them happen to be neighbours.
TEST(ManySmallTensors, FreeSpaceInPiecesEvictsOneWindow) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  constexpr uint64_t kSmall = 64 * kKiB;
  constexpr int kCount = static_cast<int>(kHost / kSmall);
  EngineOptions options = SmallOptions(dir.Sub("nvme"), kHost, kBlock);
  options.policy = "lru";
  options.readahead_blocks = 0;
  auto e = Engine::Open(options);
  ASSERT_TRUE(e.ok()) << e.status();
  std::vector<Tensor> tensors;
  for (int i = 0; i < kCount; ++i) {
    auto t = (*e)->CreateTensor("t" + std::to_string(i),
                                {.dtype = DType::kU8, .shape = {static_cast<int64_t>(kSmall)}});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, *t, i + 1));
    tensors.push_back(*t);
  }
  ASSERT_EQ((*e)->GetStats().tier(Tier::kHost).used_bytes, kHost);
  std::vector<int> survivors;
  for (int i = 0; i < kCount; ++i) {
    if (i % 2 == 1) {
      ASSERT_OK((*e)->DropTensor(tensors[i]));
    } else {
      survivors.push_back(i);
    }
  }
  uint64_t x = 12345;
  for (size_t i = survivors.size(); i > 1; --i) {
    x = test::Mix(x);
    std::swap(survivors[i - 1], survivors[x % i]);
  }
  for (int i : survivors) ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, tensors[i], i + 1));
  const TierStats before = (*e)->GetStats().tier(Tier::kHost);
  ASSERT_EQ(before.evictions, 0u);

  auto big = (*e)->CreateTensor("big", {.dtype = DType::kU8,
                                        .shape = {static_cast<int64_t>(4 * kSmall)}});
  ASSERT_TRUE(big.ok()) << big.status();
  ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, *big, 999));
  ASSERT_OK((*e)->Flush(*big));
  TierStats after;
  for (int i = 0; i < 2000; ++i) {
    after = (*e)->GetStats().tier(Tier::kHost);
    if (after.write_backs_in_flight == 0) break;
    usleep(1000);
  }
  EXPECT_EQ(after.evictions - before.evictions, 2u)
      << "placing 256 KiB in a tier with " << kHost / 2
      << " bytes free in holes of 64 KiB";
  ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, *big, 999));
  for (int i : survivors) ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, tensors[i], i + 1));
  EXPECT_OK((*e)->Close());
}

// Only small blocks in the host tier (4 KiB, where the default block is
// 256 KiB): free space is "in pieces" only for a block nobody asks for, so
// eviction follows the policy alone. Under LFU a hot set of 256 blocks,
// read ten times, survives a scan of four times the tier read once (the
// tier holds 2048 blocks). Evicting ahead by windows of the default block
// (which picks neighbours in the arena, not the policy's victims), or
// keeping a reserve of default blocks free, throws hot blocks out.
TEST(ManySmallTensors, SmallBlocksAloneAreEvictedByThePolicy) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  constexpr uint64_t kSmall = 4 * kKiB;
  constexpr uint64_t kHot = 256;
  constexpr uint64_t kBlocks = 4 * kHost / kSmall;
  EngineOptions options = SmallOptions(dir.Sub("nvme"), kHost, kBlock);
  options.policy = "lfu";
  options.readahead_blocks = 0;
  auto e = Engine::Open(options);
  ASSERT_TRUE(e.ok()) << e.status();
  auto t = (*e)->CreateTensor("emb", {.dtype = DType::kU8,
                                      .shape = {static_cast<int64_t>(kBlocks * kSmall)},
                                      .block_bytes = kSmall});
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, *t, 7));
  ASSERT_OK((*e)->Flush(*t));
  auto read = [&](uint64_t b) {
    auto pin = (*e)->Pin(*t, b, Tier::kHost, Access::kRead);
    ASSERT_TRUE(pin.ok()) << pin.status();
  };
  for (int i = 0; i < 10; ++i) {
    for (uint64_t b = 0; b < kHot; ++b) ASSERT_NO_FATAL_FAILURE(read(b));
  }
  for (uint64_t b = kHot; b < kBlocks; ++b) ASSERT_NO_FATAL_FAILURE(read(b));
  const TierStats before = (*e)->GetStats().tier(Tier::kHost);
  for (uint64_t b = 0; b < kHot; ++b) ASSERT_NO_FATAL_FAILURE(read(b));
  const TierStats after = (*e)->GetStats().tier(Tier::kHost);
  const uint64_t misses = after.misses - before.misses;
  EXPECT_LE(misses * 100, kHot) << misses << " of the " << kHot
                                << " hot blocks were evicted by a scan read once";
  EXPECT_OK((*e)->Close());
}

// Four threads create, write, read back and drop tensors of mixed sizes
// (4 KiB .. 1 MiB, blocks of up to 256 KiB) over a host tier a quarter of
// their live bytes: the host's free space is in pieces all the time, so
// window evictions race with pins, loads and drops of other threads. Every
// read sees the bytes last written; at the end the NVMe tier holds exactly
// the live blocks.
TEST(ManySmallTensors, MixedSizesUnderConcurrentChurn) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  EngineOptions options = SmallOptions(dir.Sub("nvme"), kHost, kBlock);
  options.nvme.capacity_bytes = 256 * kMiB;
  auto e = Engine::Open(options);
  ASSERT_TRUE(e.ok()) << e.status();
  constexpr int kThreads = 4;
  constexpr int kOps = 400;
  struct Live {
    Tensor tensor;
    uint64_t tag;
  };
  std::vector<std::vector<Live>> live(kThreads);
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      uint64_t x = test::Mix(th + 1);
      uint64_t live_bytes = 0;
      auto next = [&x] { return x = test::Mix(x); };
      for (int op = 0; op < kOps; ++op) {
        const uint64_t roll = next() % 10;
        std::vector<Live>& mine = live[th];
        if (!mine.empty() && (roll < 3 || live_bytes > 2 * kHost)) {
          const size_t k = next() % mine.size();
          EXPECT_OK((*e)->DropTensor(mine[k].tensor));
          live_bytes -= mine[k].tensor.size_bytes();
          mine[k] = std::move(mine.back());
          mine.pop_back();
        } else if (!mine.empty() && roll < 6) {
          const Live& l = mine[next() % mine.size()];
          ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, l.tensor, l.tag));
        } else {
          // 4 KiB .. 1 MiB, log-uniform, any multiple of 4 bytes.
          const uint64_t base = uint64_t{4096} << (next() % 8);
          const uint64_t bytes = base + next() % base / 4 * 4;
          const uint64_t tag = (static_cast<uint64_t>(th) << 32) |
                               static_cast<uint64_t>(op + 1);
          auto t = (*e)->CreateTensor(
              "c" + std::to_string(th) + "." + std::to_string(op),
              {.dtype = DType::kF32, .shape = {static_cast<int64_t>(bytes / 4)}});
          ASSERT_TRUE(t.ok()) << t.status();
          ASSERT_NO_FATAL_FAILURE(WriteTensor(**e, *t, tag));
          live_bytes += t->size_bytes();
          mine.push_back({*t, tag});
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_OK((*e)->FlushAll());
  uint64_t blocks_bytes = 0;
  for (const auto& mine : live) {
    for (const Live& l : mine) {
      ASSERT_NO_FATAL_FAILURE(ExpectTensor(**e, l.tensor, l.tag));
      for (uint64_t b = 0; b < l.tensor.num_blocks(); ++b) {
        blocks_bytes += (l.tensor.block_size(b) + 4095) / 4096 * 4096;
      }
    }
  }
  const EngineStats stats = (*e)->GetStats();
  EXPECT_EQ(stats.tier(Tier::kNvme).used_bytes, blocks_bytes);
  EXPECT_LE(stats.tier(Tier::kHost).used_bytes, kHost);
  EXPECT_GT(stats.tier(Tier::kHost).evictions, 0u);
  EXPECT_EQ(stats.tier(Tier::kNvme).errors, 0u);
  EXPECT_OK((*e)->Close());
}

}  // namespace
}  // namespace strata
