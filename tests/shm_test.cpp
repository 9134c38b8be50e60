// The node segment (tiers/shm) inside one process: its allocator, the pin
// protocol seen from two attachments (two mappings of the same pages), bad
// segments and the engine's shared tensors. Dead processes and races
// between processes are in shm_multiprocess_test.cpp.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "engine/testing.h"
#include "tiers/gpu/fake_gpu_device.h"
#include "tiers/gpu/gpu_tier.h"
#include "tiers/shm/buddy.h"
#include "tiers/shm/layout.h"
#include "tiers/shm/segment.h"

namespace strata {
namespace {

using tiers::shm::Buddy;
using tiers::shm::OpenMode;
using tiers::shm::Segment;
using tiers::shm::SegmentOptions;
using tiers::shm::SharedPin;
using tiers::shm::SharedRef;
using tiers::shm::SharedSpec;

// A buddy allocator over plain vectors.
struct BuddyFixture {
  explicit BuddyFixture(uint64_t units) : map(units), links(units) {
    buddy.Format();
  }
  Buddy::State state{};
  std::vector<uint8_t> map;
  std::vector<Buddy::Link> links;
  Buddy buddy{&state, std::span<uint8_t>(map), std::span<Buddy::Link>(links)};
};

TEST(BuddyTest, FreeingEverythingCoalescesBackToTheWholeArena) {
  BuddyFixture f(1000);  // not a power of two: 512 + 256 + 128 + 64 + 32 + 8
  std::vector<uint64_t> got;
  while (auto u = f.buddy.Allocate(3)) got.push_back(*u);  // 4 units each
  EXPECT_EQ(got.size(), 250u);
  EXPECT_EQ(f.buddy.used_units(), 1000u);
  for (uint64_t u : got) EXPECT_TRUE(f.buddy.Free(u));
  EXPECT_EQ(f.buddy.used_units(), 0u);
  // Whole again: the largest power of two fits at once.
  EXPECT_EQ(f.buddy.Allocate(512), std::optional<uint64_t>(0));
  EXPECT_FALSE(f.buddy.Free(7)) << "not the start of a frame in use";
}

TEST(BuddyTest, RandomAllocationsNeverOverlapAndRebuildKeepsThem) {
  BuddyFixture f(4096);
  std::mt19937_64 rng(7);
  std::map<uint64_t, uint64_t> live;  // unit -> units
  for (int i = 0; i < 20000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const uint64_t want = 1 + rng() % 64;
      if (auto u = f.buddy.Allocate(want)) {
        const uint64_t size = f.buddy.FrameUnits(*u);
        ASSERT_GE(size, want);
        auto next = live.lower_bound(*u);
        if (next != live.end()) {
          ASSERT_LE(*u + size, next->first);
        }
        if (next != live.begin()) {
          auto prev = std::prev(next);
          ASSERT_LE(prev->first + prev->second, *u);
        }
        live[*u] = size;
      }
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      ASSERT_TRUE(f.buddy.Free(it->first));
      live.erase(it);
    }
    if (i % 5000 == 4999) {
      // What a repair does: forget the lists, keep what is referenced.
      const uint64_t bad = f.buddy.Rebuild([&](auto&& mark) {
        for (auto [u, n] : live) mark(u, n);
      });
      ASSERT_EQ(bad, 0u);
      uint64_t used = 0;
      for (auto [u, n] : live) used += n;
      ASSERT_EQ(f.buddy.used_units(), used);
    }
  }
}

TEST(BuddyTest, RebuildRejectsOverlappingOrMisplacedFrames) {
  BuddyFixture f(64);
  const uint64_t bad = f.buddy.Rebuild([](auto&& mark) {
    mark(0, 8);
    mark(4, 4);    // inside the first
    mark(3, 2);    // misaligned
    mark(60, 8);   // past the end
  });
  EXPECT_EQ(bad, 3u);
  EXPECT_EQ(f.buddy.used_units(), 8u);
}

std::string UniqueName(const std::string& what) {
  static int n = 0;
  return absl::StrCat("test-", what, "-", getpid(), "-", n++);
}

// A segment that is unlinked when the test ends.
class ShmTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const std::string& name : names_) (void)Segment::Remove(name);
  }
  SegmentOptions Options(uint64_t capacity = uint64_t{8} << 20) {
    SegmentOptions o;
    o.name = UniqueName("seg");
    names_.push_back(o.name);
    o.capacity_bytes = capacity;
    o.max_processes = 4;
    o.max_tensors = 8;
    o.reclaim_interval = absl::ZeroDuration();
    o.log = [](std::string_view) {};
    return o;
  }
  std::unique_ptr<Segment> Attach(const SegmentOptions& created) {
    SegmentOptions o = created;
    o.mode = OpenMode::kAttach;
    auto seg = Segment::Open(o);
    EXPECT_OK(seg);
    return seg.ok() ? std::move(*seg) : nullptr;
  }
  static SharedSpec Spec(uint64_t blocks, uint64_t block_bytes = 8192) {
    return {.dtype = DType::kU8,
            .shape = {static_cast<int64_t>(blocks * block_bytes)},
            .block_bytes = block_bytes,
            .size_bytes = blocks * block_bytes,
            .num_blocks = blocks};
  }
  // A segment attached twice (as two processes would), with tensor "t"
  // created through the first and opened through the second.
  struct Two {
    std::unique_ptr<Segment> a, b;
    SharedRef ta, tb;
  };
  std::optional<Two> TwoAttachments(const SharedSpec& spec) {
    SegmentOptions o = Options();
    absl::StatusOr<std::unique_ptr<Segment>> a = Segment::Open(o);
    EXPECT_OK(a);
    if (!a.ok()) return std::nullopt;
    Two two{.a = std::move(*a), .b = Attach(o)};
    if (two.b == nullptr) return std::nullopt;
    absl::StatusOr<SharedRef> ta = two.a->CreateTensor("t", spec, false);
    EXPECT_OK(ta);
    absl::StatusOr<SharedRef> tb = ta.ok() ? two.b->OpenTensor("t") : ta;
    EXPECT_OK(tb);
    if (!tb.ok()) return std::nullopt;
    two.ta = *ta;
    two.tb = *tb;
    return two;
  }
  static absl::Duration Soon() { return absl::Milliseconds(50); }
  static absl::Duration Later() { return absl::Seconds(10); }

  std::vector<std::string> names_;
};

TEST_F(ShmTest, AWriteInOneAttachmentIsSeenInTheOtherWithoutACopy) {
  std::optional<Two> two = TwoAttachments(Spec(2));
  ASSERT_TRUE(two.has_value());
  auto& [a, b, ta, tb] = *two;

  ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(ta, 1, Access::kOverwrite, Later()));
  std::memset(w.data, 0x5A, w.size);
  a->Unpin(w.record, w.count, /*write=*/true);

  ASSERT_OK_AND_ASSIGN(SharedPin ra, a->Pin(ta, 1, Access::kRead, Later()));
  ASSERT_OK_AND_ASSIGN(SharedPin rb, b->Pin(tb, 1, Access::kRead, Later()));
  EXPECT_EQ(ra.data - a->base(), rb.data - b->base()) << "one frame, two mappings";
  EXPECT_EQ(std::to_integer<int>(rb.data[0]), 0x5A);
  EXPECT_EQ(std::to_integer<int>(rb.data[rb.size - 1]), 0x5A);
  // The same physical page: a store through one mapping shows in the other.
  // (A test may scribble on a read pin; a caller may not.)
  ra.data[7] = std::byte{0x11};
  EXPECT_EQ(std::to_integer<int>(rb.data[7]), 0x11);
  a->Unpin(ra.record, ra.count, false);
  b->Unpin(rb.record, rb.count, false);
}

TEST_F(ShmTest, ABlockNeverWrittenReadsAsZeros) {
  SegmentOptions o = Options();
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(3), false));
  ASSERT_OK_AND_ASSIGN(SharedPin r, a->Pin(t, 2, Access::kRead, Later()));
  EXPECT_TRUE(std::all_of(r.data, r.data + r.size, [](std::byte x) { return x == std::byte{0}; }));
  a->Unpin(r.record, r.count, false);
}

TEST_F(ShmTest, AWriteIsInvisibleUntilSealedAndExclusive) {
  std::optional<Two> two = TwoAttachments(Spec(1));
  ASSERT_TRUE(two.has_value());
  auto& [a, b, ta, tb] = *two;
  {
    ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(ta, 0, Access::kOverwrite, Later()));
    std::memset(w.data, 1, w.size);
    a->Unpin(w.record, w.count, true);
  }
  ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(ta, 0, Access::kWrite, Later()));
  EXPECT_EQ(std::to_integer<int>(w.data[100]), 1) << "kWrite starts from the sealed bytes";
  std::memset(w.data, 2, w.size / 2);  // half written
  // Readers wait for the seal; a second writer too.
  EXPECT_STATUS(b->Pin(tb, 0, Access::kRead, Soon()), absl::StatusCode::kDeadlineExceeded);
  EXPECT_STATUS(b->Pin(tb, 0, Access::kWrite, Soon()), absl::StatusCode::kDeadlineExceeded);
  std::memset(w.data + w.size / 2, 2, w.size - w.size / 2);
  a->Unpin(w.record, w.count, true);
  ASSERT_OK_AND_ASSIGN(SharedPin r, b->Pin(tb, 0, Access::kRead, Later()));
  EXPECT_TRUE(std::all_of(r.data, r.data + r.size, [](std::byte x) { return x == std::byte{2}; }));
  // A reader holds it: no write pin.
  EXPECT_STATUS(a->Pin(ta, 0, Access::kWrite, Soon()), absl::StatusCode::kDeadlineExceeded);
  b->Unpin(r.record, r.count, false);
  ASSERT_OK_AND_ASSIGN(SharedPin w2, a->Pin(ta, 0, Access::kWrite, Later()));
  a->Unpin(w2.record, w2.count, true);
}

// Threads of one process share its row of counts: readers that announce
// themselves and back off while a write pin of the block lives must not
// lose or leave counts behind.
TEST_F(ShmTest, ReadersAndAWriterOfOneProcessLeaveNoCountsBehind) {
  SegmentOptions o = Options();
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, seg->CreateTensor("t", Spec(1), false));
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      absl::StatusOr<SharedPin> r = seg->Pin(t, 0, Access::kRead, absl::Milliseconds(1));
      if (r.ok()) seg->Unpin(r->record, r->count, false);
    }
  });
  for (int i = 0; i < 200000; ++i) {
    absl::StatusOr<SharedPin> w = seg->Pin(t, 0, Access::kOverwrite, Later());
    ASSERT_OK(w) << "write " << i;
    seg->Unpin(w->record, w->count, true);
  }
  stop = true;
  reader.join();
  ASSERT_OK_AND_ASSIGN(auto s, seg->Stat());
  ASSERT_EQ(s.processes.size(), 1u);
  EXPECT_EQ(s.processes[0].read_pins, 0u);
  EXPECT_EQ(s.processes[0].write_pins, 0u);
  EXPECT_EQ(s.pinned_bytes, 0u);
  absl::StatusOr<SharedPin> last = seg->Pin(t, 0, Access::kOverwrite, Soon());
  ASSERT_OK(last) << "nothing left pinned";
  seg->Unpin(last->record, last->count, true);
}

TEST_F(ShmTest, CreatingIsExclusiveAndOpeningChecksTheSpec) {
  SegmentOptions o = Options();
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  auto b = Attach(o);
  ASSERT_NE(b, nullptr);
  ASSERT_OK(a->CreateTensor("t", Spec(2), false));
  EXPECT_STATUS(b->CreateTensor("t", Spec(2), false), absl::StatusCode::kAlreadyExists);
  ASSERT_OK_AND_ASSIGN(SharedRef again, b->CreateTensor("t", Spec(2), true));
  EXPECT_EQ(again.spec.num_blocks, 2u);
  EXPECT_STATUS(b->CreateTensor("t", Spec(3), true), absl::StatusCode::kAlreadyExists);
  EXPECT_STATUS(b->OpenTensor("nope"), absl::StatusCode::kNotFound);
  EXPECT_STATUS(a->CreateTensor(std::string(200, 'x'), Spec(1), false),
                absl::StatusCode::kInvalidArgument);
}

TEST_F(ShmTest, AFullSegmentNamesItsCapacityAndPinnedBytes) {
  SegmentOptions o = Options(/*capacity=*/uint64_t{1} << 20);  // 1 MiB
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(8, 256 << 10), false));
  std::vector<SharedPin> pins;
  absl::Status full;
  for (uint64_t b = 0; b < 8; ++b) {
    absl::StatusOr<SharedPin> p = a->Pin(t, b, Access::kRead, Later());
    if (!p.ok()) {
      full = p.status();
      break;
    }
    pins.push_back(*p);
  }
  EXPECT_STATUS(full, absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find(Segment::ObjectName(o.name)), std::string::npos) << full;
  EXPECT_NE(full.message().find("capacity 1048576"), std::string::npos) << full;
  EXPECT_NE(full.message().find(absl::StrCat(pins.size() * (256 << 10), " pinned")),
            std::string::npos) << full;
  for (SharedPin& p : pins) a->Unpin(p.record, p.count, false);
}

TEST_F(ShmTest, RemovingATensorWaitsForItsPinsAndOldHandlesSeeItGone) {
  std::optional<Two> two = TwoAttachments(Spec(2));
  ASSERT_TRUE(two.has_value());
  auto& [a, b, ta, tb] = *two;
  ASSERT_OK_AND_ASSIGN(SharedPin r, b->Pin(tb, 0, Access::kRead, Later()));
  EXPECT_STATUS(a->RemoveTensor(ta), absl::StatusCode::kFailedPrecondition);
  b->Unpin(r.record, r.count, false);
  const uint64_t used = a->Stat()->used_bytes;
  EXPECT_GT(used, 0u);
  ASSERT_OK(a->RemoveTensor(ta));
  EXPECT_EQ(a->Stat()->used_bytes, 0u) << "table and frames are free again";
  EXPECT_STATUS(b->Pin(tb, 0, Access::kRead, Later()), absl::StatusCode::kNotFound);
  EXPECT_STATUS(a->RemoveTensor(ta), absl::StatusCode::kNotFound);
  // The name is free again, and the old handle does not see the new tensor.
  ASSERT_OK(a->CreateTensor("t", Spec(2), false));
  EXPECT_STATUS(b->Pin(tb, 0, Access::kRead, Later()), absl::StatusCode::kNotFound);
}

TEST_F(ShmTest, StatCountsPinsPerProcessSlot) {
  SegmentOptions o = Options();
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(4), false));
  ASSERT_OK_AND_ASSIGN(SharedPin r1, a->Pin(t, 0, Access::kRead, Later()));
  ASSERT_OK_AND_ASSIGN(SharedPin r2, a->Pin(t, 0, Access::kRead, Later()));
  ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(t, 3, Access::kOverwrite, Later()));
  ASSERT_OK_AND_ASSIGN(auto s, a->Stat());
  EXPECT_EQ(s.tensors, 1u);
  EXPECT_EQ(s.blocks, 4u);
  ASSERT_EQ(s.processes.size(), 1u);
  EXPECT_EQ(s.processes[0].pid, getpid());
  EXPECT_EQ(s.processes[0].read_pins, 2u);
  EXPECT_EQ(s.processes[0].write_pins, 1u);
  EXPECT_EQ(s.pinned_bytes, 2u * 8192);
  a->Unpin(r1.record, r1.count, false);
  a->Unpin(r2.record, r2.count, false);
  a->Unpin(w.record, w.count, true);
  EXPECT_EQ(a->Stat()->pinned_bytes, 0u);
}

TEST_F(ShmTest, OpenModesAndBadOptionsGetClearErrors) {
  SegmentOptions o = Options();
  SegmentOptions attach = o;
  attach.mode = OpenMode::kAttach;
  EXPECT_STATUS(Segment::Open(attach), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  SegmentOptions create = o;
  create.mode = OpenMode::kCreate;
  EXPECT_STATUS(Segment::Open(create), absl::StatusCode::kAlreadyExists);
  SegmentOptions bad = Options();
  bad.name = "no/slashes";
  EXPECT_STATUS(Segment::Open(bad), absl::StatusCode::kInvalidArgument);
  bad = Options();
  bad.capacity_bytes = 12345;
  EXPECT_STATUS(Segment::Open(bad), absl::StatusCode::kInvalidArgument);
  bad = Options();
  bad.max_processes = 0;
  EXPECT_STATUS(Segment::Open(bad), absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, Segment::List());
  EXPECT_NE(std::find(names.begin(), names.end(), o.name), names.end());
}

TEST_F(ShmTest, AllProcessSlotsTakenIsResourceExhausted) {
  SegmentOptions o = Options();
  o.max_processes = 2;
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  auto b = Attach(o);
  ASSERT_NE(b, nullptr);
  SegmentOptions attach = o;
  attach.mode = OpenMode::kAttach;
  EXPECT_STATUS(Segment::Open(attach), absl::StatusCode::kResourceExhausted);
  b.reset();  // gives its slot back
  EXPECT_OK(Segment::Open(attach));
}

// Writes `bytes` at `offset` of segment `name`'s object.
void Scribble(const std::string& name, uint64_t offset, const void* bytes, size_t n) {
  const int fd = shm_open(Segment::ObjectName(name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, bytes, n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  close(fd);
}

TEST_F(ShmTest, AnotherLayoutVersionOrABadHeaderIsAClearError) {
  SegmentOptions o = Options();
  { ASSERT_OK(Segment::Open(o)); }
  SegmentOptions attach = o;
  attach.mode = OpenMode::kAttach;
  const uint32_t version = tiers::shm::kLayoutVersion + 1;
  Scribble(o.name, offsetof(tiers::shm::ImmutableHeader, layout_version), &version,
           sizeof(version));
  absl::StatusOr<std::unique_ptr<Segment>> s = Segment::Open(attach);
  EXPECT_STATUS(s, absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("layout version 2"), std::string::npos) << s.status();

  Scribble(o.name, offsetof(tiers::shm::ImmutableHeader, layout_version),
           &tiers::shm::kLayoutVersion, sizeof(version));
  const uint64_t size = 999;
  Scribble(o.name, offsetof(tiers::shm::ImmutableHeader, total_bytes), &size, sizeof(size));
  s = Segment::Open(attach);
  EXPECT_STATUS(s, absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("checksum"), std::string::npos) << s.status();

  Scribble(o.name, 0, "NOTSTRAT", 8);
  EXPECT_STATUS(Segment::Open(attach), absl::StatusCode::kFailedPrecondition);
}

// Found by the fuzzer below: the allocator's state in the segment is not
// covered by the header's checksum, and a rebuild trusted its unit count.
TEST_F(ShmTest, GarbageInTheAllocatorStateIsRebuiltAtAttach) {
  SegmentOptions o = Options();
  uint64_t used = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
    ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(2), false));
    ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(t, 0, Access::kOverwrite, Later()));
    std::memset(w.data, 9, w.size);
    a->Unpin(w.record, w.count, true);
    used = a->Stat()->used_bytes;
  }
  const uint64_t garbage_units = uint64_t{1} << 60;
  Scribble(o.name, offsetof(tiers::shm::Header, buddy) + offsetof(Buddy::State, units),
           &garbage_units, sizeof(garbage_units));
  const uint32_t garbage_head = 12345;
  Scribble(o.name, offsetof(tiers::shm::Header, buddy), &garbage_head, sizeof(garbage_head));
  SegmentOptions attach = o;
  attach.mode = OpenMode::kAttach;
  ASSERT_OK_AND_ASSIGN(auto b, Segment::Open(attach));
  EXPECT_EQ(b->Stat()->used_bytes, used);
  ASSERT_OK_AND_ASSIGN(SharedRef t, b->OpenTensor("t"));
  ASSERT_OK_AND_ASSIGN(SharedPin r, b->Pin(t, 0, Access::kRead, Later()));
  EXPECT_EQ(std::to_integer<int>(r.data[100]), 9);
  b->Unpin(r.record, r.count, false);
  ASSERT_OK_AND_ASSIGN(SharedPin w, b->Pin(t, 1, Access::kOverwrite, Later()));
  b->Unpin(w.record, w.count, true);
}

// Mutates bytes of a valid segment's header, process table and directory
// (and the first tensor's table) at random; every attach must return OK or
// a Status, never crash or hang. Runs under ASan/UBSan in .ci/run; the
// seeds are the corpus (a failing seed reproduces its segment exactly).
TEST_F(ShmTest, FuzzedHeadersAndDirectoriesNeverCrash) {
  SegmentOptions o = Options(uint64_t{1} << 20);
  o.lock_timeout = absl::Milliseconds(50);
  std::vector<std::byte> pristine;
  uint64_t meta_bytes = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
    ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("weights", Spec(3), false));
    ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(t, 1, Access::kOverwrite, Later()));
    std::memset(w.data, 3, w.size);
    a->Unpin(w.record, w.count, true);
    const auto& h = *reinterpret_cast<const tiers::shm::Header*>(a->base());
    meta_bytes = h.fixed.map_offset + 2 * Buddy::kUnit;  // and the first tables
    pristine.assign(a->base(), a->base() + std::min<uint64_t>(a->mapped_bytes(),
                                                              h.fixed.arena_offset + 64 * 1024));
  }
  SegmentOptions attach = o;
  attach.mode = OpenMode::kAttach;
  // Writes `pristine` with `mutations` (offset, byte) into the segment and
  // attaches; a segment that passes the checks must work: open, pin, stat.
  using Mutations = std::vector<std::pair<uint64_t, uint8_t>>;
  auto attach_mutated = [&](const Mutations& mutations) -> absl::Status {
    std::vector<std::byte> bytes = pristine;
    for (auto [at, value] : mutations) {
      if (at < bytes.size()) bytes[at] = static_cast<std::byte>(value);
    }
    Scribble(o.name, 0, bytes.data(), bytes.size());
    absl::StatusOr<std::unique_ptr<Segment>> s = Segment::Open(attach);
    if (!s.ok()) return s.status();
    if (absl::StatusOr<SharedRef> t = (*s)->OpenTensor("weights"); t.ok()) {
      for (uint64_t b = 0; b < t->spec.num_blocks; ++b) {
        absl::StatusOr<SharedPin> p = (*s)->Pin(*t, b, Access::kRead, Soon());
        if (p.ok()) (*s)->Unpin(p->record, p->count, false);
      }
    }
    return (*s)->Stat().status();
  };

  // The corpus (tests/shm_corpus, one file per kind of damage that made a
  // distinct error, "offset byte" per line) first, then random seeds.
  // STRATA_SHM_CORPUS_SAVE=DIR writes such files for the seeds run.
  if (const char* dir = std::getenv("STRATA_SHM_CORPUS")) {
    int files = 0;
    for (const auto& file : std::filesystem::directory_iterator(dir)) {
      std::ifstream in(file.path());
      Mutations mutations;
      std::string line, expected;
      while (std::getline(in, line)) {
        if (line.rfind("# ", 0) == 0 && expected.empty()) {
          // The outcome recorded with the file: "attaches" or the code.
          expected = line.substr(2, line.find(':') == std::string::npos
                                        ? std::string::npos
                                        : line.find(':') - 2);
          continue;
        }
        std::istringstream fields(line);
        uint64_t at = 0;
        unsigned value = 0;
        if (fields >> at >> value) mutations.emplace_back(at, static_cast<uint8_t>(value));
      }
      ++files;
      const absl::Status status = attach_mutated(mutations);
      EXPECT_EQ(status.ok() ? std::string("attaches")
                            : absl::StatusCodeToString(status.code()),
                expected)
          << file.path() << ": " << status;
    }
    EXPECT_GT(files, 0) << "no corpus in " << dir;
  }
  const char* save = std::getenv("STRATA_SHM_CORPUS_SAVE");
  std::set<std::string> saved;
  // STRATA_SHM_FUZZ_ITERATIONS runs it longer (docs/PERFORMANCE.md says
  // how long it ran under ASan/UBSan).
  const char* env = std::getenv("STRATA_SHM_FUZZ_ITERATIONS");
  const int iterations = env != nullptr ? std::atoi(env) : 400;
  int opened = 0;
  for (int seed = 0; seed < iterations; ++seed) {
    std::mt19937_64 rng(seed);
    Mutations mutations;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) {
      // Mostly the metadata, sometimes a tensor's table in the arena.
      const uint64_t limit = rng() % 4 == 0 ? pristine.size() : meta_bytes;
      const uint64_t at = rng() % limit;
      // Leave the lock alone: a garbage mutex is its own test (a timed
      // lock); here it would only slow every seed down to lock_timeout.
      if (at >= offsetof(tiers::shm::Header, lock) &&
          at < offsetof(tiers::shm::Header, lock) + sizeof(pthread_mutex_t)) {
        continue;
      }
      mutations.emplace_back(at, static_cast<uint8_t>(rng()));
    }
    const absl::Status status = attach_mutated(mutations);
    opened += status.ok();
    // What kind of damage: the message without its numbers.
    std::string kind(status.message());
    std::erase_if(kind, [](char c) { return c >= '0' && c <= '9'; });
    kind.resize(std::min<size_t>(kind.size(), 80));
    if (save != nullptr && saved.insert(kind).second) {
      std::ofstream out(absl::StrCat(save, "/seed-", seed, ".txt"));
      out << "# " << (status.ok() ? std::string("attaches") : status.ToString()) << "\n";
      for (auto [at, value] : mutations) out << at << " " << unsigned{value} << "\n";
    }
  }
  // Some mutations hit bytes nobody checks (names of free entries, padding):
  // the fuzzer must have exercised both outcomes.
  EXPECT_GT(opened, 0);
  EXPECT_LT(opened, iterations);
}

// A segment smaller than its tensors, over a spill file.
class ShmSpillTest : public ShmTest {
 protected:
  SegmentOptions SpillOptions(uint64_t capacity) {
    SegmentOptions o = Options(capacity);
    o.spill_dir = dir_.path();
    return o;
  }
  // Fills block `b` of `t` with 8-byte words `value`.
  static void Fill(Segment& seg, const SharedRef& t, uint64_t b, uint64_t value) {
    absl::StatusOr<SharedPin> w = seg.Pin(t, b, Access::kOverwrite, Later());
    ASSERT_OK(w);
    std::fill_n(reinterpret_cast<uint64_t*>(w->data), w->size / 8, value);
    seg.Unpin(w->record, w->count, true);
  }
  // The number of 8-byte words of block `b` that are not `value`.
  static uint64_t Mismatches(Segment& seg, const SharedRef& t, uint64_t b, uint64_t value) {
    absl::StatusOr<SharedPin> r = seg.Pin(t, b, Access::kRead, Later());
    EXPECT_OK(r);
    if (!r.ok()) return ~uint64_t{0};
    const auto* words = reinterpret_cast<const uint64_t*>(r->data);
    const uint64_t bad = std::count_if(words, words + r->size / 8,
                                       [&](uint64_t w) { return w != value; });
    seg.Unpin(r->record, r->count, false);
    return bad;
  }
  test::TempDir dir_;
};

TEST_F(ShmSpillTest, AFullSegmentSpillsUnpinnedBlocksAndLoadsThemBack) {
  // 512 KiB of frames for a tensor of 1 MiB (16 blocks of 64 KiB).
  SegmentOptions o = SpillOptions(uint64_t{512} << 10);
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  auto b = Attach(o);
  ASSERT_NE(b, nullptr);
  ASSERT_OK_AND_ASSIGN(SharedRef ta, a->CreateTensor("big", Spec(16, 64 << 10), false));
  ASSERT_OK_AND_ASSIGN(SharedRef tb, b->OpenTensor("big"));
  for (uint64_t blk = 0; blk < 16; ++blk) Fill(*a, ta, blk, 1000 + blk);
  ASSERT_OK_AND_ASSIGN(auto s, a->Stat());
  EXPECT_GT(s.spills, 0u);
  EXPECT_GT(s.spilled_blocks, 0u);
  EXPECT_EQ(s.spill_path, absl::StrCat(dir_.path(), "/strata-", o.name, ".spill"));
  // The other attachment reads every block back, spilled ones included,
  // twice (the second pass spills and loads again).
  for (int pass = 0; pass < 2; ++pass) {
    for (uint64_t blk = 0; blk < 16; ++blk) {
      EXPECT_EQ(Mismatches(*b, tb, blk, 1000 + blk), 0u) << "block " << blk;
    }
  }
  ASSERT_OK_AND_ASSIGN(s, b->Stat());
  EXPECT_GT(s.spill_loads, 0u);
  // A kWrite pin of a spilled block starts from its bytes.
  ASSERT_OK_AND_ASSIGN(s, a->Stat());
  ASSERT_GT(s.spilled_blocks, 0u);
  for (uint64_t blk = 0; blk < 16; ++blk) {
    ASSERT_OK_AND_ASSIGN(SharedPin w, a->Pin(ta, blk, Access::kWrite, Later()));
    EXPECT_EQ(reinterpret_cast<const uint64_t*>(w.data)[5], 1000 + blk);
    a->Unpin(w.record, w.count, true);
  }
}

// The segment's clock follows the policy: CLOCK ("lru", clock_max 1)
// forgets how often a block was pinned, GCLOCK ("default", 3) keeps a
// block pinned three times over blocks pinned once.
TEST_F(ShmSpillTest, TheClockWeighsPinsByThePolicy) {
  for (const uint32_t clock_max : {1u, 3u}) {
    SCOPED_TRACE(absl::StrCat("clock_max ", clock_max));
    // Four 64 KiB frames (and a unit for the table).
    SegmentOptions o = SpillOptions(uint64_t{320} << 10);
    o.clock_max = clock_max;
    ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
    ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(8, 64 << 10), false));
    for (uint64_t blk = 0; blk < 4; ++blk) Fill(*a, t, blk, blk);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(Mismatches(*a, t, 0, 0), 0u);
    for (uint64_t blk = 1; blk < 4; ++blk) EXPECT_EQ(Mismatches(*a, t, blk, blk), 0u);
    ASSERT_OK_AND_ASSIGN(auto before, a->Stat());
    ASSERT_EQ(before.spills, 0u);
    EXPECT_EQ(Mismatches(*a, t, 4, 0), 0u);  // needs a frame: one block goes
    ASSERT_OK_AND_ASSIGN(auto evicted, a->Stat());
    EXPECT_EQ(evicted.spills, 1u);
    EXPECT_EQ(Mismatches(*a, t, 0, 0), 0u);
    ASSERT_OK_AND_ASSIGN(auto after, a->Stat());
    EXPECT_EQ(after.spill_loads, clock_max == 1 ? 1u : 0u)
        << "block 0, pinned three times, was " << (clock_max == 1 ? "not " : "")
        << "expected to stay";
  }
}

TEST_F(ShmSpillTest, ACorruptSpillFileIsDataLossNeverZeros) {
  SegmentOptions o = SpillOptions(uint64_t{256} << 10);
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(8, 64 << 10), false));
  for (uint64_t blk = 0; blk < 8; ++blk) Fill(*a, t, blk, 7 + blk);
  // Block 0 was written first: the clock spilled it. Scribble on its bytes
  // in the file.
  ASSERT_OK_AND_ASSIGN(auto s, a->Stat());
  ASSERT_GT(s.spilled_blocks, 0u);
  const int fd = open(s.spill_path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const uint64_t junk = 0xBAD;
  ASSERT_EQ(pwrite(fd, &junk, sizeof(junk), 4096), 8);
  close(fd);
  absl::StatusOr<SharedPin> r = a->Pin(t, 0, Access::kRead, Later());
  EXPECT_STATUS(r, absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find(s.spill_path), std::string::npos) << r.status();
  // Still lost, not silently zeros; other blocks are fine.
  EXPECT_STATUS(a->Pin(t, 0, Access::kRead, Later()), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Mismatches(*a, t, 7, 14), 0u);
  // Overwriting the block heals it.
  Fill(*a, t, 0, 99);
  EXPECT_EQ(Mismatches(*a, t, 0, 99), 0u);
}

TEST_F(ShmSpillTest, EveryBlockPinnedIsStillResourceExhausted) {
  SegmentOptions o = SpillOptions(uint64_t{256} << 10);
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(8, 64 << 10), false));
  std::vector<SharedPin> pins;
  absl::Status full;
  for (uint64_t blk = 0; blk < 8 && full.ok(); ++blk) {
    absl::StatusOr<SharedPin> p = a->Pin(t, blk, Access::kRead, Later());
    if (p.ok()) pins.push_back(*p);
    full = p.status();
  }
  EXPECT_STATUS(full, absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("pinned"), std::string::npos) << full;
  for (SharedPin& p : pins) a->Unpin(p.record, p.count, false);
  absl::StatusOr<SharedPin> last = a->Pin(t, 7, Access::kRead, Later());
  ASSERT_OK(last) << "unpinned blocks spill now";
  a->Unpin(last->record, last->count, false);
}

// A stale handle (its tensor removed, here or by another process) announced
// a read pin on the removed tensor's count row before it looked at the
// generation (TryPinRead, the engine's hot path). That row was freed with
// the table; a tensor created meanwhile zeroes it (memset) or a writer
// fills it as a frame: under TSan a race on the freed memory (TryPinRead's
// fetch_add against CreateTensor's memset of the reused table), and the new
// tensor's count could be left at 0xFFFFFFFF. A removal concurrent with the
// pin itself is still open (DESIGN-NOTES, Known limits).
TEST_F(ShmTest, AStaleHandleDoesNotTouchAFreedTable) {
  SegmentOptions o = Options();
  ASSERT_OK_AND_ASSIGN(auto a, Segment::Open(o));
  ASSERT_OK_AND_ASSIGN(SharedRef t, a->CreateTensor("t", Spec(2), false));
  ASSERT_OK(a->RemoveTensor(t));
  std::thread create([&] { EXPECT_OK(a->CreateTensor("u", Spec(2), false)); });
  std::thread pin([&] {
    SharedPin p;
    EXPECT_FALSE(Segment::TryPinRead(t, 0, &p));
  });
  create.join();
  pin.join();
}

// The engine's face of it.
class SharedTensorEngineTest : public ShmTest {
 protected:
  absl::StatusOr<std::unique_ptr<Engine>> OpenEngine(const std::string& name) {
    EngineOptions o;
    o.tiers = {Tier::kHost, Tier::kShm};
    o.host.capacity_bytes = 8 << 20;
    o.shm.name = name;
    o.shm.capacity_bytes = 8 << 20;
    o.log = [](std::string_view) {};
    return Engine::Open(o);
  }
};

TEST_F(SharedTensorEngineTest, TwoEnginesShareATensorThroughTheSegment) {
  const std::string name = UniqueName("engine");
  names_.push_back(name);
  ASSERT_OK_AND_ASSIGN(auto e1, OpenEngine(name));
  ASSERT_OK_AND_ASSIGN(auto e2, OpenEngine(name));
  const TensorSpec spec{.dtype = DType::kF32, .shape = {4096}, .block_bytes = 8192};
  ASSERT_OK_AND_ASSIGN(Tensor t1, e1->CreateSharedTensor("emb", spec));
  EXPECT_STATUS(e2->CreateSharedTensor("emb", spec), absl::StatusCode::kAlreadyExists);
  ASSERT_OK_AND_ASSIGN(Tensor t2, e2->OpenSharedTensor("emb"));
  EXPECT_EQ(t2.num_blocks(), 2u);
  {
    ASSERT_OK_AND_ASSIGN(Pin w, e1->Pin(t1, 1, Tier::kShm, Access::kOverwrite));
    EXPECT_EQ(w.tier(), Tier::kShm);
    std::ranges::fill(w.as<float>(), 2.5f);
    ASSERT_OK(w.Release());  // sealed
    EXPECT_STATUS(w.Release(), absl::StatusCode::kFailedPrecondition);
  }
  ASSERT_OK_AND_ASSIGN(Pin r, e2->Pin(t2, 1, Tier::kShm, Access::kRead));
  EXPECT_EQ(r.as<float>()[0], 2.5f);
  EXPECT_EQ(r.as<float>()[2047], 2.5f);
  {
    ASSERT_OK_AND_ASSIGN(Pin h, e2->Pin(t2, 1, Tier::kHost, Access::kRead));
    EXPECT_EQ(h.as<float>()[5], 2.5f) << "a private copy of the sealed bytes";
  }
  EXPECT_STATUS(e2->Pin(t2, 1, Tier::kHost, Access::kWrite), absl::StatusCode::kUnimplemented);
  EXPECT_STATUS(e2->Pin(t2, 2, Tier::kShm, Access::kRead), absl::StatusCode::kOutOfRange);
  EXPECT_STATUS(e2->Prefetch(t2, BlockRange::All(), Tier::kShm), absl::StatusCode::kUnimplemented);
  EXPECT_OK(e2->Flush(t2));
  const EngineStats stats = e2->GetStats();
  EXPECT_TRUE(stats.tier(Tier::kShm).present);
  EXPECT_EQ(stats.tier(Tier::kShm).pinned_bytes, 8192u);
  EXPECT_STATUS(e1->DropTensor(t1), absl::StatusCode::kFailedPrecondition);
  EXPECT_STATUS(e2->Close(), absl::StatusCode::kFailedPrecondition) << "a shm pin is live";
  r = Pin();
  ASSERT_OK(e1->DropTensor(t1));
  EXPECT_STATUS(e2->Pin(t2, 0, Tier::kShm, Access::kRead), absl::StatusCode::kNotFound);
  EXPECT_OK(e2->Close());
}

// Fills a pin's bytes with 8-byte words `value`.
void FillWords(const Pin& pin, uint64_t value) { std::ranges::fill(pin.as<uint64_t>(), value); }
bool AllWords(std::span<const std::byte> bytes, uint64_t value) {
  const auto* w = reinterpret_cast<const uint64_t*>(bytes.data());
  return std::all_of(w, w + bytes.size() / 8, [&](uint64_t x) { return x == value; });
}

TEST_F(SharedTensorEngineTest, HostPinsAreSnapshotsRefreshedWhenAnotherProcessSeals) {
  const std::string name = UniqueName("copies");
  names_.push_back(name);
  ASSERT_OK_AND_ASSIGN(auto e1, OpenEngine(name));
  ASSERT_OK_AND_ASSIGN(auto e2, OpenEngine(name));
  const TensorSpec spec{.dtype = DType::kI64, .shape = {4096}, .block_bytes = 16384};
  ASSERT_OK_AND_ASSIGN(Tensor t1, e1->CreateSharedTensor("w", spec));
  ASSERT_OK_AND_ASSIGN(Tensor t2, e2->OpenSharedTensor("w"));
  {
    ASSERT_OK_AND_ASSIGN(Pin w, e1->Pin(t1, 0, Tier::kShm, Access::kOverwrite));
    FillWords(w, 11);
  }
  std::byte* shm_bytes = nullptr;
  {
    ASSERT_OK_AND_ASSIGN(Pin s, e2->Pin(t2, 0, Tier::kShm, Access::kRead));
    shm_bytes = s.bytes().data();
  }
  {
    ASSERT_OK_AND_ASSIGN(Pin h, e2->Pin(t2, 0, Tier::kHost, Access::kRead));
    EXPECT_EQ(h.tier(), Tier::kHost);
    EXPECT_NE(h.bytes().data(), shm_bytes) << "a private copy";
    EXPECT_TRUE(AllWords(h.bytes(), 11));
  }
  EXPECT_EQ(e2->GetStats().tier(Tier::kHost).misses, 1u);
  { ASSERT_OK(e2->Pin(t2, 0, Tier::kHost, Access::kRead)); }
  EXPECT_EQ(e2->GetStats().tier(Tier::kHost).hits, 1u);
  // The other engine seals a new version: the snapshot is dropped and
  // loaded again, unless a pin holds it.
  ASSERT_OK_AND_ASSIGN(Pin held, e2->Pin(t2, 0, Tier::kHost, Access::kRead));
  {
    ASSERT_OK_AND_ASSIGN(Pin w, e1->Pin(t1, 0, Tier::kShm, Access::kWrite));
    FillWords(w, 22);
  }
  {
    ASSERT_OK_AND_ASSIGN(Pin h, e2->Pin(t2, 0, Tier::kHost, Access::kRead));
    EXPECT_TRUE(AllWords(h.bytes(), 11)) << "held: the snapshot it has";
  }
  held = Pin();
  {
    ASSERT_OK_AND_ASSIGN(Pin h, e2->Pin(t2, 0, Tier::kHost, Access::kRead));
    EXPECT_TRUE(AllWords(h.bytes(), 22)) << "refreshed";
  }
  EXPECT_STATUS(e2->Pin(t2, 0, Tier::kHost, Access::kWrite), absl::StatusCode::kUnimplemented);
  // Prefetch into the private tier, then every pin hits.
  ASSERT_OK_AND_ASSIGN(PrefetchHandle pf, e2->Prefetch(t2, BlockRange::All(), Tier::kHost));
  ASSERT_OK(pf.Wait());
  const uint64_t misses = e2->GetStats().tier(Tier::kHost).misses;
  for (uint64_t b = 0; b < t2.num_blocks(); ++b) {
    ASSERT_OK_AND_ASSIGN(Pin h, e2->Pin(t2, b, Tier::kHost, Access::kRead));
    EXPECT_TRUE(AllWords(h.bytes(), b == 0 ? 22 : 0)) << "block " << b;
  }
  EXPECT_EQ(e2->GetStats().tier(Tier::kHost).misses, misses);
  // A private pin keeps the tensor; then it goes for every process.
  ASSERT_OK_AND_ASSIGN(Pin h, e2->Pin(t2, 1, Tier::kHost, Access::kRead));
  EXPECT_STATUS(e2->DropTensor(t2), absl::StatusCode::kFailedPrecondition);
  h = Pin();
  ASSERT_OK(e2->DropTensor(t2));
  EXPECT_STATUS(e1->Pin(t1, 0, Tier::kShm, Access::kRead), absl::StatusCode::kNotFound);
  EXPECT_STATUS(e2->Pin(t2, 0, Tier::kHost, Access::kRead), absl::StatusCode::kNotFound);
  EXPECT_EQ(e2->GetStats().tier(Tier::kHost).used_bytes, 0u) << "private copies freed";
}

TEST_F(SharedTensorEngineTest, GpuPinsLoadFromTheRegisteredMapping) {
  const std::string name = UniqueName("gpu");
  names_.push_back(name);
  auto dev = std::make_shared<tiers::FakeGpuDevice>(64 << 20);
  ASSERT_OK_AND_ASSIGN(auto gpu, tiers::GpuTier::Create({.capacity_bytes = 8 << 20}, dev));
  internal::TierOverrides overrides;
  overrides.tiers[Tier::kGpu] = std::move(gpu);
  EngineOptions o;
  o.tiers = {Tier::kGpu, Tier::kHost, Tier::kShm};
  o.host.capacity_bytes = 8 << 20;
  o.shm.name = name;
  o.shm.capacity_bytes = 8 << 20;
  o.log = [](std::string_view) {};
  ASSERT_OK_AND_ASSIGN(auto e, testing::OpenWithTiers(o, std::move(overrides)));
  ASSERT_OK_AND_ASSIGN(ShmSegmentInfo info, InspectShmSegment(name));
  EXPECT_GT(dev->registered_bytes(), o.host.capacity_bytes + info.capacity_bytes)
      << "the host arena and the segment's mapping";
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateSharedTensor("w", {.dtype = DType::kI64,
                                                             .shape = {2048},
                                                             .block_bytes = 16384}));
  {
    ASSERT_OK_AND_ASSIGN(Pin w, e->Pin(t, 0, Tier::kShm, Access::kOverwrite));
    FillWords(w, 33);
  }
  ASSERT_OK_AND_ASSIGN(Pin g, e->Pin(t, 0, Tier::kGpu, Access::kRead));
  ASSERT_NE(g.device_ptr(), nullptr);
  std::vector<std::byte> seen = dev->Peek(g.device_ptr(), g.size());
  EXPECT_TRUE(AllWords(seen, 33));
}

TEST_F(SharedTensorEngineTest, SharedTensorsNeedTheShmTier) {
  EngineOptions o;
  o.tiers = {Tier::kHost};
  o.host.capacity_bytes = 8 << 20;
  ASSERT_OK_AND_ASSIGN(auto e, Engine::Open(o));
  EXPECT_STATUS(e->CreateSharedTensor("x", {.shape = {16}}), absl::StatusCode::kFailedPrecondition);
  o.tiers = {Tier::kHost, Tier::kShm};
  EXPECT_STATUS(Engine::Open(o), absl::StatusCode::kInvalidArgument) << "no segment name";
}

TEST_F(SharedTensorEngineTest, InspectListsAndRemovesSegments) {
  const std::string name = UniqueName("inspect");
  names_.push_back(name);
  ASSERT_OK_AND_ASSIGN(auto e, OpenEngine(name));
  ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateSharedTensor("a", {.shape = {8192}, .block_bytes = 4096}));
  ASSERT_OK_AND_ASSIGN(Pin p, e->Pin(t, 0, Tier::kShm, Access::kRead));
  ASSERT_OK_AND_ASSIGN(ShmSegmentInfo info, InspectShmSegment(name));
  EXPECT_EQ(info.tensors, 1u);
  EXPECT_EQ(info.blocks, 8u);  // 8192 f32 in 4 KiB blocks
  ASSERT_EQ(info.processes.size(), 1u) << "the engine, not the inspector";
  EXPECT_EQ(info.processes[0].read_pins, 1u);
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, ListShmSegments());
  EXPECT_NE(std::find(names.begin(), names.end(), name), names.end());
  p = Pin();
  ASSERT_OK(RemoveShmSegment(name));
  EXPECT_STATUS(RemoveShmSegment(name), absl::StatusCode::kNotFound);
  EXPECT_STATUS(InspectShmSegment(name), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace strata
