#include "engine/write_back.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "engine/block_ops.h"
#include "engine/chain.h"
#include "engine/lifecycle.h"
#include "engine/residency.h"
#include "engine/stats.h"

namespace strata::internal {

using S = CopyState;

struct WriteBackOp {
  WriteBacks* owner = nullptr;
  std::shared_ptr<TensorState> ts;
  uint64_t block = 0;
  int src = -1;
  WriteBacks::Mode mode = WriteBacks::Mode::kEvict;
  int dst = -1;
  uint64_t version = 0;
  uint64_t bytes = 0;
  tiers::Frame dst_frame;
  std::shared_ptr<WriteBackOp> self;  // keeps the op alive until completion
  // A Flush waits on these.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Status status;
};

WriteBacks::Claim WriteBacks::ClaimTarget(WriteBackOp& op, int dst,
                                          uint64_t* seen) {
  TensorState& ts = *op.ts;
  LatchGuard latch(ts.record(op.block).latch, *parts_.waits);
  // The source was dirty when it was claimed (eviction) or looked at
  // (Flush), not under this latch. A write pin may have taken the mark since
  // (MakeSoleAndPin moves it off a copy of a tier that cannot be pinned,
  // claimed or held alike), and its newer bytes may already have been
  // written below, into this very target (the newer copy's own eviction
  // skips a tier whose copy is busy). Written there, these stale bytes
  // would replace the block's newest version: lost (engine_stress_test
  // StepsFromOneThreadWhileOthersPin/HostRemoteNvme, "has no copy in any
  // tier"). Checked under the latch that claims the target: the mark can
  // only move later, and then it finds the target busy.
  if (!Load(ts.copy(op.src, op.block).word).dirty()) return Claim::kNotDirty;
  op.version = VersionForCopyOut(ts, op.block, op.src);
  CopySlot& slot = ts.copy(dst, op.block);
  uint64_t w = slot.word.load(std::memory_order_acquire);
  const uint64_t claimed = S(w).ClaimedAsTarget();
  if (claimed == 0 ||
      !slot.word.compare_exchange_strong(w, claimed, std::memory_order_acq_rel)) {
    *seen = w;
    return Claim::kBusy;
  }
  op.dst = dst;
  op.dst_frame = slot.frame;  // a stale copy's frame is reused
  return Claim::kClaimed;
}

void WriteBacks::ReleaseTarget(WriteBackOp& op) {
  TensorState& ts = *op.ts;
  {
    LatchGuard latch(ts.record(op.block).latch, *parts_.waits);
    ts.copy(op.dst, op.block).frame = op.dst_frame;
    FreeCopyLocked(parts_, ts, op.block, op.dst);
  }
  parts_.tier(op.dst).Erase(ts.Key(op.block));
}

absl::Status WriteBacks::StartTo(const std::shared_ptr<WriteBackOp>& op,
                                 int dst, CopyBatch& batch,
                                 uint64_t* busy_seen) {
  switch (ClaimTarget(*op, dst, busy_seen)) {
    case Claim::kClaimed:
      break;
    case Claim::kBusy:
      return absl::AbortedError(absl::StrCat(
          BlockName(*op->ts, op->block), " is being moved in tier ",
          Sv(TierName(parts_.chain->kind(dst)))));
    case Claim::kNotDirty:  // NoLongerDirty
      return absl::CancelledError(absl::StrCat(
          BlockName(*op->ts, op->block), " in tier ",
          Sv(TierName(parts_.chain->kind(op->src))),
          " is no longer dirty: a write pin took its dirty mark"));
  }
  if (!op->dst_frame.valid()) {
    absl::StatusOr<tiers::Frame> frame = parts_.tier(dst).AllocateNow(
        op->bytes, {op->ts->Key(op->block), &op->ts->copy(dst, op->block)});
    if (!frame.ok()) {
      op->dst_frame = {};
      ReleaseTarget(*op);
      return frame.status();
    }
    op->dst_frame = *frame;
  }
  const CopySlot& src = op->ts->copy(op->src, op->block);
  CopyJob job;
  job.src = op->src;
  job.src_frame = src.frame;
  job.src_checksum = src.checksum;
  job.dst = dst;
  job.dst_frame = op->dst_frame;
  job.key = {op->ts->id, op->block, op->version};
  job.bytes = op->bytes;
  job.done = &WriteBacks::OnCopied;
  job.user = op.get();
  op->self = op;
  parts_.life->AsyncBegin();
  parts_.stats->tier(op->src).write_backs_in_flight.fetch_add(
      1, std::memory_order_relaxed);
  batch.Add(job);
  return absl::OkStatus();
}

absl::Status WriteBacks::StartEviction(std::shared_ptr<TensorState> ts,
                                       uint64_t block, int src,
                                       CopyBatch& batch) {
  auto op = std::make_shared<WriteBackOp>();
  op->owner = this;
  op->bytes = ts->BlockSize(block);
  op->ts = std::move(ts);
  op->block = block;
  op->src = src;
  op->mode = Mode::kEvict;
  eviction_hook(op->ts->info->name, block, parts_.chain->kind(src));
  absl::Status last;
  for (int dst = src + 1; dst <= parts_.chain->lowest(); ++dst) {
    uint64_t seen = 0;
    last = StartTo(op, dst, batch, &seen);
    if (last.ok()) return last;
    // Full, or busy with this very block: the next tier down may take it.
    if (!absl::IsResourceExhausted(last) && !absl::IsAborted(last)) break;
  }
  return last;
}

void WriteBacks::OnCopied(void* user, const CopyResult& result) {
  auto* op = static_cast<WriteBackOp*>(user);
  op->owner->Complete(*op, result);
}

void WriteBacks::Complete(WriteBackOp& op, const CopyResult& result) {
  {
    LatchGuard latch(op.ts->record(op.block).latch, *parts_.waits);
    CompleteLocked(op, result);
  }
  Account(op, result);
}

void WriteBacks::CompleteLocked(WriteBackOp& op, const CopyResult& result) {
  TensorState& ts = *op.ts;
  CopySlot& dst = ts.copy(op.dst, op.block);
  CopySlot& src = ts.copy(op.src, op.block);
  dst.frame = op.dst_frame;
  if (!result.status.ok()) {
    // The target's bytes are clobbered: its frame goes.
    FreeCopyLocked(parts_, ts, op.block, op.dst);
    if (op.mode == Mode::kEvict) {
      // Parked before the copy is seen back: a Flush waiting for it then
      // finds the error when it collects them.
      ts.SetWriteBackError(op.block, result.status);
      uint64_t w = src.word.load(std::memory_order_acquire);
      while (!src.word.compare_exchange_weak(
          w, S(w).With(S::kResident) & ~S::kWaiters, std::memory_order_acq_rel)) {
      }
      if (S(w).has_waiters()) parts_.waits->Wake(src.word);
    }
    return;
  }
  dst.version = op.version;
  dst.checksum = result.checksum;
  // The dirty mark moves down with the bytes, unless they reached the
  // lowest tier, or a write pin of another copy took the mark meanwhile
  // (then these bytes are already stale).
  const bool still_dirty = S(src.word.load(std::memory_order_acquire)).dirty();
  const bool dirty_below = still_dirty && op.dst != parts_.chain->lowest();
  parts_.waits->Publish(dst.word, S::Resident(dirty_below ? S::kDirty : 0));
  if (op.mode == Mode::kEvict) {
    FreeCopyLocked(parts_, ts, op.block, op.src);
  } else {
    src.word.fetch_and(~S::kDirty, std::memory_order_acq_rel);
  }
}

void WriteBacks::Account(WriteBackOp& op, const CopyResult& result) {
  TensorState& ts = *op.ts;
  const uint64_t key = ts.Key(op.block);
  TierCounters& from = parts_.stats->tier(op.src);
  const bool ok = result.status.ok();
  if (ok) {
    from.write_backs.fetch_add(1, std::memory_order_relaxed);
    from.bytes_out.fetch_add(op.bytes, std::memory_order_relaxed);
    parts_.stats->tier(op.dst).bytes_in.fetch_add(op.bytes, std::memory_order_relaxed);
    if (op.mode == Mode::kEvict) from.evictions.fetch_add(1, std::memory_order_relaxed);
    parts_.tier(op.dst).Erase(key);  // a reused stale copy was listed
    parts_.tier(op.dst).Insert(key);
  } else {
    if (result.failed_pos >= 0) {
      parts_.stats->tier(result.failed_pos).errors.fetch_add(1, std::memory_order_relaxed);
    }
    parts_.tier(op.dst).Erase(key);
  }
  if (op.mode == Mode::kEvict) {
    if (!ok) {
      parts_.tier(op.src).Insert(key);
      // Logged at the 1st, 2nd, 4th, 8th, ... failure: a dying device must
      // not flood the log.
      const uint64_t n = logged_failures_.fetch_add(1) + 1;
      if ((n & (n - 1)) == 0) {
        parts_.life->Log(absl::StrCat(
            "strata: write-back failed (", n, " failures so far); the block "
            "stays dirty in memory and will be written again, and its "
            "tensor's next Flush reports it: ", result.status.ToString()));
      }
    }
    parts_.tier(op.src).VictimWrittenBack(ok, result.status);
  } else {
    ReleaseSource(parts_, ts, op.block, op.src);  // Flush's read pin
  }
  from.write_backs_in_flight.fetch_sub(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(op.mu);
    op.done = true;
    op.status = result.status;
    op.cv.notify_all();
  }
  std::shared_ptr<WriteBackOp> self = std::move(op.self);
  parts_.life->AsyncEnd();
}

// ---------------------------------------------------------------------------
// Flush

// The lowest tier a private block can live in: the chain's last, unless
// that is the node segment (it holds shared tensors only).
int WriteBacks::FlushTarget() const {
  const TierChain& chain = *parts_.chain;
  int target = chain.lowest();
  while (target > 0 && chain.kind(target) == Tier::kShm) --target;
  return target;
}

absl::Status WriteBacks::HoldDirtyCopy(TensorState& ts, uint64_t block, int target,
                                       Deadline deadline, int* held_pos) {
  *held_pos = -1;
  for (;;) {
    if (absl::Status s = Interrupted(parts_, ts); !s.ok()) return s;
    int pos = -1;
    for (int i = 0; i < target && pos < 0; ++i) {
      if (Load(ts.copy(i, block).word).dirty()) pos = i;
    }
    if (pos < 0) return absl::OkStatus();  // clean, or never written
    std::atomic<uint64_t>& word = ts.copy(pos, block).word;
    uint64_t w = word.load(std::memory_order_acquire);
    // Written down (and maybe freed) since the scan: a copy that is no
    // longer dirty may never change again, and waiting for it would time
    // out. Look for the dirty copy again.
    if (!S(w).dirty()) continue;
    if (S(w).exclusive()) {
      return absl::FailedPreconditionError(absl::StrCat(
          BlockName(ts, block),
          " is pinned for writing; release the write pin before Flush"));
    }
    if (S(w).resident()) {
      const uint64_t held = S(w).HeldForCopy();
      if (held == 0) {
        return absl::ResourceExhaustedError(
            absl::StrCat(BlockName(ts, block), " has too many pins to flush"));
      }
      if (word.compare_exchange_weak(w, held, std::memory_order_acq_rel)) {
        *held_pos = pos;
        return absl::OkStatus();
      }
      continue;
    }
    // Being moved (its write-back is under way): look again when it is done.
    if (!parts_.waits->WaitForChange(word, w, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          BlockName(ts, block), " stayed in transit during Flush"));
    }
  }
}

absl::Status WriteBacks::FlushBatch(const std::shared_ptr<TensorState>& ts, int target,
                                    uint64_t begin, uint64_t end) {
  const Deadline deadline =
      Clock::now() + absl::ToChronoNanoseconds(parts_.options->pin_wait_timeout);
  absl::Status first;
  auto note = [&first](const absl::Status& s) {
    if (!s.ok() && first.ok()) first = s;
  };
  std::vector<std::shared_ptr<WriteBackOp>> ops;
  {
    CopyBatch batch(*parts_.chain);
    for (uint64_t b = begin; b < end; ++b) {
      // Looked at again when the copy held lost its dirty mark before its
      // target was claimed (a write pin took it): another copy is dirty now.
      for (;;) {
        int pos = -1;
        absl::Status held = HoldDirtyCopy(*ts, b, target, deadline, &pos);
        note(held);
        if (!held.ok() || pos < 0) break;
        auto op = std::make_shared<WriteBackOp>();
        op->owner = this;
        op->ts = ts;
        op->block = b;
        op->src = pos;
        op->mode = Mode::kFlush;
        op->bytes = ts->BlockSize(b);
        absl::Status started;
        for (;;) {
          uint64_t seen = 0;
          started = StartTo(op, target, batch, &seen);
          if (!absl::IsAborted(started)) break;
          // The target copy is busy (a write-back of the same bytes): wait.
          batch.Submit();
          if (!parts_.waits->WaitForChange(ts->copy(target, b).word, seen, deadline)) {
            break;
          }
        }
        if (started.ok()) {
          ops.push_back(std::move(op));
          break;
        }
        ReleaseSource(parts_, *ts, b, pos);
        if (!NoLongerDirty(started)) {
          note(started);
          break;
        }
      }
    }
  }  // submitted here
  const Deadline io_deadline =
      Clock::now() + absl::ToChronoNanoseconds(parts_.options->io_timeout);
  for (const auto& op : ops) {
    std::unique_lock lock(op->mu);
    if (!op->cv.wait_until(lock, io_deadline, [&] { return op->done; })) {
      note(absl::DeadlineExceededError(absl::StrCat(
          "writing ", BlockName(*ts, op->block), " down to tier ",
          Sv(TierName(parts_.chain->kind(target))), " did not complete within "
          "EngineOptions::io_timeout (",
          absl::FormatDuration(parts_.options->io_timeout),
          "); the block stays dirty; the device may be stalled")));
      continue;
    }
    note(op->status);
  }
  return first;
}

absl::Status WriteBacks::Flush(const std::shared_ptr<TensorState>& ts) {
  std::lock_guard flush_lock(ts->info->flush_mu);
  absl::Status first;
  // A chain of host alone has nowhere to write to (target 0); over host
  // as the lowest tier, dirty GPU copies go down to it.
  const int target = FlushTarget();
  if (target > 0) {
    constexpr uint64_t kBatch = 64;
    for (uint64_t begin = 0; begin < ts->num_blocks; begin += kBatch) {
      absl::Status s =
          FlushBatch(ts, target, begin, std::min(ts->num_blocks, begin + kBatch));
      if (!s.ok() && first.ok()) first = s;
      if (absl::IsFailedPrecondition(s) && parts_.life->closing()) break;
    }
  }
  // Collected last: a background write-back that failed while this Flush
  // waited for its block is reported here, not by the next Flush.
  const absl::Status parked = ts->TakeWriteBackErrors();
  if (!parked.ok()) {
    return absl::Status(
        parked.code(),
        absl::StrCat(parked.message(),
                     first.ok() ? "; this Flush then wrote every dirty block "
                                  "of the tensor down"
                                : "; this Flush failed too: ",
                     first.ok() ? "" : first.message()));
  }
  return first;
}

}  // namespace strata::internal
