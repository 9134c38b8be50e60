#include "tiers/nvme/fault_backend.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "util/errors.h"

namespace strata::tiers {

void FaultInjector::Arm(FaultOps ops, uint64_t nth, Fault fault,
                        bool until_cleared) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = true;
  ops_ = ops;
  nth_ = nth;
  fault_ = fault;
  until_cleared_ = until_cleared;
  counted_ = 0;
}

void FaultInjector::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = false;
  ReleaseHeldLocked();
}

void FaultInjector::ReleaseHeld() {
  std::lock_guard<std::mutex> lock(mu_);
  ReleaseHeldLocked();
}

void FaultInjector::ReleaseHeldLocked() {
  released_.insert(released_.end(), held_.begin(), held_.end());
  held_.clear();
  // Marked operations still on the device complete normally when they come.
  holding_.clear();
}

uint64_t FaultInjector::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_.size();
}

void FaultInjector::BeginHold(uint64_t user_data) {
  std::lock_guard<std::mutex> lock(mu_);
  holding_.push_back(user_data);
}

void FaultInjector::CancelHold(uint64_t user_data) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find(holding_.begin(), holding_.end(), user_data);
  if (it != holding_.end()) holding_.erase(it);
}

bool FaultInjector::FilterCompletions(std::vector<IoCompletion>& out,
                                      size_t first) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!holding_.empty()) {
    size_t kept = first;
    for (size_t i = first; i < out.size(); ++i) {
      auto it = std::find(holding_.begin(), holding_.end(), out[i].user_data);
      if (it != holding_.end()) {
        holding_.erase(it);
        held_.push_back(out[i]);
      } else {
        out[kept++] = out[i];
      }
    }
    out.resize(kept);
  }
  out.insert(out.end(), released_.begin(), released_.end());
  released_.clear();
  return !holding_.empty() || !held_.empty();
}

bool FaultInjector::HasReleased() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !released_.empty();
}

void FaultInjector::FailNextRegisterBuffers(int err) {
  std::lock_guard<std::mutex> lock(mu_);
  register_error_ = err;
}

uint64_t FaultInjector::injected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return injected_;
}

uint64_t FaultInjector::ops_seen() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ops_seen_;
}

uint64_t FaultInjector::fixed_ops_seen() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fixed_ops_seen_;
}

bool FaultInjector::OnPrepare(const IoOp& op, Fault* fault) {
  if (op.kind == IoOp::Kind::kNop) return false;
  std::lock_guard<std::mutex> lock(mu_);
  ++ops_seen_;
  if (op.buf_index >= 0) ++fixed_ops_seen_;
  if (!armed_) return false;
  const bool counts = ops_ == FaultOps::kAny ||
                      (ops_ == FaultOps::kRead) == (op.kind == IoOp::Kind::kRead);
  if (!counts) return false;
  ++counted_;
  if (counted_ == nth_ || (until_cleared_ && counted_ > nth_)) {
    ++injected_;
    *fault = fault_;
    return true;
  }
  return false;
}

int FaultInjector::TakeRegisterBuffersError() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(register_error_, 0);
}

namespace {

// The result to report instead of a faulted operation's (an errno).
struct Rewrite {
  int32_t res = 0;
};

class FaultInjectingBackend final : public IoBackend {
 public:
  FaultInjectingBackend(std::shared_ptr<FaultInjector> injector,
                        std::unique_ptr<IoBackend> inner)
      : injector_(std::move(injector)), inner_(std::move(inner)) {}

  absl::Status Open(int fd, uint32_t queue_depth) override {
    // A short O_DIRECT transfer still moves whole sectors: learn their size.
    struct statx stx;
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) != 0 && stx.stx_dio_offset_align > 0) {
      sector_ = stx.stx_dio_offset_align;
    }
    return inner_->Open(fd, queue_depth);
  }
  absl::Status RegisterFile() override { return inner_->RegisterFile(); }
  absl::Status RegisterBuffers(std::span<const iovec> buffers) override {
    if (int err = injector_->TakeRegisterBuffersError(); err != 0) {
      return ErrnoStatus(
          err, "tier nvme: io_uring_register_buffers failed (injected)");
    }
    return inner_->RegisterBuffers(buffers);
  }
  void UnregisterBuffers() override { inner_->UnregisterBuffers(); }

  bool Prepare(const IoOp& op) override {
    // An operation the full queue refused comes back: decide its fate once.
    Fault fault = Fault::kEio;
    bool faulted;
    if (refused_ && refused_user_data_ == op.user_data) {
      faulted = refused_faulted_;
      fault = refused_fault_;
    } else {
      faulted = injector_->OnPrepare(op, &fault);
    }
    refused_ = false;
    if (!faulted) return Remember(inner_->Prepare(op), op, false, fault);
    if (fault == Fault::kHold) {
      // Marked before the kernel can see the operation, so that its
      // completion cannot slip past Reap's filter.
      injector_->BeginHold(op.user_data);
      if (inner_->Prepare(op)) return true;
      injector_->CancelHold(op.user_data);
      return Remember(false, op, true, fault);
    }
    IoOp replaced = op;
    Rewrite rewrite;
    switch (fault) {
      case Fault::kEio:
      case Fault::kEnospc:
      case Fault::kEagain:
        replaced = IoOp{.kind = IoOp::Kind::kNop, .user_data = op.user_data};
        rewrite.res = fault == Fault::kEio      ? -EIO
                      : fault == Fault::kEnospc ? -ENOSPC
                                                : -EAGAIN;
        break;
      case Fault::kShort:
        // Really moves only the first half (in whole sectors); a one-sector
        // operation cannot be split and runs whole.
        if (op.len > sector_) {
          replaced.len = std::max(sector_, op.len / 2 / sector_ * sector_);
        }
        return Remember(inner_->Prepare(replaced), op, true, fault);
      case Fault::kHold:
        break;  // handled above
    }
    if (!inner_->Prepare(replaced)) return Remember(false, op, true, fault);
    std::lock_guard<std::mutex> lock(mu_);
    rewrites_[op.user_data] = rewrite;
    return true;
  }

  absl::StatusOr<uint32_t> Submit() override { return inner_->Submit(); }

  absl::Status Reap(std::vector<IoCompletion>& out,
                    absl::Duration timeout) override {
    const size_t first = out.size();
    absl::Status status;
    // While completions are held, a release must reach the tier soon: wait
    // in short slices (only the completion side may touch the ring, so a
    // release cannot wake the kernel wait itself).
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const absl::Duration left =
          injector_->HasReleased()
              ? absl::ZeroDuration()
              : std::max(deadline - absl::Now(), absl::ZeroDuration());
      const bool slicing = holding_or_held_;
      status = inner_->Reap(out, slicing ? std::min(left, kHoldSlice) : left);
      if (!status.ok()) break;
      ApplyRewrites(out, first);
      holding_or_held_ = injector_->FilterCompletions(out, first);
      if (out.size() > first || !slicing || absl::Now() >= deadline) break;
    }
    return status;
  }

 private:
  // Prepare is on the submission side only, so these need no lock.
  bool Remember(bool prepared, const IoOp& op, bool faulted, Fault fault) {
    if (!prepared) {
      refused_ = true;
      refused_user_data_ = op.user_data;
      refused_faulted_ = faulted;
      refused_fault_ = fault;
    }
    return prepared;
  }

  // Replaces the results of faulted operations in out[first..].
  void ApplyRewrites(std::vector<IoCompletion>& out, size_t first) {
    std::lock_guard<std::mutex> lock(mu_);
    if (rewrites_.empty()) return;
    for (size_t i = first; i < out.size(); ++i) {
      auto it = rewrites_.find(out[i].user_data);
      if (it == rewrites_.end()) continue;
      out[i].res = it->second.res;
      rewrites_.erase(it);
    }
  }

  static constexpr absl::Duration kHoldSlice = absl::Milliseconds(10);

  uint32_t sector_ = 4096;  // O_DIRECT granularity of the file
  bool refused_ = false;
  uint64_t refused_user_data_ = 0;
  bool refused_faulted_ = false;
  Fault refused_fault_ = Fault::kEio;

  std::shared_ptr<FaultInjector> injector_;
  std::unique_ptr<IoBackend> inner_;
  std::mutex mu_;  // guards rewrites_ (Prepare and Reap run on two threads)
  absl::flat_hash_map<uint64_t, Rewrite> rewrites_;
  // Reap only (the completion side): something was marked or held at the
  // last look, so Reap waits in slices. A hold marked since then is caught
  // within one full wait, and a release of it within one slice after that.
  bool holding_or_held_ = false;
};

}  // namespace

std::unique_ptr<IoBackend> MakeFaultInjectingBackend(
    std::shared_ptr<FaultInjector> injector, std::unique_ptr<IoBackend> inner) {
  if (inner == nullptr) inner = MakeUringBackend();
  return std::make_unique<FaultInjectingBackend>(std::move(injector),
                                                 std::move(inner));
}

}  // namespace strata::tiers
