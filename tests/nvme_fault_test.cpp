// Fault injection under the NVMe tier (suite `fault`): every injected fault
// completes its transfer exactly once with a non-OK status of the right code,
// or is retried transparently (short transfers, EAGAIN); once faults stop,
// every acknowledged write reads back intact.
#include <algorithm>
#include <cerrno>
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
#include "tiers/nvme/nvme_tier.h"

namespace strata::tiers {
namespace {

using ::testing::HasSubstr;

using test::Fill;
using test::Job;
using test::Latch;
using test::OnDone;
using test::Str;
using test::TempDir;

// 32 blocks on one tier whose backend injects faults. Sizes mix blocks of at
// least 8 KiB (a kShort fault really shortens the I/O) and small ones (the
// completion under-reports), some of them not multiples of 4096.
class Workload {
 public:
  static constexpr int kBlocks = 32;
  static constexpr size_t kSlot = 64 << 10;

  explicit Workload(bool register_buffers, uint32_t queue_depth = 8)
      : faults_(std::make_shared<FaultInjector>()),
        arena_(static_cast<std::byte*>(
            std::aligned_alloc(4096, kBlocks * kSlot))),
        expected_(kBlocks * kSlot) {
    auto tier = MakeNvmeTier(
        NvmeConfig{.path = dir_.path(),
                   .capacity_bytes = uint64_t{16} << 20,
                   .queue_depth = queue_depth,
                   .register_buffers = register_buffers,
                   .log = nullptr},
        MakeFaultInjectingBackend(faults_));
    EXPECT_TRUE(tier.ok()) << tier.status();
    if (!tier.ok()) return;
    tier_ = std::move(*tier);
    EXPECT_TRUE(tier_->RegisterHostMemory({arena_, kBlocks * kSlot}).ok());
    for (int i = 0; i < kBlocks; ++i) {
      auto frame = tier_->Allocate(kSlot);
      EXPECT_TRUE(frame.ok()) << frame.status();
      auto job = std::make_unique<Job>();
      const size_t size = i % 4 == 0   ? 3000
                          : i % 4 == 1 ? 4096
                          : i % 4 == 2 ? kSlot
                                       : kSlot - 777;
      job->t.key = {.tensor_id = 5, .block = static_cast<uint64_t>(i)};
      job->t.frame = *frame;
      job->t.host = {arena_ + i * kSlot, size};
      job->t.on_done = &OnDone;
      job->t.user = job.get();
      jobs_.push_back(std::move(job));
    }
  }
  ~Workload() {
    tier_.reset();
    std::free(arena_);
  }

  bool ok() const { return tier_ != nullptr; }
  FaultInjector& faults() { return *faults_; }
  Tier& tier() { return *tier_; }

  // Runs `indices` as one batch of `op`; returns false if it did not
  // complete in time (a hang).
  bool Run(Transfer::Op op, const std::vector<int>& indices) {
    Latch latch(static_cast<int>(indices.size()));
    std::vector<Transfer*> batch;
    for (int i : indices) {
      Job& job = *jobs_[i];
      job.t.op = op;
      job.t.status = absl::UnknownError("not completed");
      job.calls = 0;
      job.latch = &latch;
      batch.push_back(&job.t);
    }
    absl::Status s = tier_->Submit(batch);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return false;
    if (!latch.Wait()) return false;
    for (int i : indices) EXPECT_EQ(jobs_[i]->calls.load(), 1) << i;
    return true;
  }

  // Writes new contents (version `version`) to `indices`; a block whose write
  // is acknowledged becomes what it must read back as.
  std::vector<int> Write(const std::vector<int>& indices, uint64_t version) {
    for (int i : indices) {
      jobs_[i]->t.key.version = version;
      Fill(jobs_[i]->t.host.data(), jobs_[i]->t.host.size(), version * 1000 + i);
    }
    EXPECT_TRUE(Run(Transfer::Op::kWrite, indices)) << "writes hung";
    std::vector<int> failed;
    for (int i : indices) {
      Job& job = *jobs_[i];
      last_status_[i] = job.t.status;
      if (job.t.status.ok()) {
        std::memcpy(expected_.data() + i * kSlot, job.t.host.data(),
                    job.t.host.size());
        acked_checksum_[i] = job.t.checksum;
        acked_version_[i] = version;
      } else {
        failed.push_back(i);
      }
    }
    return failed;
  }

  // Reads `indices` back into cleared memory; returns those that failed. A
  // read that succeeds must return the last acknowledged bytes.
  std::vector<int> Read(const std::vector<int>& indices) {
    for (int i : indices) {
      std::memset(jobs_[i]->t.host.data(), 0, jobs_[i]->t.host.size());
      jobs_[i]->t.checksum = acked_checksum_[i];
      jobs_[i]->t.key.version = acked_version_[i];
    }
    EXPECT_TRUE(Run(Transfer::Op::kRead, indices)) << "reads hung";
    std::vector<int> failed;
    for (int i : indices) {
      Job& job = *jobs_[i];
      last_status_[i] = job.t.status;
      if (!job.t.status.ok()) {
        failed.push_back(i);
        continue;
      }
      EXPECT_EQ(std::memcmp(expected_.data() + i * kSlot, job.t.host.data(),
                            job.t.host.size()),
                0)
          << "block " << i << " read back wrong bytes";
    }
    return failed;
  }

  const Transfer& transfer(int i) const { return jobs_[i]->t; }
  // The status of block i's last transfer in Write or Read.
  const absl::Status& last_status(int i) const { return last_status_[i]; }

  static std::vector<int> All() {
    std::vector<int> all(kBlocks);
    for (int i = 0; i < kBlocks; ++i) all[i] = i;
    return all;
  }

  // With faults off: rewrites the blocks whose last write failed, then
  // checks that every block reads back as acknowledged.
  void HealAndVerify(const std::vector<int>& failed_writes, uint64_t version) {
    faults_->Clear();
    if (!failed_writes.empty()) {
      EXPECT_TRUE(Write(failed_writes, version).empty());
    }
    EXPECT_TRUE(Read(All()).empty());
  }

 private:
  TempDir dir_;
  std::shared_ptr<FaultInjector> faults_;
  std::byte* arena_;
  std::vector<std::byte> expected_;
  std::unique_ptr<Tier> tier_;
  std::vector<std::unique_ptr<Job>> jobs_;
  uint64_t acked_checksum_[kBlocks] = {};
  uint64_t acked_version_[kBlocks] = {};
  absl::Status last_status_[kBlocks];
};

struct FaultCase {
  Fault fault;
  bool retried;              // completes OK after a transparent retry
  absl::StatusCode code;     // otherwise: the code of the failed transfer
  const char* errno_name;
  bool register_buffers;
};

class NvmeFaultSweep : public ::testing::TestWithParam<FaultCase> {};

// For N = 1, 2, ...: the Nth operation of "write 32 blocks, read them back"
// fails; stop when a round injects nothing.
TEST_P(NvmeFaultSweep, EveryOperationFailsOnceInTurn) {
  const FaultCase& c = GetParam();
  Workload w(c.register_buffers);
  ASSERT_TRUE(w.ok());
  // Version 1 everywhere first, so a failed rewrite leaves readable bytes.
  ASSERT_TRUE(w.Write(Workload::All(), 1).empty());
  uint64_t version = 2;
  int rounds = 0;
  for (uint64_t n = 1;; ++n) {
    ASSERT_LT(n, 1000u) << "the workload never ran out of operations";
    const uint64_t before = w.faults().injected();
    w.faults().Arm(FaultOps::kAny, n, c.fault);
    std::vector<int> failed_writes = w.Write(Workload::All(), version);
    std::vector<absl::Status> write_status(Workload::kBlocks);
    for (int i = 0; i < Workload::kBlocks; ++i) {
      write_status[i] = w.last_status(i);
    }
    std::vector<int> failed_reads = w.Read(Workload::All());
    const uint64_t injected = w.faults().injected() - before;
    ASSERT_LE(injected, 1u);
    if (injected == 0) {
      EXPECT_TRUE(failed_writes.empty());
      EXPECT_TRUE(failed_reads.empty());
      break;
    }
    ++rounds;
    if (c.retried) {
      EXPECT_TRUE(failed_writes.empty()) << "round " << n;
      EXPECT_TRUE(failed_reads.empty()) << "round " << n;
    } else {
      // Exactly one transfer failed, with the right code and a message that
      // names the file, the offset and the errno.
      ASSERT_EQ(failed_writes.size() + failed_reads.size(), 1u)
          << "round " << n;
      const int i = failed_writes.empty() ? failed_reads[0] : failed_writes[0];
      // A failed write's status, or (when no write failed) the read's.
      absl::Status s = w.last_status(i);
      if (!failed_writes.empty()) s = write_status[i];
      EXPECT_EQ(s.code(), c.code) << s;
      EXPECT_THAT(Str(s.message()), HasSubstr(c.errno_name));
      EXPECT_THAT(Str(s.message()), HasSubstr("blocks.strata offset"));
    }
    // (When nothing failed, the reads above already verified every block.)
    if (!failed_writes.empty() || !failed_reads.empty()) {
      w.HealAndVerify(failed_writes, version);
    }
    ++version;
  }
  w.HealAndVerify({}, version);
  // 32 writes + 32 reads, plus retries.
  EXPECT_GE(rounds, 64);
}

INSTANTIATE_TEST_SUITE_P(
    Faults, NvmeFaultSweep,
    ::testing::Values(
        FaultCase{Fault::kEio, false, absl::StatusCode::kInternal, "EIO", true},
        FaultCase{Fault::kEio, false, absl::StatusCode::kInternal, "EIO",
                  false},
        FaultCase{Fault::kEnospc, false, absl::StatusCode::kResourceExhausted,
                  "ENOSPC", true},
        FaultCase{Fault::kShort, true, absl::StatusCode::kOk, "", true},
        FaultCase{Fault::kShort, true, absl::StatusCode::kOk, "", false},
        FaultCase{Fault::kEagain, true, absl::StatusCode::kOk, "", true}),
    [](const auto& info) {
      const FaultCase& c = info.param;
      std::string name = c.fault == Fault::kEio      ? "Eio"
                         : c.fault == Fault::kEnospc ? "Enospc"
                         : c.fault == Fault::kShort  ? "Short"
                                                     : "Eagain";
      return name + (c.register_buffers ? "Registered" : "Unregistered");
    });

TEST(NvmeFault, OnlyTheArmedKindFails) {
  Workload w(true);
  ASSERT_TRUE(w.ok());
  w.faults().Arm(FaultOps::kRead, 3, Fault::kEio);
  EXPECT_TRUE(w.Write(Workload::All(), 1).empty());
  std::vector<int> failed = w.Read(Workload::All());
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(w.last_status(failed[0]).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(w.faults().injected(), 1u);
  w.HealAndVerify({}, 2);
}

TEST(NvmeFault, StickyEioFailsEveryLaterWriteThenHeals) {
  Workload w(true, /*queue_depth=*/4);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w.Write(Workload::All(), 1).empty());
  w.faults().Arm(FaultOps::kWrite, 5, Fault::kEio, /*until_cleared=*/true);
  std::vector<int> failed = w.Write(Workload::All(), 2);
  EXPECT_EQ(failed.size(), Workload::kBlocks - 4u);
  for (int i : failed) {
    EXPECT_EQ(w.last_status(i).code(), absl::StatusCode::kInternal);
  }
  // Reads are untouched by a write fault, and see the acknowledged bytes:
  // version 2 for the first four blocks, version 1 for the rest.
  EXPECT_TRUE(w.Read(Workload::All()).empty());
  w.HealAndVerify(failed, 3);
}

TEST(NvmeFault, EndlessEagainGivesUpWithUnavailable) {
  Workload w(false);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w.Write(Workload::All(), 1).empty());
  w.faults().Arm(FaultOps::kAny, 1, Fault::kEagain, /*until_cleared=*/true);
  std::vector<int> failed = w.Write(Workload::All(), 2);
  ASSERT_EQ(failed.size(), static_cast<size_t>(Workload::kBlocks));
  for (int i : failed) {
    EXPECT_EQ(w.last_status(i).code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(Str(w.last_status(i).message()), HasSubstr("EAGAIN"));
  }
  w.HealAndVerify(failed, 3);
}

TEST(NvmeFault, EndlessShortTransfersAreInvisible) {
  Workload w(true);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w.Write(Workload::All(), 1).empty());
  w.faults().Arm(FaultOps::kAny, 1, Fault::kShort, /*until_cleared=*/true);
  // Every operation moves half of what it asked (whole sectors): the tier
  // resubmits the rest until done.
  EXPECT_TRUE(w.Write(Workload::All(), 2).empty());
  EXPECT_TRUE(w.Read(Workload::All()).empty());
  EXPECT_GT(w.faults().injected(), 64u);
  w.HealAndVerify({}, 3);
}

// A backend (over the real one) whose first `n` completions of reads and
// writes report `res` bytes (when the real result is larger): a device that
// stops in the middle of a sector, which the tier must resubmit from an
// aligned offset.
class UnalignedShortBackend final : public IoBackend {
 public:
  UnalignedShortBackend(int n, int32_t res)
      : inner_(MakeUringBackend()), left_(n), res_(res) {}
  absl::Status Open(int fd, uint32_t qd) override { return inner_->Open(fd, qd); }
  absl::Status RegisterFile() override { return inner_->RegisterFile(); }
  absl::Status RegisterBuffers(std::span<const iovec> b) override {
    return inner_->RegisterBuffers(b);
  }
  void UnregisterBuffers() override { inner_->UnregisterBuffers(); }
  bool Prepare(const IoOp& op) override { return inner_->Prepare(op); }
  absl::StatusOr<uint32_t> Submit() override { return inner_->Submit(); }
  absl::Status Reap(std::vector<IoCompletion>& out,
                    absl::Duration timeout) override {
    const size_t first = out.size();
    absl::Status s = inner_->Reap(out, timeout);
    for (size_t i = first; i < out.size(); ++i) {
      if (left_ > 0 && out[i].res > res_) {
        out[i].res = res_;
        --left_;
      }
    }
    return s;
  }

 private:
  std::unique_ptr<IoBackend> inner_;
  int left_;  // only the completion thread touches it
  int32_t res_;
};

TEST(NvmeFault, ShortInsideASectorIsResubmittedFromAnAlignedOffset) {
  for (int32_t res : {1, 100, 4097, 9000}) {
    TempDir dir;
    auto tier = MakeNvmeTier(
        NvmeConfig{.path = dir.path(),
                   .capacity_bytes = uint64_t{16} << 20,
                   .queue_depth = 8,
                   .register_buffers = false,
                   .log = nullptr},
        std::make_unique<UnalignedShortBackend>(8, res));
    ASSERT_TRUE(tier.ok()) << tier.status();
    constexpr size_t kBytes = 64 << 10;
    auto* out = static_cast<std::byte*>(std::aligned_alloc(4096, 4 * kBytes));
    auto* in = static_cast<std::byte*>(std::aligned_alloc(4096, 4 * kBytes));
    Fill(out, 4 * kBytes, res);
    std::vector<std::unique_ptr<Job>> jobs;
    Latch latch(4);
    std::vector<Transfer*> batch;
    for (int i = 0; i < 4; ++i) {
      auto frame = (*tier)->Allocate(kBytes);
      ASSERT_TRUE(frame.ok());
      auto job = std::make_unique<Job>();
      job->latch = &latch;
      job->t = {.op = Transfer::Op::kWrite,
                .key = {4, static_cast<uint64_t>(i), 1},
                .frame = *frame,
                .host = {out + i * kBytes, kBytes - 10},
                .on_done = &OnDone,
                .user = job.get()};
      batch.push_back(&job->t);
      jobs.push_back(std::move(job));
    }
    ASSERT_TRUE((*tier)->Submit(batch).ok());
    ASSERT_TRUE(latch.Wait());
    Latch latch2(4);
    for (int i = 0; i < 4; ++i) {
      EXPECT_TRUE(jobs[i]->t.status.ok()) << res << ": " << jobs[i]->t.status;
      jobs[i]->latch = &latch2;
      jobs[i]->t.op = Transfer::Op::kRead;
      jobs[i]->t.host = {in + i * kBytes, kBytes - 10};
    }
    ASSERT_TRUE((*tier)->Submit(batch).ok());
    ASSERT_TRUE(latch2.Wait());
    for (int i = 0; i < 4; ++i) {
      EXPECT_TRUE(jobs[i]->t.status.ok()) << res << ": " << jobs[i]->t.status;
      EXPECT_EQ(std::memcmp(out + i * kBytes, in + i * kBytes, kBytes - 10), 0);
      EXPECT_EQ(jobs[i]->calls.load(), 2);
    }
    tier->reset();
    std::free(out);
    std::free(in);
  }
}

// The status says what happened and what to do; the tier does not log it
// itself (the engine logs the returned status once).
TEST(NvmeFault, FailedRegistrationFallsBackAndSaysSo) {
  TempDir dir;
  auto faults = std::make_shared<FaultInjector>();
  std::vector<std::string> logs;
  auto tier = MakeNvmeTier(
      NvmeConfig{.path = dir.path(),
                 .capacity_bytes = uint64_t{16} << 20,
                 .queue_depth = 8,
                 .register_buffers = true,
                 .log = [&logs](std::string_view m) { logs.emplace_back(m); }},
      MakeFaultInjectingBackend(faults));
  ASSERT_TRUE(tier.ok()) << tier.status();
  constexpr size_t kBytes = 1 << 20;
  auto* arena = static_cast<std::byte*>(std::aligned_alloc(4096, kBytes));
  Fill(arena, kBytes, 3);
  for (int attempt = 0; attempt < 2; ++attempt) {
    faults->FailNextRegisterBuffers(ENOMEM);
    absl::Status s = (*tier)->RegisterHostMemory({arena, kBytes});
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(Str(s.message()), HasSubstr("ENOMEM"));
    EXPECT_THAT(Str(s.message()), HasSubstr("RLIMIT_MEMLOCK"));
    EXPECT_THAT(Str(s.message()), HasSubstr("unregistered"));
  }
  EXPECT_TRUE(logs.empty());

  // Transfers still work, unregistered.
  auto frame = (*tier)->Allocate(kBytes);
  ASSERT_TRUE(frame.ok());
  Latch latch(1);
  Job job;
  job.latch = &latch;
  job.t = {.op = Transfer::Op::kWrite, .key = {1, 2, 3}, .frame = *frame,
           .host = {arena, kBytes}, .on_done = &OnDone, .user = &job};
  Transfer* batch[] = {&job.t};
  ASSERT_TRUE((*tier)->Submit(batch).ok());
  ASSERT_TRUE(latch.Wait());
  ASSERT_TRUE(job.t.status.ok()) << job.t.status;
  job.t.op = Transfer::Op::kRead;
  Latch latch2(1);
  job.latch = &latch2;
  ASSERT_TRUE((*tier)->Submit(batch).ok());
  ASSERT_TRUE(latch2.Wait());
  EXPECT_TRUE(job.t.status.ok()) << job.t.status;
  EXPECT_EQ(faults->fixed_ops_seen(), 0u);
  EXPECT_EQ(faults->ops_seen(), 2u);
  tier->reset();
  std::free(arena);
}

// kHold: the device performs the operation, but the tier does not see its
// completion until the test releases it. A held read does not complete (its
// on_done does not run) however long it is held; once released it completes
// exactly once, OK, with the bytes that were written. With until_cleared
// every matching operation is held, and Clear releases them all.
TEST(NvmeFault, HeldCompletionsWaitForRelease) {
  TempDir dir;
  auto faults = std::make_shared<FaultInjector>();
  auto tier = MakeNvmeTier(
      NvmeConfig{.path = dir.path(),
                 .capacity_bytes = uint64_t{16} << 20,
                 .queue_depth = 8,
                 .register_buffers = true,
                 .log = nullptr},
      MakeFaultInjectingBackend(faults));
  ASSERT_TRUE(tier.ok()) << tier.status();
  constexpr int kN = 4;
  constexpr size_t kBytes = 64 << 10;
  auto* out = static_cast<std::byte*>(std::aligned_alloc(4096, kN * kBytes));
  auto* in = static_cast<std::byte*>(std::aligned_alloc(4096, kN * kBytes));
  Fill(out, kN * kBytes, 77);
  std::memset(in, 0, kN * kBytes);
  // Polls held() (never a blind sleep): true once `n` completions are held.
  auto wait_held = [&](uint64_t n) {
    for (int i = 0; i < 10000 && faults->held() < n; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return faults->held() == n;
  };
  std::vector<std::unique_ptr<Job>> jobs;
  std::vector<Transfer*> batch;
  for (int i = 0; i < kN; ++i) {
    auto frame = (*tier)->Allocate(kBytes);
    ASSERT_TRUE(frame.ok()) << frame.status();
    auto job = std::make_unique<Job>();
    job->t = {.op = Transfer::Op::kWrite,
              .key = {9, static_cast<uint64_t>(i), 1},
              .frame = *frame,
              .host = {out + i * kBytes, kBytes},
              .on_done = &OnDone,
              .user = job.get()};
    batch.push_back(&job->t);
    jobs.push_back(std::move(job));
  }
  auto run = [&](std::span<Transfer* const> some, Transfer::Op op,
                 Latch* latch) {
    for (Transfer* t : some) {
      Job* job = static_cast<Job*>(t->user);
      job->t.op = op;
      job->t.status = absl::UnknownError("not completed");
      job->calls = 0;
      job->latch = latch;
    }
    return (*tier)->Submit(some);
  };

  // Every write held until Clear.
  faults->Arm(FaultOps::kWrite, 1, Fault::kHold, /*until_cleared=*/true);
  Latch writes(kN);
  ASSERT_TRUE(run(batch, Transfer::Op::kWrite, &writes).ok());
  ASSERT_TRUE(wait_held(kN)) << "held " << faults->held() << " of " << kN;
  // Held: nothing may complete, however long we look.
  EXPECT_FALSE(writes.Wait(absl::Milliseconds(100)));
  for (auto& job : jobs) EXPECT_EQ(job->calls.load(), 0);
  faults->Clear();
  ASSERT_TRUE(writes.Wait()) << "released writes did not complete";
  EXPECT_EQ(faults->held(), 0u);
  for (auto& job : jobs) {
    EXPECT_EQ(job->calls.load(), 1);
    EXPECT_TRUE(job->t.status.ok()) << job->t.status;
  }

  // One read held (the first); the others complete meanwhile.
  faults->Arm(FaultOps::kRead, 1, Fault::kHold);
  for (int i = 0; i < kN; ++i) jobs[i]->t.host = {in + i * kBytes, kBytes};
  Latch first(1);
  ASSERT_TRUE(run({batch.data(), 1}, Transfer::Op::kRead, &first).ok());
  ASSERT_TRUE(wait_held(1));
  Latch rest(kN - 1);
  ASSERT_TRUE(
      run({batch.data() + 1, kN - 1}, Transfer::Op::kRead, &rest).ok());
  ASSERT_TRUE(rest.Wait()) << "reads behind a held one must not wait for it";
  EXPECT_EQ(jobs[0]->calls.load(), 0) << "a held read completed";
  EXPECT_EQ(faults->held(), 1u);
  EXPECT_FALSE(first.Wait(absl::Milliseconds(100)));
  faults->ReleaseHeld();
  ASSERT_TRUE(first.Wait()) << "a released read did not complete";
  EXPECT_EQ(faults->held(), 0u);
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(jobs[i]->calls.load(), 1) << i;
    EXPECT_TRUE(jobs[i]->t.status.ok()) << i << ": " << jobs[i]->t.status;
    EXPECT_EQ(std::memcmp(out + i * kBytes, in + i * kBytes, kBytes), 0) << i;
  }
  // Released, not disarmed: the arming was "once", so later reads are free.
  Latch again(kN);
  ASSERT_TRUE(run(batch, Transfer::Op::kRead, &again).ok());
  ASSERT_TRUE(again.Wait());
  EXPECT_EQ(faults->held(), 0u);
  tier->reset();  // nothing held: the destructor does not wait
  std::free(out);
  std::free(in);
}

}  // namespace
}  // namespace strata::tiers
