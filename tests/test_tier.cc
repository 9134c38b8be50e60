#include "tests/test_tier.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tiers/host/host_tier.h"
#include "util/checksum.h"

namespace strata::test {

using tiers::Frame;
using tiers::Transfer;

namespace {
bool Matches(TestOps ops, Transfer::Op op) {
  return ops == TestOps::kAny ||
         (ops == TestOps::kRead) == (op == Transfer::Op::kRead);
}
}  // namespace

// --- control ---------------------------------------------------------------

void TestTierControl::FailNth(TestOps ops, uint64_t nth, absl::Status status,
                              bool until_cleared) {
  std::lock_guard lock(mu_);
  fail_ops_ = ops;
  fail_nth_ = nth;
  fail_status_ = std::move(status);
  fail_until_cleared_ = until_cleared;
  counted_ = 0;
}

void TestTierControl::HoldCompletions(TestOps ops) {
  std::lock_guard lock(mu_);
  hold_ = true;
  hold_ops_ = ops;
}

void TestTierControl::FailAllocations(bool on) {
  std::lock_guard lock(mu_);
  fail_allocations_ = on;
}

TestTierControl::Fate TestTierControl::OnSubmit(Transfer::Op op,
                                                absl::Status* status) {
  std::lock_guard lock(mu_);
  (op == Transfer::Op::kRead ? reads_ : writes_)++;
  if (fail_nth_ != 0 && Matches(fail_ops_, op)) {
    ++counted_;
    if (counted_ == fail_nth_ || (fail_until_cleared_ && counted_ > fail_nth_)) {
      ++injected_;
      *status = fail_status_;
      return Fate::kFail;
    }
  }
  if (hold_ && Matches(hold_ops_, op)) return Fate::kHold;
  return Fate::kRun;
}

bool TestTierControl::OnAllocate() {
  std::lock_guard lock(mu_);
  ++allocations_;
  return !fail_allocations_;
}

void TestTierControl::AddHeld(Held h) {
  std::lock_guard lock(mu_);
  held_.push_back(h);
}

std::vector<TestTierControl::Held> TestTierControl::TakeHeld(
    const TestTier* only) {
  std::lock_guard lock(mu_);
  std::vector<Held> taken, kept;
  for (const Held& h : held_) {
    (only == nullptr || h.tier == only ? taken : kept).push_back(h);
  }
  held_.swap(kept);
  if (only == nullptr) hold_ = false;
  return taken;
}

uint64_t TestTierControl::allocations() const {
  std::lock_guard lock(mu_);
  return allocations_;
}
uint64_t TestTierControl::reads() const {
  std::lock_guard lock(mu_);
  return reads_;
}
uint64_t TestTierControl::writes() const {
  std::lock_guard lock(mu_);
  return writes_;
}
uint64_t TestTierControl::injected() const {
  std::lock_guard lock(mu_);
  return injected_;
}
uint64_t TestTierControl::held() const {
  std::lock_guard lock(mu_);
  return held_.size();
}

// --- tier ------------------------------------------------------------------

class TestTier final : public tiers::Tier {
 public:
  TestTier(const TestTierConfig& config,
           std::shared_ptr<TestTierControl> control,
           std::unique_ptr<tiers::HostTier> memory)
      : Tier("test", config.capacity_bytes),
        config_(config),
        control_(std::move(control)),
        memory_(std::move(memory)) {
    if (config_.asynchronous) worker_ = std::thread([this] { WorkerLoop(); });
  }

  ~TestTier() override {
    for (const auto& h : control_->TakeHeld(this)) {
      Fail(h.transfer, absl::AbortedError("tier test: shut down while held"));
    }
    if (worker_.joinable()) {
      {
        std::lock_guard lock(mu_);
        stop_ = true;
        cv_.notify_all();
      }
      worker_.join();
    }
  }

  bool addressable() const override { return config_.host_data; }

  // Moves the bytes of `t` and completes it.
  void Perform(Transfer* t) {
    std::byte* mem = memory_->arena().data() + t->frame.offset;
    const auto key = t->key;
    if (t->op == Transfer::Op::kWrite) {
      std::memcpy(mem, t->host.data(), t->host.size());
      t->checksum = BlockChecksum(t->host, key.tensor_id, key.block, key.version);
      t->status = absl::OkStatus();
    } else {
      std::memcpy(t->host.data(), mem, t->host.size());
      const uint64_t sum =
          BlockChecksum(t->host, key.tensor_id, key.block, key.version);
      t->status = sum == t->checksum
                      ? absl::OkStatus()
                      : absl::DataLossError(absl::StrCat(
                            "tier test: checksum mismatch for tensor ",
                            key.tensor_id, " block ", key.block, " version ",
                            key.version, " at offset ", t->frame.offset));
    }
    t->on_done(t);
  }

  static void Fail(Transfer* t, absl::Status status) {
    t->status = std::move(status);
    t->on_done(t);
  }

 private:
  struct Queued {
    std::chrono::steady_clock::time_point due;
    Transfer* transfer;
    absl::Status failure;  // OK: perform it
  };

  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override {
    if (!control_->OnAllocate()) {
      return absl::ResourceExhaustedError(
          "tier test: allocations are refused (TestTierControl)");
    }
    absl::StatusOr<Frame> frame = memory_->Allocate(bytes);
    if (!frame.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "tier test: no free frame of ", bytes, " bytes (capacity ",
          capacity(), ")"));
    }
    if (!config_.host_data) frame->data = nullptr;
    return frame;
  }

  void DoFree(const Frame& frame) override {
    Frame f = frame;
    f.data = memory_->arena().data() + f.offset;
    memory_->Free(f);
  }

  absl::Status DoSubmit(std::span<Transfer* const> batch) override {
    for (Transfer* t : batch) {
      absl::Status failure;
      switch (control_->OnSubmit(t->op, &failure)) {
        case TestTierControl::Fate::kHold:
          control_->AddHeld({this, t});
          break;
        case TestTierControl::Fate::kFail:
        case TestTierControl::Fate::kRun:
          if (config_.asynchronous) {
            std::lock_guard lock(mu_);
            queue_.push_back({std::chrono::steady_clock::now() +
                                  absl::ToChronoNanoseconds(config_.delay),
                              t, failure});
            cv_.notify_all();
          } else if (!failure.ok()) {
            Fail(t, failure);
          } else {
            Perform(t);
          }
          break;
      }
    }
    return absl::OkStatus();
  }

  void WorkerLoop() {
    std::unique_lock lock(mu_);
    for (;;) {
      if (stop_ && queue_.empty()) return;
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const auto due = queue_.front().due;
      if (!stop_ && std::chrono::steady_clock::now() < due) {
        cv_.wait_until(lock, due);
        continue;
      }
      Queued q = queue_.front();
      queue_.pop_front();
      lock.unlock();
      if (q.failure.ok()) {
        Perform(q.transfer);
      } else {
        Fail(q.transfer, q.failure);
      }
      lock.lock();
    }
  }

  const TestTierConfig config_;
  std::shared_ptr<TestTierControl> control_;
  std::unique_ptr<tiers::HostTier> memory_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool stop_ = false;
  std::thread worker_;
};

void TestTierControl::ReleaseHeld() {
  for (const Held& h : TakeHeld(nullptr)) {
    static_cast<TestTier*>(h.tier)->Perform(h.transfer);
  }
}

void TestTierControl::FailHeld(absl::Status status) {
  for (const Held& h : TakeHeld(nullptr)) TestTier::Fail(h.transfer, status);
}

void TestTierControl::Clear() {
  {
    std::lock_guard lock(mu_);
    fail_nth_ = 0;
    fail_allocations_ = false;
  }
  ReleaseHeld();
}

std::unique_ptr<tiers::Tier> MakeTestTier(
    const TestTierConfig& config, std::shared_ptr<TestTierControl> control) {
  auto memory = tiers::HostTier::Create({.capacity_bytes = config.capacity_bytes,
                                         .numa_node = -1,
                                         .huge_pages = false,
                                         .log = nullptr});
  if (!memory.ok()) return nullptr;
  return std::make_unique<TestTier>(config, std::move(control),
                                    std::move(memory).value());
}

}  // namespace strata::test
