// Tests of the host tier's frame allocator (tiers/host/host_tier.cc): frames
// of each block's own size (rounded up to 4096), best fit among free extents
// that merge when they meet. The randomized test keeps an oracle of the live
// frames and checks the tier against it after every step: no overlap, no
// leak, used() exact, an allocation refused only when no free range of its
// size exists, and, once everything is freed, one frame of the whole
// capacity fits again.
#include "tiers/host/host_tier.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata::tiers {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kAlign = HostTier::kFrameAlign;

uint64_t RoundUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

std::unique_ptr<HostTier> MakeHost(uint64_t capacity) {
  auto tier = HostTier::Create(
      {.capacity_bytes = capacity, .numa_node = -1, .huge_pages = false});
  EXPECT_TRUE(tier.ok()) << tier.status();
  return tier.ok() ? std::move(*tier) : nullptr;
}

// splitmix64: the same numbers on every platform and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : x_(seed) {}
  uint64_t Next() {
    uint64_t z = (x_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return Next() % n; }
  // Roughly log-uniform in [lo, hi].
  uint64_t LogUniform(uint64_t lo, uint64_t hi) {
    const uint64_t span_bits = 64 - __builtin_clzll(hi / lo);
    for (;;) {
      const uint64_t scale = uint64_t{1} << Below(span_bits);
      const uint64_t v = lo * scale + Below(lo * scale);
      if (v <= hi) return v;
    }
  }

 private:
  uint64_t x_;
};

// The live frames, each stamped with its own byte in its first and last
// bytes, checked against the tier.
class Oracle {
 public:
  explicit Oracle(const HostTier& tier) : tier_(tier) {}

  // Records a frame the tier handed out for `asked` bytes; fails the test if
  // it is misaligned, of the wrong size, outside the arena or overlaps a
  // live frame.
  void Add(const Frame& f, uint64_t asked) {
    const std::span<std::byte> arena = tier_.arena();
    ASSERT_EQ(f.offset % kAlign, 0u) << f.offset;
    ASSERT_EQ(f.bytes, RoundUp(asked)) << "asked " << asked;
    ASSERT_LE(f.offset + f.bytes, arena.size()) << "frame beyond the arena";
    ASSERT_EQ(f.data, arena.data() + f.offset) << "data is not base + offset";
    auto next = frames_.lower_bound(f.offset);
    if (next != frames_.end()) {
      ASSERT_GE(next->first, f.offset + f.bytes)
          << "frame [" << f.offset << ", +" << f.bytes
          << ") overlaps the live frame at " << next->first;
    }
    if (next != frames_.begin()) {
      auto prev = std::prev(next);
      ASSERT_LE(prev->first + prev->second.frame.bytes, f.offset)
          << "frame at " << f.offset << " overlaps the live frame ["
          << prev->first << ", +" << prev->second.frame.bytes << ")";
    }
    const auto stamp = static_cast<std::byte>(++stamps_ | 1);
    f.data[0] = stamp;
    f.data[f.bytes - 1] = stamp;
    frames_.emplace(f.offset, Live{f, stamp});
    order_.push_back(f.offset);
    live_ += f.bytes;
  }

  // Removes a random live frame, checks its stamps, returns it.
  Frame TakeRandom(Rng& rng) {
    const size_t i = rng.Below(order_.size());
    const uint64_t offset = order_[i];
    order_[i] = order_.back();
    order_.pop_back();
    auto it = frames_.find(offset);
    const Live l = it->second;
    frames_.erase(it);
    live_ -= l.frame.bytes;
    EXPECT_EQ(l.frame.data[0], l.stamp) << "frame at " << offset << " was overwritten";
    EXPECT_EQ(l.frame.data[l.frame.bytes - 1], l.stamp)
        << "frame at " << offset << " was overwritten at its end";
    return l.frame;
  }

  // The free ranges between live frames.
  std::vector<std::pair<uint64_t, uint64_t>> Gaps() const {
    std::vector<std::pair<uint64_t, uint64_t>> gaps;
    uint64_t at = 0;
    for (const auto& [offset, l] : frames_) {
      if (offset > at) gaps.emplace_back(at, offset - at);
      at = offset + l.frame.bytes;
    }
    if (tier_.arena().size() > at) gaps.emplace_back(at, tier_.arena().size() - at);
    return gaps;
  }
  uint64_t LongestGap() const {
    uint64_t longest = 0;
    for (const auto& [offset, bytes] : Gaps()) longest = std::max(longest, bytes);
    return longest;
  }

  // The tier agrees: used() is the bytes of the live frames, the longest
  // free extent and the number of free extents are those of the oracle (a
  // free extent next to another one would mean a missed merge).
  void Check() const {
    ASSERT_EQ(tier_.used(), live_);
    const auto gaps = Gaps();
    ASSERT_EQ(tier_.free_extents(), gaps.size()) << "free extents did not merge";
    ASSERT_EQ(tier_.largest_free(), LongestGap());
  }

  bool empty() const { return frames_.empty(); }
  uint64_t live() const { return live_; }

 private:
  struct Live {
    Frame frame;
    std::byte stamp;
  };
  const HostTier& tier_;
  std::map<uint64_t, Live> frames_;  // by offset
  std::vector<uint64_t> order_;      // offsets, for random picks
  uint64_t live_ = 0;
  uint8_t stamps_ = 0;
};

TEST(HostTier, RejectsABadCapacity) {
  for (uint64_t capacity : {uint64_t{0}, uint64_t{4095}, 4 * kKiB + 1}) {
    auto tier = HostTier::Create({.capacity_bytes = capacity, .huge_pages = false});
    EXPECT_EQ(tier.status().code(), absl::StatusCode::kInvalidArgument) << capacity;
  }
}

TEST(HostTier, FramesAreSizedByTheirBytes) {
  auto tier = MakeHost(16 * kMiB);
  ASSERT_NE(tier, nullptr);
  Oracle oracle(*tier);
  for (uint64_t bytes : {uint64_t{1}, 4 * kKiB, 4 * kKiB + 1, 12 * kKiB,
                         kMiB + 4 * kKiB, 3 * kMiB - 1}) {
    auto frame = tier->Allocate(bytes);
    ASSERT_TRUE(frame.ok()) << bytes << ": " << frame.status();
    ASSERT_NO_FATAL_FAILURE(oracle.Add(*frame, bytes));
    ASSERT_NO_FATAL_FAILURE(oracle.Check());
  }
}

TEST(HostTier, FreedNeighboursMergeAndBestFitTakesTheSmallestHole) {
  constexpr uint64_t kFrame = 64 * kKiB;
  auto tier = MakeHost(16 * kFrame);
  ASSERT_NE(tier, nullptr);
  std::vector<Frame> frames;
  for (int i = 0; i < 16; ++i) {
    auto frame = tier->Allocate(kFrame);
    ASSERT_TRUE(frame.ok()) << i << ": " << frame.status();
    frames.push_back(*frame);
  }
  EXPECT_EQ(tier->largest_free(), 0u);
  // 5, 7 and then 6 (which joins both): one hole of three frames; 10: one
  // hole of one frame.
  for (int i : {5, 7, 6, 10}) tier->Free(frames[i]);
  EXPECT_EQ(tier->free_extents(), 2u);
  EXPECT_EQ(tier->largest_free(), 3 * kFrame);
  // Best fit: one frame goes into the hole of one, not the hole of three.
  auto one = tier->Allocate(kFrame);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->offset, frames[10].offset);
  auto three = tier->Allocate(3 * kFrame);
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(three->offset, frames[5].offset);
  // Full.
  EXPECT_EQ(tier->Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tier->used(), tier->capacity());
}

TEST(HostTier, MovesBytesBetweenFramesAndHostMemory) {
  auto tier = MakeHost(4 * kMiB);
  ASSERT_NE(tier, nullptr);
  auto frame = tier->Allocate(10000);
  ASSERT_TRUE(frame.ok()) << frame.status();
  std::vector<std::byte> out(10000), in(10000);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>(i * 7);
  int done = 0;
  Transfer write{.op = Transfer::Op::kWrite, .frame = *frame, .host = out};
  write.on_done = [](Transfer* t) { ++*static_cast<int*>(t->user); };
  write.user = &done;
  Transfer* batch[] = {&write};
  ASSERT_TRUE(tier->Submit(batch).ok());
  Transfer read{.op = Transfer::Op::kRead, .frame = *frame, .host = in};
  read.on_done = write.on_done;
  read.user = &done;
  batch[0] = &read;
  ASSERT_TRUE(tier->Submit(batch).ok());
  EXPECT_EQ(done, 2);
  EXPECT_TRUE(write.status.ok()) << write.status;
  EXPECT_TRUE(read.status.ok()) << read.status;
  EXPECT_EQ(std::memcmp(in.data(), out.data(), in.size()), 0);
  tier->Free(*frame);
  EXPECT_EQ(tier->used(), 0u);
}

// Random sizes from one byte to 4 MiB (log-uniform: most small), random
// frees, a capacity small enough that the tier is often full.
TEST(HostTier, RandomOpsAgreeWithAnOracle) {
  constexpr uint64_t kCapacity = 64 * kMiB;
  auto tier = MakeHost(kCapacity);
  ASSERT_NE(tier, nullptr);
  Oracle oracle(*tier);
  Rng rng(11);
  int refused = 0;
  for (int step = 0; step < 20000; ++step) {
    // Allocate more often than free until the tier is full, then mix.
    const bool alloc = oracle.empty() || rng.Below(100) < 55;
    if (alloc) {
      const uint64_t bytes = rng.LogUniform(1, 4 * kMiB);
      absl::StatusOr<Frame> frame = tier->Allocate(bytes);
      if (frame.ok()) {
        ASSERT_NO_FATAL_FAILURE(oracle.Add(*frame, bytes)) << "step " << step;
      } else {
        ASSERT_EQ(frame.status().code(), absl::StatusCode::kResourceExhausted)
            << frame.status();
        // Best fit finds any free range that holds the frame.
        ASSERT_LT(oracle.LongestGap(), RoundUp(bytes))
            << "step " << step << ": refused " << bytes
            << " bytes while a free range of " << oracle.LongestGap()
            << " bytes exists";
        ++refused;
      }
    } else {
      tier->Free(oracle.TakeRandom(rng));
    }
    ASSERT_NO_FATAL_FAILURE(oracle.Check()) << "step " << step;
  }
  EXPECT_GT(refused, 0) << "the tier was never full: the test is too easy";
  // No leak, and everything merged back: one frame of the whole capacity.
  while (!oracle.empty()) tier->Free(oracle.TakeRandom(rng));
  EXPECT_EQ(tier->used(), 0u);
  EXPECT_EQ(tier->free_extents(), 1u);
  EXPECT_EQ(tier->largest_free(), kCapacity);
  auto all = tier->Allocate(kCapacity);
  ASSERT_TRUE(all.ok()) << "free space did not coalesce: " << all.status();
  EXPECT_EQ(all->offset, 0u);
  tier->Free(*all);
}

}  // namespace
}  // namespace strata::tiers
