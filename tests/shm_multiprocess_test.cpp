// The node segment across processes (fork + exec of tests/shm_child.cc):
// processes killed at random instants, racing creators, a creator killed
// holding the lock, dead pinners reclaimed by waiters and by the watchdog.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tiers/shm/segment.h"

namespace strata {
namespace {

using tiers::shm::OpenMode;
using tiers::shm::Segment;
using tiers::shm::SegmentOptions;
using tiers::shm::SharedPin;
using tiers::shm::SharedRef;
using tiers::shm::SharedSpec;

// A child process running shm_child, its stdout on a pipe.
class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    const char* path = std::getenv("STRATA_SHM_CHILD");
    if (path == nullptr) {
      error_ = "STRATA_SHM_CHILD is not set (meson test sets it)";
      return;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      error_ = "pipe failed";
      return;
    }
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(path));
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      execv(path, argv.data());
      _exit(127);
    }
    close(fds[1]);
    out_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (out_ >= 0) close(out_);
  }
  const std::string& error() const { return error_; }
  int pid() const { return pid_; }

  // True once the child said "ready" (within 10 s).
  bool WaitReady() {
    std::string got;
    char c;
    while (got.find("ready") == std::string::npos) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 10000) <= 0) return false;
      if (read(out_, &c, 1) != 1) return false;
      got.push_back(c);
    }
    return true;
  }
  // The wait status.
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    return status;
  }
  int Kill() {
    kill(pid_, SIGKILL);
    return Wait();
  }

 private:
  std::string error_;
  int pid_ = -1;
  int out_ = -1;
  bool reaped_ = false;
};

class ShmMultiprocessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.name = absl::StrCat("mp-", getpid(), "-", counter_++);
    options_.capacity_bytes = uint64_t{4} << 20;
    options_.max_processes = 8;
    options_.max_tensors = 64;
    options_.reclaim_interval = absl::ZeroDuration();
    options_.log = [](std::string_view) {};
  }
  void TearDown() override { (void)Segment::Remove(options_.name); }

  static SharedSpec Spec(uint64_t blocks, uint64_t block_bytes) {
    return {.dtype = DType::kU8,
            .shape = {static_cast<int64_t>(blocks * block_bytes)},
            .block_bytes = block_bytes,
            .size_bytes = blocks * block_bytes,
            .num_blocks = blocks};
  }
  static absl::Duration Deadline() { return absl::Seconds(10); }

  // Every block of `t` reads as one repeated 8-byte word (never torn).
  static void ExpectWhole(Segment& seg, const SharedRef& t, std::string_view when) {
    for (uint64_t b = 0; b < t.spec.num_blocks; ++b) {
      absl::StatusOr<SharedPin> pinned = seg.Pin(t, b, Access::kRead, Deadline());
      ASSERT_OK(pinned) << when;
      const SharedPin p = *pinned;
      const auto* w = reinterpret_cast<const uint64_t*>(p.data);
      uint64_t torn = 0;
      for (uint64_t i = 1; i < p.size / 8; ++i) torn += w[i] != w[0];
      seg.Unpin(p.record, p.count, false);
      ASSERT_EQ(torn, 0u) << "block " << b << " " << when;
    }
  }

  void RunKillCycles(bool spill);

  SegmentOptions options_;
  static inline int counter_ = 0;
};

// 200 times: a child pins random blocks for reading and writing and is
// SIGKILLed at a random instant. After each: no pin of it is left, every
// block is whole (the last sealed bytes), no frame leaked, no wait hangs.
// With `spill`, the segment holds fewer frames than the tensor has blocks,
// so the child also evicts and loads (and dies doing it).
void ShmMultiprocessTest::RunKillCycles(bool spill) {
  test::TempDir dir;
  if (spill) {
    options_.spill_dir = dir.path();
    options_.capacity_bytes = 96 << 10;  // the table and five 16 KiB frames
  }
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(options_));
  ASSERT_OK_AND_ASSIGN(auto empty, seg->Stat());
  ASSERT_OK_AND_ASSIGN(SharedRef t, seg->CreateTensor("t", Spec(8, 16384), false));
  ASSERT_OK_AND_ASSIGN(auto with_table, seg->Stat());
  const uint64_t table_bytes = with_table.used_bytes - empty.used_bytes;
  ExpectWhole(*seg, t, "at the start");  // every block resident or spilled
  std::mt19937_64 rng(42);
  const int cycles = std::getenv("STRATA_SHM_KILL_CYCLES") != nullptr
                         ? std::atoi(std::getenv("STRATA_SHM_KILL_CYCLES"))
                         : 200;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    Child child({"hammer", options_.name, std::to_string(cycle + 1)});
    ASSERT_EQ(child.error(), "");
    ASSERT_TRUE(child.WaitReady()) << "cycle " << cycle;
    // A random instant: mostly inside its first pins, sometimes later.
    usleep(static_cast<useconds_t>(rng() % 4 == 0 ? rng() % 20000 : rng() % 2000));
    const int status = child.Kill();
    ASSERT_TRUE(WIFSIGNALED(status)) << "cycle " << cycle << ": the child exited "
                                     << WEXITSTATUS(status) << " (3: it read a torn block)";
    ASSERT_OK_AND_ASSIGN(int reclaimed, seg->ReclaimDead());
    EXPECT_EQ(reclaimed, 1) << "cycle " << cycle;
    ASSERT_OK_AND_ASSIGN(auto s, seg->Stat());
    ASSERT_EQ(s.processes.size(), 1u) << "cycle " << cycle;
    ASSERT_EQ(s.pinned_bytes, 0u) << "cycle " << cycle << ": leaked pins";
    ASSERT_EQ(s.used_bytes, empty.used_bytes + table_bytes + s.resident_blocks * 16384)
        << "cycle " << cycle << ": leaked frames";
    if (!spill) {
      ASSERT_EQ(s.resident_blocks, 8u);
    }
    ExpectWhole(*seg, t, absl::StrCat("after cycle ", cycle));
  }
  ASSERT_OK_AND_ASSIGN(auto after, seg->Stat());
  EXPECT_EQ(after.dead_reclaimed, static_cast<uint64_t>(cycles));
  if (spill) {
    EXPECT_GT(after.spills, 0u);
    EXPECT_GT(after.spill_loads, 0u);
  }
}

TEST_F(ShmMultiprocessTest, KillCyclesLeaveNoPinsNoTornBlocksNoLeaks) {
  RunKillCycles(/*spill=*/false);
}

TEST_F(ShmMultiprocessTest, KillCyclesWhileSpillingLoseNothing) {
  RunKillCycles(/*spill=*/true);
}

TEST_F(ShmMultiprocessTest, OfTwoRacingCreatorsExactlyOneWins) {
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(options_));
  for (int round = 0; round < 20; ++round) {
    const std::string name = absl::StrCat("raced", round);
    Child a({"create", options_.name, name});
    Child b({"create", options_.name, name});
    ASSERT_EQ(a.error(), "");
    const int sa = a.Wait(), sb = b.Wait();
    ASSERT_TRUE(WIFEXITED(sa) && WIFEXITED(sb));
    const int ea = WEXITSTATUS(sa), eb = WEXITSTATUS(sb);
    EXPECT_TRUE((ea == 0 && eb == 10) || (ea == 10 && eb == 0))
        << "round " << round << ": exits " << ea << " and " << eb;
  }
  ASSERT_OK_AND_ASSIGN(auto s, seg->Stat());
  EXPECT_EQ(s.tensors, 20u);
}

TEST_F(ShmMultiprocessTest, ACreatorKilledHoldingTheLockIsRepairedAndTheNameFree) {
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(options_));
  ASSERT_OK_AND_ASSIGN(auto before, seg->Stat());
  Child dier({"create-die", options_.name, "half"});
  ASSERT_EQ(dier.error(), "");
  const int status = dier.Wait();
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // The next lock taker meets EOWNERDEAD, forgets the half-made tensor and
  // rebuilds the allocator: the name is free and nothing leaked.
  EXPECT_STATUS(seg->OpenTensor("half"), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto s, seg->Stat());
  EXPECT_EQ(s.lock_repairs, 1u);
  EXPECT_EQ(s.used_bytes, before.used_bytes);
  EXPECT_EQ(s.tensors, 0u);
  ASSERT_OK(seg->CreateTensor("half", Spec(4, 16384), false));
}

TEST_F(ShmMultiprocessTest, AWriterWaitingOnADeadReaderGetsTheBlock) {
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(options_));
  ASSERT_OK_AND_ASSIGN(SharedRef t, seg->CreateTensor("t", Spec(2, 16384), false));
  Child reader({"pin", options_.name, "1", "r"});
  ASSERT_TRUE(reader.WaitReady());
  ASSERT_OK_AND_ASSIGN(auto s, seg->Stat());
  EXPECT_EQ(s.pinned_bytes, 16384u);
  reader.Kill();
  // The waiting writer itself finds the reader dead (within its 1 s).
  ASSERT_OK_AND_ASSIGN(SharedPin w, seg->Pin(t, 1, Access::kOverwrite,
                                             absl::Seconds(1)));
  seg->Unpin(w.record, w.count, true);
}

TEST_F(ShmMultiprocessTest, AWriterKilledBeforeSealingLeavesTheSealedBytes) {
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(options_));
  ASSERT_OK_AND_ASSIGN(SharedRef t, seg->CreateTensor("t", Spec(2, 16384), false));
  {
    ASSERT_OK_AND_ASSIGN(SharedPin w, seg->Pin(t, 0, Access::kOverwrite, Deadline()));
    std::memset(w.data, 0x42, w.size);
    seg->Unpin(w.record, w.count, true);
  }
  Child writer({"pin", options_.name, "0", "w"});  // fills with 0xEE, never seals
  ASSERT_TRUE(writer.WaitReady());
  writer.Kill();
  ASSERT_OK_AND_ASSIGN(SharedPin r, seg->Pin(t, 0, Access::kRead, absl::Seconds(1)));
  EXPECT_EQ(std::to_integer<int>(r.data[0]), 0x42);
  EXPECT_EQ(std::to_integer<int>(r.data[r.size - 1]), 0x42);
  seg->Unpin(r.record, r.count, false);
}

TEST_F(ShmMultiprocessTest, TheWatchdogReclaimsADeadProcessWithinOneSecond) {
  options_.reclaim_interval = absl::Milliseconds(200);
  ASSERT_OK_AND_ASSIGN(auto seg, Segment::Open(options_));
  ASSERT_OK(seg->CreateTensor("t", Spec(2, 16384), false));
  Child reader({"pin", options_.name, "0", "r"});
  ASSERT_TRUE(reader.WaitReady());
  reader.Kill();
  // Nobody here waits on the block: only the watchdog can notice.
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  uint64_t reclaimed = 0;
  while (absl::Now() < deadline) {
    ASSERT_OK_AND_ASSIGN(auto s, seg->Stat());
    reclaimed = s.dead_reclaimed;
    if (reclaimed == 1) {
      EXPECT_EQ(s.pinned_bytes, 0u);
      EXPECT_EQ(s.pins_reclaimed, 1u);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(reclaimed, 1u) << "not reclaimed within one second";
}

}  // namespace
}  // namespace strata
