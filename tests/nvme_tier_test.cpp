// Unit tests of the NVMe tier (tiers/nvme/): frames, batched transfers on the
// registered and unregistered paths, bad configurations, locking, and
// detection of corruption on disk. Fault injection lives in
// nvme_fault_test.cpp.
#include "tiers/nvme/nvme_tier.h"

#include <cpuid.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/nvme_test_util.h"
#include "tiers/nvme/fault_backend.h"
#include "tiers/nvme/io_backend.h"
#include "util/checksum.h"

namespace strata::tiers {
namespace {

using ::testing::HasSubstr;

using test::Fill;
using test::HostBuffer;
using test::Job;
using test::Latch;
using test::OnDone;
using test::Str;
using test::TempDir;

// Submits `jobs` as one batch and waits for every completion.
void RunBatch(Tier& tier, std::vector<std::unique_ptr<Job>>& jobs) {
  Latch latch(static_cast<int>(jobs.size()));
  std::vector<Transfer*> batch;
  for (auto& job : jobs) {
    job->calls = 0;
    job->latch = &latch;
    job->t.user = job.get();
    job->t.on_done = &OnDone;
    job->t.status = absl::UnknownError("not completed");
    batch.push_back(&job->t);
  }
  ASSERT_TRUE(tier.Submit(batch).ok());
  ASSERT_TRUE(latch.Wait()) << "transfers did not complete";
  for (auto& job : jobs) EXPECT_EQ(job->calls.load(), 1);
}

// Pseudo-random bytes, 8 at a time (splitmix64: fast and seedable).
NvmeConfig Config(const std::string& path, bool register_buffers,
                  uint64_t capacity = uint64_t{64} << 20,
                  uint32_t queue_depth = 32) {
  return NvmeConfig{.path = path,
                    .capacity_bytes = capacity,
                    .queue_depth = queue_depth,
                    .register_buffers = register_buffers,
                    .log = nullptr};
}

// Writes `sizes.size()` blocks, reads them back into cleared memory, checks
// bytes, statuses and exactly-once completion.
void RoundTrip(Tier& tier, std::span<std::byte> arena,
               const std::vector<size_t>& sizes, uint64_t frame_bytes) {
  std::vector<std::unique_ptr<Job>> jobs;
  std::vector<Frame> frames;
  size_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    absl::StatusOr<Frame> frame = tier.Allocate(frame_bytes);
    ASSERT_TRUE(frame.ok()) << frame.status();
    EXPECT_EQ(frame->offset % 4096, 0u);
    frames.push_back(*frame);
    auto job = std::make_unique<Job>();
    job->t.op = Transfer::Op::kWrite;
    job->t.key = {.tensor_id = 7, .block = i, .version = 3};
    job->t.frame = *frame;
    ASSERT_LE(at + sizes[i], arena.size());
    job->t.host = arena.subspan(at, sizes[i]);
    Fill(job->t.host.data(), sizes[i], i);
    at += (sizes[i] + 4095) / 4096 * 4096;
    jobs.push_back(std::move(job));
  }
  RunBatch(tier, jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_TRUE(jobs[i]->t.status.ok()) << i << ": " << jobs[i]->t.status;
    EXPECT_EQ(jobs[i]->t.checksum,
              BlockChecksum(jobs[i]->t.host, 7, i, 3));
  }
  std::memset(arena.data(), 0, arena.size());
  for (auto& job : jobs) job->t.op = Transfer::Op::kRead;
  RunBatch(tier, jobs);
  std::vector<std::byte> expected;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_TRUE(jobs[i]->t.status.ok()) << i << ": " << jobs[i]->t.status;
    expected.resize(sizes[i]);
    Fill(expected.data(), sizes[i], i);
    EXPECT_EQ(std::memcmp(expected.data(), jobs[i]->t.host.data(), sizes[i]),
              0)
        << "block " << i;
  }
  for (const Frame& f : frames) tier.Free(f);
  EXPECT_EQ(tier.used(), 0u);
}

// ------------------------------------------------------- transfers

class NvmeRoundTrip : public ::testing::TestWithParam<bool> {};

TEST_P(NvmeRoundTrip, ManyBlocksInOneBatch) {
  const bool registered = GetParam();
  TempDir dir;
  auto faults = std::make_shared<FaultInjector>();  // never armed: counts ops
  std::vector<std::string> logs;
  NvmeConfig config = Config(dir.path(), registered);
  config.log = [&logs](std::string_view m) { logs.emplace_back(m); };
  auto tier = MakeNvmeTier(config, MakeFaultInjectingBackend(faults));
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_EQ((*tier)->name(), "nvme");
  EXPECT_FALSE((*tier)->addressable());

  HostBuffer arena(size_t{8} << 20);
  EXPECT_TRUE((*tier)
                  ->RegisterHostMemory({arena.data(), arena.size()})
                  .ok());
  // 100 blocks of 64 KiB, a few with unaligned sizes (a tensor's last block).
  std::vector<size_t> sizes(100, 64 << 10);
  sizes[17] = 1;
  sizes[42] = 4095;
  sizes[63] = 4097;
  sizes[99] = 65536 - 513;
  RoundTrip(**tier, {arena.data(), arena.size()}, sizes, 64 << 10);
  EXPECT_EQ((*tier)->bytes_in(), (*tier)->bytes_out());

  EXPECT_EQ(faults->ops_seen(), 200u);
  if (registered) {
    EXPECT_EQ(faults->fixed_ops_seen(), 200u);
  } else {
    EXPECT_EQ(faults->fixed_ops_seen(), 0u);
  }
  EXPECT_TRUE(logs.empty());
}

TEST_P(NvmeRoundTrip, BatchLargerThanQueueDepth) {
  TempDir dir;
  auto tier = MakeNvmeTier(
      Config(dir.path(), GetParam(), uint64_t{64} << 20, /*queue_depth=*/4));
  ASSERT_TRUE(tier.ok()) << tier.status();
  HostBuffer arena(size_t{4} << 20);
  ASSERT_TRUE(
      (*tier)->RegisterHostMemory({arena.data(), arena.size()}).ok());
  RoundTrip(**tier, {arena.data(), arena.size()},
            std::vector<size_t>(128, 32 << 10), 32 << 10);
}

INSTANTIATE_TEST_SUITE_P(Registered, NvmeRoundTrip, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "Registered" : "Unregistered";
                         });

#if defined(__x86_64__)
// Whether XGETBV with ECX=1 (XINUSE: which register state is in use) exists.
bool HasXInUse() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(0xd, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & 4) != 0;
}

// XINUSE bit 2: the upper halves of the YMM registers are in use.
bool UpperVectorStateInUse() {
  uint32_t lo = 0, hi = 0;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1));
  return (lo & 4) != 0;
}

// A write-back's checksum runs on the thread that submits it, often a
// pinning thread, and libxxhash's AVX2/AVX-512 code returns with the upper
// halves of the vector registers in use: the SSE code the pin's caller ran
// next (a trainer's optimizer) was 2-5x slower in stretches
// (docs/PERFORMANCE.md).
TEST(BlockChecksumTest, LeavesTheUpperVectorStateClean) {
  if (!HasXInUse() || !__builtin_cpu_supports("avx")) {
    GTEST_SKIP() << "this CPU reports no AVX or no XGETBV with ECX=1";
  }
  std::vector<std::byte> block(2 << 20, std::byte{1});
  const uint64_t sum = BlockChecksum(block, 7, 0, 1);
  const bool dirty = UpperVectorStateInUse();
  EXPECT_NE(sum, BlockChecksum(block, 7, 1, 1));  // the seed still counts
  EXPECT_FALSE(dirty);
}
#endif

TEST(NvmeTier, BlockLargerThanOneSqeAndPartlyRegistered) {
  TempDir dir;
  auto tier = MakeNvmeTier(Config(dir.path(), true));
  ASSERT_TRUE(tier.ok()) << tier.status();
  HostBuffer arena(size_t{12} << 20);
  // Only the first half is registered: blocks in the other half go
  // unregistered, one straddles the boundary.
  ASSERT_TRUE((*tier)->RegisterHostMemory({arena.data(), size_t{6} << 20}).ok());
  RoundTrip(**tier, {arena.data(), arena.size()},
            {size_t{4} << 20, size_t{4} << 20, (size_t{3} << 20) + 5},
            uint64_t{4} << 20);
}

TEST(NvmeTier, ZeroLengthTransferCompletes) {
  TempDir dir;
  auto tier = MakeNvmeTier(Config(dir.path(), false));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto frame = (*tier)->Allocate(4096);
  ASSERT_TRUE(frame.ok());
  std::vector<std::unique_ptr<Job>> jobs;
  jobs.push_back(std::make_unique<Job>());
  jobs[0]->t.op = Transfer::Op::kWrite;
  jobs[0]->t.frame = *frame;
  RunBatch(**tier, jobs);
  EXPECT_TRUE(jobs[0]->t.status.ok()) << jobs[0]->t.status;
  jobs[0]->t.op = Transfer::Op::kRead;
  RunBatch(**tier, jobs);
  EXPECT_TRUE(jobs[0]->t.status.ok()) << jobs[0]->t.status;
}

TEST(NvmeTier, RejectsMisalignedHostMemoryAndForeignFrames) {
  TempDir dir;
  auto tier = MakeNvmeTier(Config(dir.path(), false));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto frame = (*tier)->Allocate(8192);
  ASSERT_TRUE(frame.ok());
  HostBuffer host(16384);
  Job job;
  job.t.on_done = &OnDone;
  job.t.frame = *frame;
  job.t.host = {host.data() + 1, 100};
  Transfer* batch[] = {&job.t};
  absl::Status s = (*tier)->Submit(batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(Str(s.message()), HasSubstr("aligned"));
  job.t.host = {host.data(), 100};
  job.t.frame.offset = 100;  // not a frame of this tier
  s = (*tier)->Submit(batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(job.calls.load(), 0);
}

// on_done may submit again (the engine chains a read after a write); with a
// queue depth of 1 that must not deadlock the completion thread.
struct Chain {
  Transfer write;
  Transfer read;
  Tier* tier = nullptr;
  Latch* latch = nullptr;
  absl::Status submit_status;
};

void OnChainWrite(Transfer* t) {
  Chain* c = static_cast<Chain*>(t->user);
  if (!t->status.ok()) {
    c->submit_status = t->status;
    c->latch->CountDown();
    return;
  }
  c->read.checksum = t->checksum;
  Transfer* batch[] = {&c->read};
  c->submit_status = c->tier->Submit(batch);
  if (!c->submit_status.ok()) c->latch->CountDown();
}

void OnChainRead(Transfer* t) {
  static_cast<Chain*>(t->user)->latch->CountDown();
}

TEST(NvmeTier, OnDoneMaySubmit) {
  TempDir dir;
  auto tier = MakeNvmeTier(
      Config(dir.path(), false, uint64_t{64} << 20, /*queue_depth=*/1));
  ASSERT_TRUE(tier.ok()) << tier.status();
  constexpr int kChains = 16;
  HostBuffer out(kChains * 8192), in(kChains * 8192);
  Fill(out.data(), out.size(), 5);
  std::vector<Chain> chains(kChains);
  Latch latch(kChains);
  std::vector<Transfer*> writes;
  for (int i = 0; i < kChains; ++i) {
    auto frame = (*tier)->Allocate(8192);
    ASSERT_TRUE(frame.ok());
    Chain& c = chains[i];
    c.tier = tier->get();
    c.latch = &latch;
    c.write = {.op = Transfer::Op::kWrite,
               .key = {1, static_cast<uint64_t>(i), 1},
               .frame = *frame,
               .host = {out.data() + i * 8192, 8192},
               .on_done = &OnChainWrite,
               .user = &c};
    c.read = c.write;
    c.read.op = Transfer::Op::kRead;
    c.read.host = {in.data() + i * 8192, 8192};
    c.read.on_done = &OnChainRead;
    writes.push_back(&c.write);
  }
  ASSERT_TRUE((*tier)->Submit(writes).ok());
  ASSERT_TRUE(latch.Wait());
  for (Chain& c : chains) {
    EXPECT_TRUE(c.submit_status.ok()) << c.submit_status;
    EXPECT_TRUE(c.read.status.ok()) << c.read.status;
  }
  EXPECT_EQ(std::memcmp(out.data(), in.data(), out.size()), 0);
}

TEST(NvmeTier, DestructorCompletesEverythingInFlight) {
  TempDir dir;
  auto tier = MakeNvmeTier(
      Config(dir.path(), false, uint64_t{64} << 20, /*queue_depth=*/8));
  ASSERT_TRUE(tier.ok()) << tier.status();
  HostBuffer arena(size_t{4} << 20);
  std::vector<std::unique_ptr<Job>> jobs;
  Latch latch(64);
  std::vector<Transfer*> batch;
  for (int i = 0; i < 64; ++i) {
    auto frame = (*tier)->Allocate(64 << 10);
    ASSERT_TRUE(frame.ok());
    auto job = std::make_unique<Job>();
    job->latch = &latch;
    job->t = {.op = Transfer::Op::kWrite,
              .key = {2, static_cast<uint64_t>(i), 1},
              .frame = *frame,
              .host = {arena.data() + i * (64 << 10), 64 << 10},
              .on_done = &OnDone,
              .user = job.get()};
    batch.push_back(&job->t);
    jobs.push_back(std::move(job));
  }
  ASSERT_TRUE((*tier)->Submit(batch).ok());
  tier->reset();  // waits for every transfer
  for (auto& job : jobs) {
    EXPECT_EQ(job->calls.load(), 1);
    EXPECT_TRUE(job->t.status.ok()) << job->t.status;
  }
}

// Submit is all-or-nothing (tiers/tier.h). The tier checksums and queues a
// batch in ~1 MiB chunks, so the decision to take the batch must cover every
// chunk: here the tier starts shutting down while it queues the first chunk
// of a batch that an on_done submits, and either every transfer of that batch
// completes through its on_done, or Submit refuses it and none does.
//
// The backend below makes the first io_uring_submit of that batch report
// EAGAIN (kUnavailable) a few times, once the test thread is on its way into
// the destructor: the tier drops its lock between those attempts, which lets
// the destructor in between the first chunk and the later ones.
class StallingBackend final : public IoBackend {
 public:
  struct Control {
    std::mutex mu;
    std::condition_variable cv;
    bool armed = false;      // the next Submit stalls
    bool stalled = false;    // it did
    bool resetting = false;  // the test thread is destroying the tier
    int unavailable_left = 0;
  };

  explicit StallingBackend(std::shared_ptr<Control> control)
      : control_(std::move(control)), inner_(MakeUringBackend()) {}

  absl::Status Open(int fd, uint32_t queue_depth) override {
    return inner_->Open(fd, queue_depth);
  }
  absl::Status RegisterFile() override { return inner_->RegisterFile(); }
  absl::Status RegisterBuffers(std::span<const iovec> buffers) override {
    return inner_->RegisterBuffers(buffers);
  }
  void UnregisterBuffers() override { inner_->UnregisterBuffers(); }
  bool Prepare(const IoOp& op) override { return inner_->Prepare(op); }
  absl::StatusOr<uint32_t> Submit() override {
    {
      std::unique_lock<std::mutex> lock(control_->mu);
      if (control_->armed) {
        control_->armed = false;
        control_->stalled = true;
        control_->cv.notify_all();
        control_->cv.wait_for(lock, std::chrono::seconds(20),
                              [this] { return control_->resetting; });
        // The tier retries 8 times, sleeping 0.1, 0.2, ... 6.4 ms without
        // its lock: 7 refusals leave the destructor ~13 ms to get in.
        control_->unavailable_left = 6;
        return absl::UnavailableError("test: io_uring_submit is busy");
      }
      if (control_->unavailable_left > 0) {
        --control_->unavailable_left;
        return absl::UnavailableError("test: io_uring_submit is busy");
      }
    }
    return inner_->Submit();
  }
  absl::Status Reap(std::vector<IoCompletion>& out,
                    absl::Duration timeout) override {
    return inner_->Reap(out, timeout);
  }

 private:
  std::shared_ptr<Control> control_;
  std::unique_ptr<IoBackend> inner_;
};

// What the first transfer's on_done submits: a batch of several checksum
// chunks.
struct FollowUp {
  Tier* tier = nullptr;
  StallingBackend::Control* control = nullptr;
  std::vector<Transfer*> batch;
  absl::Status status = absl::UnknownError("not submitted");
  std::atomic<bool> submitted{false};
};

void OnFirstDone(Transfer* t) {
  FollowUp* f = static_cast<FollowUp*>(t->user);
  {
    std::lock_guard<std::mutex> lock(f->control->mu);
    f->control->armed = true;
  }
  f->status = f->tier->Submit(f->batch);
  f->submitted = true;
}

TEST(NvmeTier, BatchSubmittedDuringShutdownIsWhollyTakenOrWhollyRefused) {
  TempDir dir;
  auto control = std::make_shared<StallingBackend::Control>();
  auto tier = MakeNvmeTier(Config(dir.path(), false),
                           std::make_unique<StallingBackend>(control));
  ASSERT_TRUE(tier.ok()) << tier.status();

  // 12 writes of 256 KiB: three checksum chunks of ~1 MiB.
  constexpr int kFollowUps = 12;
  constexpr size_t kBytes = 256 << 10;
  HostBuffer arena(kFollowUps * kBytes + 4096);
  Fill(arena.data(), arena.size(), 11);
  Latch latch(kFollowUps);
  std::vector<std::unique_ptr<Job>> jobs;
  FollowUp follow_up{.tier = tier->get(), .control = control.get()};
  for (int i = 0; i < kFollowUps; ++i) {
    auto frame = (*tier)->Allocate(kBytes);
    ASSERT_TRUE(frame.ok()) << frame.status();
    auto job = std::make_unique<Job>();
    job->latch = &latch;
    job->t = {.op = Transfer::Op::kWrite,
              .key = {5, static_cast<uint64_t>(i), 1},
              .frame = *frame,
              .host = {arena.data() + 4096 + i * kBytes, kBytes},
              .status = absl::UnknownError("not completed"),
              .on_done = &OnDone,
              .user = job.get()};
    follow_up.batch.push_back(&job->t);
    jobs.push_back(std::move(job));
  }
  auto frame = (*tier)->Allocate(4096);
  ASSERT_TRUE(frame.ok()) << frame.status();
  Transfer first{.op = Transfer::Op::kWrite,
                 .key = {5, 100, 1},
                 .frame = *frame,
                 .host = {arena.data(), 4096},
                 .on_done = &OnFirstDone,
                 .user = &follow_up};
  Transfer* batch[] = {&first};
  ASSERT_TRUE((*tier)->Submit(batch).ok());

  {
    std::unique_lock<std::mutex> lock(control->mu);
    ASSERT_TRUE(control->cv.wait_for(lock, std::chrono::seconds(20),
                                     [&] { return control->stalled; }))
        << "the follow-up batch never reached io_uring_submit";
    control->resetting = true;
    control->cv.notify_all();
  }
  tier->reset();  // completes or fails everything it took

  ASSERT_TRUE(follow_up.submitted.load());
  EXPECT_TRUE(first.status.ok()) << first.status;
  int completed = 0;
  for (auto& job : jobs) {
    EXPECT_LE(job->calls.load(), 1);
    completed += job->calls.load();
  }
  if (follow_up.status.ok()) {
    EXPECT_EQ(completed, kFollowUps)
        << "Submit took the batch but only " << completed << " of "
        << kFollowUps << " transfers completed";
  } else {
    EXPECT_EQ(completed, 0) << "Submit refused the batch (" << follow_up.status
                            << ") after " << completed
                            << " of its transfers had started";
  }
}

// A batch whose last transfer is bad is refused before any of it starts.
TEST(NvmeTier, BatchWithABadLastTransferStartsNothing) {
  TempDir dir;
  auto faults = std::make_shared<FaultInjector>();  // never armed: counts ops
  auto tier = MakeNvmeTier(Config(dir.path(), false),
                           MakeFaultInjectingBackend(faults));
  ASSERT_TRUE(tier.ok()) << tier.status();
  constexpr int kJobs = 12;  // three checksum chunks of 256 KiB writes
  constexpr size_t kBytes = 256 << 10;
  HostBuffer arena(kJobs * kBytes + 4096);
  std::vector<std::unique_ptr<Job>> jobs;
  std::vector<Transfer*> batch;
  Latch latch(kJobs);
  for (int i = 0; i < kJobs; ++i) {
    auto frame = (*tier)->Allocate(kBytes);
    ASSERT_TRUE(frame.ok()) << frame.status();
    auto job = std::make_unique<Job>();
    job->latch = &latch;
    job->t = {.op = Transfer::Op::kWrite,
              .key = {6, static_cast<uint64_t>(i), 1},
              .frame = *frame,
              .host = {arena.data() + i * kBytes, kBytes},
              .on_done = &OnDone,
              .user = job.get()};
    batch.push_back(&job->t);
    jobs.push_back(std::move(job));
  }
  for (int bad = 0; bad < 3; ++bad) {
    Transfer& last = jobs.back()->t;
    const Transfer saved = last;
    switch (bad) {
      case 0:  // host memory not aligned for O_DIRECT
        last.host = {arena.data() + (kJobs - 1) * kBytes + 512, 4096};
        break;
      case 1:  // not a frame of this tier
        last.frame.offset += 512;
        break;
      case 2:  // beyond the tier's capacity
        last.frame.offset = uint64_t{1} << 40;
        break;
    }
    absl::Status s = (*tier)->Submit(batch);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
    last = saved;
  }
  EXPECT_EQ(faults->ops_seen(), 0u);
  EXPECT_EQ((*tier)->bytes_in(), 0u);
  for (auto& job : jobs) EXPECT_EQ(job->calls.load(), 0);
}

// ---------------------------------------------------------- frames

TEST(NvmeTier, AllocateUntilFullThenFreeAndReuse) {
  TempDir dir;
  constexpr uint64_t kFrame = 64 << 10;
  auto tier = MakeNvmeTier(Config(dir.path(), false, 16 * kFrame));
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_EQ((*tier)->capacity(), 16 * kFrame);
  std::vector<Frame> frames;
  for (int i = 0; i < 16; ++i) {
    auto frame = (*tier)->Allocate(kFrame - 100);  // rounded up
    ASSERT_TRUE(frame.ok()) << i << ": " << frame.status();
    EXPECT_EQ(frame->bytes, kFrame);
    EXPECT_EQ(frame->offset, i * kFrame);
    frames.push_back(*frame);
  }
  EXPECT_EQ((*tier)->used(), 16 * kFrame);
  auto full = (*tier)->Allocate(kFrame);
  ASSERT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted)
      << full.status();
  EXPECT_THAT(Str(full.status().message()), HasSubstr(dir.path()));
  EXPECT_THAT(Str(full.status().message()), HasSubstr("is full"));
  EXPECT_THAT(Str(full.status().message()),
              HasSubstr("EngineOptions::nvme.capacity_bytes"));

  (*tier)->Free(frames[5]);
  auto again = (*tier)->Allocate(kFrame);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->offset, frames[5].offset);

  // Smaller frames are carved out of a free larger extent when full.
  (*tier)->Free(frames[9]);
  std::vector<uint64_t> small;
  for (int i = 0; i < 4; ++i) {
    auto s = (*tier)->Allocate(16 << 10);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_GE(s->offset, frames[9].offset);
    EXPECT_LT(s->offset, frames[9].offset + kFrame);
    small.push_back(s->offset);
  }
  std::sort(small.begin(), small.end());
  EXPECT_EQ(std::unique(small.begin(), small.end()), small.end());
  EXPECT_EQ((*tier)->Allocate(4096).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*tier)->Allocate(0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NvmeTier, FramesBeyondAChunkArePreallocated) {
  TempDir dir;
  auto tier = MakeNvmeTier(Config(dir.path(), false, uint64_t{600} << 20));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto a = (*tier)->Allocate(uint64_t{300} << 20);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = (*tier)->Allocate(uint64_t{300} << 20);
  ASSERT_TRUE(b.ok()) << b.status();
  struct stat st;
  ASSERT_EQ(::stat(dir.file().c_str(), &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_size), uint64_t{600} << 20);
  EXPECT_EQ((*tier)->Allocate(4096).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// ---------------------------------------------------------- configuration

TEST(NvmeTier, RejectsBadConfig) {
  TempDir dir;
  EXPECT_EQ(MakeNvmeTier(Config("", false)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeNvmeTier(Config(dir.path(), false, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeNvmeTier(Config(dir.path(), false, 1 << 20, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      MakeNvmeTier(Config(dir.path(), false, 1 << 20, 1 << 20)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(NvmeTier, CreatesThePathWithItsParents) {
  TempDir dir;
  {
    auto tier = MakeNvmeTier(Config(dir.path() + "/tier", false));
    ASSERT_TRUE(tier.ok()) << tier.status();
    EXPECT_TRUE(std::filesystem::exists(dir.path() + "/tier/blocks.strata"));
  }
  {
    auto tier = MakeNvmeTier(Config(dir.path() + "/a/b/c/tier", false));
    ASSERT_TRUE(tier.ok()) << tier.status();
    EXPECT_TRUE(
        std::filesystem::exists(dir.path() + "/a/b/c/tier/blocks.strata"));
  }
  {
    // Existing parents, doubled and trailing slashes.
    auto tier = MakeNvmeTier(Config(dir.path() + "//a/b//d/e/", false));
    ASSERT_TRUE(tier.ok()) << tier.status();
    EXPECT_TRUE(std::filesystem::exists(dir.path() + "/a/b/d/e/blocks.strata"));
  }
}

TEST(NvmeTier, BadPathsSayWhatToDo) {
  TempDir dir;
  const std::string file = dir.path() + "/a-file";
  { std::FILE* f = std::fopen(file.c_str(), "w"); ASSERT_NE(f, nullptr); std::fclose(f); }

  auto under_file = MakeNvmeTier(Config(file + "/tier", false));
  EXPECT_EQ(under_file.status().code(), absl::StatusCode::kFailedPrecondition)
      << under_file.status();
  EXPECT_THAT(Str(under_file.status().message()), HasSubstr("ENOTDIR"));
  EXPECT_THAT(Str(under_file.status().message()),
              HasSubstr("EngineOptions::nvme.path"));

  // A file in the middle of a deeper path: the error names that component,
  // and nothing is created under it.
  ASSERT_TRUE(std::filesystem::create_directories(dir.path() + "/x/y"));
  const std::string middle = dir.path() + "/x/y/f";
  { std::FILE* f = std::fopen(middle.c_str(), "w"); ASSERT_NE(f, nullptr); std::fclose(f); }
  auto deep = MakeNvmeTier(Config(middle + "/p/q/tier", false));
  EXPECT_EQ(deep.status().code(), absl::StatusCode::kFailedPrecondition)
      << deep.status();
  EXPECT_THAT(Str(deep.status().message()),
              HasSubstr("cannot create " + middle + " (a parent of " + middle +
                        "/p/q/tier)"));
  EXPECT_THAT(Str(deep.status().message()), HasSubstr("not a directory"));
  EXPECT_THAT(Str(deep.status().message()),
              HasSubstr("set EngineOptions::nvme.path to a writable directory"));

  auto is_file = MakeNvmeTier(Config(file, false));
  EXPECT_EQ(is_file.status().code(), absl::StatusCode::kFailedPrecondition)
      << is_file.status();
  EXPECT_THAT(Str(is_file.status().message()), HasSubstr("not a directory"));

  // A dangling symbolic link where a parent should be.
  const std::string link = dir.path() + "/dangling";
  ASSERT_EQ(::symlink((dir.path() + "/nowhere").c_str(), link.c_str()), 0);
  auto missing = MakeNvmeTier(Config(link + "/tier", false));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound)
      << missing.status();
  EXPECT_THAT(Str(missing.status().message()), HasSubstr("dangling"));
  EXPECT_THAT(Str(missing.status().message()), HasSubstr("ENOENT"));
  EXPECT_THAT(Str(missing.status().message()),
              HasSubstr("cannot create " + link + " (a parent of"));

  // sysfs refuses new directories even to root.
  auto sys = MakeNvmeTier(Config("/sys/strata-nvme-test", false));
  EXPECT_EQ(sys.status().code(), absl::StatusCode::kPermissionDenied)
      << sys.status();
  EXPECT_THAT(Str(sys.status().message()),
              HasSubstr("set EngineOptions::nvme.path to a writable directory"));
  auto sys_deep = MakeNvmeTier(Config("/sys/strata-nvme-test/a/b", false));
  EXPECT_EQ(sys_deep.status().code(), absl::StatusCode::kPermissionDenied)
      << sys_deep.status();
  EXPECT_THAT(Str(sys_deep.status().message()),
              HasSubstr("cannot create /sys/strata-nvme-test (a parent of "
                        "/sys/strata-nvme-test/a/b)"));
}

TEST(NvmeTier, SecondTierOnTheSameDirectoryIsRefused) {
  TempDir dir;
  auto first = MakeNvmeTier(Config(dir.path(), false));
  ASSERT_TRUE(first.ok()) << first.status();
  HostBuffer host(4096);
  Fill(host.data(), 4096, 1);
  auto frame = (*first)->Allocate(4096);
  ASSERT_TRUE(frame.ok());
  std::vector<std::unique_ptr<Job>> jobs;
  jobs.push_back(std::make_unique<Job>());
  jobs[0]->t = {.op = Transfer::Op::kWrite, .key = {1, 1, 1},
                .frame = *frame, .host = {host.data(), 4096}};
  RunBatch(**first, jobs);
  ASSERT_TRUE(jobs[0]->t.status.ok());

  auto second = MakeNvmeTier(Config(dir.path(), false));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition)
      << second.status();
  EXPECT_THAT(Str(second.status().message()), HasSubstr("in use"));

  // The refused open must not have truncated the first engine's file.
  std::memset(host.data(), 0, 4096);
  jobs[0]->t.op = Transfer::Op::kRead;
  RunBatch(**first, jobs);
  EXPECT_TRUE(jobs[0]->t.status.ok()) << jobs[0]->t.status;

  first->reset();
  auto third = MakeNvmeTier(Config(dir.path(), false));
  EXPECT_TRUE(third.ok()) << third.status();
}

// ---------------------------------------------------------- corruption

class NvmeCorruption : public ::testing::Test {
 protected:
  static constexpr int kBlocks = 64;
  static constexpr size_t kBlock = 16 << 10;

  void SetUp() override {
    auto tier = MakeNvmeTier(Config(dir_.path(), false));
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = std::move(*tier);
    for (int i = 0; i < kBlocks; ++i) {
      auto frame = tier_->Allocate(kBlock);
      ASSERT_TRUE(frame.ok());
      auto job = std::make_unique<Job>();
      job->t.key = {.tensor_id = 9, .block = static_cast<uint64_t>(i),
                    .version = 1};
      job->t.frame = *frame;
      // The last block of each pair is short, like a tensor's tail.
      const size_t size = i % 2 ? kBlock - 1000 : kBlock;
      job->t.host = {arena_.data() + i * kBlock, size};
      jobs_.push_back(std::move(job));
    }
  }

  void WriteAll() {
    for (int i = 0; i < kBlocks; ++i) {
      Fill(jobs_[i]->t.host.data(), jobs_[i]->t.host.size(), 100 + i);
      jobs_[i]->t.op = Transfer::Op::kWrite;
    }
    RunBatch(*tier_, jobs_);
    for (auto& job : jobs_) ASSERT_TRUE(job->t.status.ok()) << job->t.status;
  }

  // Reads every block back; returns how many failed with kDataLoss whose
  // message contains `what`.
  int ReadAllCountDataLoss(const std::string& what) {
    for (auto& job : jobs_) job->t.op = Transfer::Op::kRead;
    RunBatch(*tier_, jobs_);
    int detected = 0;
    for (auto& job : jobs_) {
      if (job->t.status.code() == absl::StatusCode::kDataLoss &&
          Str(job->t.status.message()).find(what) != std::string::npos) {
        ++detected;
      } else {
        ADD_FAILURE() << "block " << job->t.key.block
                      << " not detected: " << job->t.status;
      }
    }
    return detected;
  }

  // A plain (buffered) descriptor on the tier's file, as a corrupter uses.
  int OpenFile() {
    int fd = ::open(dir_.file().c_str(), O_RDWR);
    EXPECT_GE(fd, 0);
    return fd;
  }

  TempDir dir_;
  HostBuffer arena_{kBlocks * kBlock};
  std::unique_ptr<Tier> tier_;
  std::vector<std::unique_ptr<Job>> jobs_;
};

TEST_F(NvmeCorruption, FlippedBitsAreAllDetected) {
  WriteAll();
  int fd = OpenFile();
  std::mt19937_64 rng(1);
  for (auto& job : jobs_) {
    const uint64_t at = job->t.frame.offset + rng() % job->t.host.size();
    unsigned char byte;
    ASSERT_EQ(::pread(fd, &byte, 1, at), 1);
    byte ^= static_cast<unsigned char>(1u << (rng() % 8));
    ASSERT_EQ(::pwrite(fd, &byte, 1, at), 1);
  }
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
  EXPECT_EQ(ReadAllCountDataLoss("checksum mismatch"), kBlocks);
  EXPECT_THAT(Str(jobs_[3]->t.status.message()),
              HasSubstr("tensor 9 block 3 version 1 at " + dir_.file()));
}

TEST_F(NvmeCorruption, SwappedExtentsAreAllDetected) {
  WriteAll();
  int fd = OpenFile();
  std::vector<char> a(kBlock), b(kBlock);
  for (int i = 0; i + 1 < kBlocks; i += 2) {
    const off_t oa = static_cast<off_t>(jobs_[i]->t.frame.offset);
    const off_t ob = static_cast<off_t>(jobs_[i + 1]->t.frame.offset);
    ASSERT_EQ(::pread(fd, a.data(), kBlock, oa), static_cast<ssize_t>(kBlock));
    ASSERT_EQ(::pread(fd, b.data(), kBlock, ob), static_cast<ssize_t>(kBlock));
    ASSERT_EQ(::pwrite(fd, b.data(), kBlock, oa), static_cast<ssize_t>(kBlock));
    ASSERT_EQ(::pwrite(fd, a.data(), kBlock, ob), static_cast<ssize_t>(kBlock));
  }
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
  EXPECT_EQ(ReadAllCountDataLoss("checksum mismatch"), kBlocks);
}

TEST_F(NvmeCorruption, SameBytesUnderAnotherKeyAreDetected) {
  WriteAll();
  // A stale version of the same block: identical bytes, other identity.
  for (auto& job : jobs_) job->t.key.version = 2;
  EXPECT_EQ(ReadAllCountDataLoss("checksum mismatch"), kBlocks);
}

TEST_F(NvmeCorruption, TruncatedFileIsDetected) {
  WriteAll();
  ASSERT_EQ(::truncate(dir_.file().c_str(), 0), 0);
  EXPECT_EQ(ReadAllCountDataLoss("truncated"), kBlocks);
  EXPECT_THAT(Str(jobs_[0]->t.status.message()), HasSubstr(dir_.file()));
}

TEST_F(NvmeCorruption, TruncatedInsideABlockIsDetected) {
  WriteAll();
  // Cut every block from the middle of block 40 on (at an unaligned length).
  const uint64_t cut = jobs_[40]->t.frame.offset + 5000 + 3;
  ASSERT_EQ(::truncate(dir_.file().c_str(), static_cast<off_t>(cut)), 0);
  for (auto& job : jobs_) job->t.op = Transfer::Op::kRead;
  RunBatch(*tier_, jobs_);
  for (auto& job : jobs_) {
    if (job->t.frame.offset + job->t.host.size() <= cut) {
      EXPECT_TRUE(job->t.status.ok()) << job->t.status;
    } else {
      EXPECT_EQ(job->t.status.code(), absl::StatusCode::kDataLoss)
          << job->t.key.block << ": " << job->t.status;
    }
  }
}

}  // namespace
}  // namespace strata::tiers
