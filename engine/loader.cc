#include "engine/loader.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "engine/chain.h"
#include "engine/lifecycle.h"
#include "engine/residency.h"
#include "engine/shared_tensors.h"
#include "engine/stats.h"
#include "engine/prefetch_state.h"

namespace strata::internal {

using S = CopyState;

struct Loader::Op {
  Loader* loader = nullptr;
  std::shared_ptr<TensorState> ts;
  uint64_t block = 0;
  int pos = -1;
  Want want = Want::kNone;
  bool speculative = false;
  std::shared_ptr<PrefetchState> prefetch;
  uint64_t bytes = 0;
  tiers::Frame frame;
  bool holds_frame = false;
  bool read_bytes = false;  // bytes were copied or zero-filled (not overwrite)
  Source source;
  bool holds_source = false;  // a pin of the source, let go once published
  int held_pos = -1;          // the source's tier while held (under mu_)
  tiers::shm::SharedPin shared_pin;  // Source::kShared: held while copying
  Clock::time_point copy_started;
  std::shared_ptr<Op> self;  // alive until Finish

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Status status;
  bool owner_waiting = false;  // a pin may be granted in the published word
  // The owner's pin goes into the word being published (decided under mu,
  // so the owner cannot give up on it), and then it is the owner's: only
  // once the word is out, or the owner could unpin a word still loading.
  bool grant_pending = false;
  bool granted = false;
  bool early = false;      // publish in flight once enqueued (PinAsync)
  bool published = false;  // published in flight; Land completes it

  CopySlot& slot() const { return ts->copy(pos, block); }
};

std::shared_ptr<Loader::Op> Loader::Start(
    std::shared_ptr<TensorState> ts, uint64_t block, int pos, Want want,
    bool speculative, std::shared_ptr<PrefetchState> prefetch,
    Deadline deadline, CopyBatch* batch, bool early) {
  std::shared_ptr<Op> op = StartLoad(std::move(ts), block, pos, want, speculative,
                                     std::move(prefetch), deadline, batch, early);
  // The copy is on its way: the reserve is refilled while the device works
  // (with a batch, by its owner once the batch is submitted). Not when the
  // copy is already here, published unpinned for a pin that waits to make
  // it the block's only copy (a write while another copy is current): the
  // refill could evict just that copy, and the pin would load it again,
  // for ever when every other frame of the tier is pinned (chain_test
  // AWritePinIsNotEvictedByItsOwnLoadsRefill). The next allocation refills.
  if (batch == nullptr && !AwaitsSole(*op)) parts_.tier(pos).RefillReserve(1);
  return op;
}

bool Loader::AwaitsSole(Op& op) {
  std::lock_guard lock(op.mu);
  return op.done && op.status.ok() && op.owner_waiting && !op.granted &&
         op.want != Want::kRead;
}

std::shared_ptr<Loader::Op> Loader::StartLoad(
    std::shared_ptr<TensorState> ts, uint64_t block, int pos, Want want,
    bool speculative, std::shared_ptr<PrefetchState> prefetch,
    Deadline deadline, CopyBatch* batch, bool early) {
  auto op = std::make_shared<Op>();
  op->early = early && want == Want::kRead;
  op->loader = this;
  op->block = block;
  op->pos = pos;
  op->want = want;
  op->speculative = speculative;
  op->prefetch = std::move(prefetch);
  op->bytes = ts->BlockSize(block);
  op->ts = std::move(ts);
  op->owner_waiting = want != Want::kNone;
  op->self = op;
  {
    std::lock_guard lock(mu_);
    loading_[&op->slot()] = op;
  }
  parts_.life->AsyncBegin();
  if (absl::Status s = ReserveFrame(*op, deadline, batch); !s.ok()) {
    Complete(*op, s);
    return op;
  }
  if (op->ts->info->shared) {
    StartShared(op, batch);
    return op;
  }
  if (want == Want::kOverwrite && PublishOverwrite(*op)) return op;
  absl::StatusOr<Source> source = PickSource(*op, deadline, batch);
  if (!source.ok()) {
    Complete(*op, source.status());
    return op;
  }
  op->source = *source;
  op->holds_source = source->kind == Source::kCopy;  // held by ChooseSource
  op->read_bytes = true;
  if (source->kind == Source::kZeros && op->frame.data != nullptr) {
    // A block never written reads as zeros, also in a reused frame.
    std::memset(op->frame.data, 0, op->bytes);
    Complete(*op, absl::OkStatus());
    return op;
  }
  // Device frames (the GPU's) get their zeros, like any bytes, by a copy.
  StartCopy(op, batch);
  return op;
}

absl::Status Loader::ReserveFrame(Op& op, Deadline deadline, CopyBatch* batch) {
  Residency& tier = parts_.tier(op.pos);
  const Residency::FrameOwner owner{op.ts->Key(op.block), &op.slot(), op.ts.get()};
  absl::StatusOr<tiers::Frame> frame =
      tier.TryAllocate(op.bytes, owner, op.speculative);
  if (!frame.ok()) {
    // Finding a frame may wait for frames in transit, and the copies
    // gathered in `batch` hold some: they must be on their way first, or
    // the caller would wait for itself.
    if (batch != nullptr) batch->Submit();
    frame = tier.Allocate(op.bytes, deadline, owner, op.speculative);
  }
  if (!frame.ok()) return frame.status();
  op.frame = *frame;
  op.holds_frame = true;  // counted in transit by the allocation
  return absl::OkStatus();
}

absl::StatusOr<Source> Loader::PickSource(Op& op, Deadline deadline,
                                          CopyBatch* batch) {
  TensorState& ts = *op.ts;
  for (;;) {
    if (absl::Status s = Interrupted(parts_, ts); !s.ok()) return s;
    source_hook(ts.info->name, op.block, parts_.chain->kind(op.pos));
    Source source;
    uint64_t version = 0;
    {
      LatchGuard latch(ts.record(op.block).latch, *parts_.waits);
      source = ChooseSource(parts_, ts, op.block, op.pos);
      version = ts.record(op.block).version;
      if (source.kind == Source::kCopy) {
        // Under the latch that granted the source's pin: whoever looks at
        // that pin under the latch (DropTensor, Close) knows it is ours.
        std::lock_guard lock(mu_);
        op.held_pos = source.pos;
      }
    }
    if (source.kind == Source::kCopy || source.kind == Source::kZeros) {
      return source;
    }
    if (source.kind == Source::kLost) {
      return absl::DataLossError(absl::StrCat(
          BlockName(ts, op.block), " version ", version,
          " has no copy in any tier (internal error: please report it)"));
    }
    // The copy we wait for may be released only by a pinner that waits for
    // a copy gathered in `batch`: send the batch on its way first.
    if (batch != nullptr) batch->Submit();
    CopySlot& waited = ts.copy(source.pos, op.block);
    if (!parts_.waits->WaitForChange(waited.word, source.seen, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          BlockName(ts, op.block), ": its copy in tier ",
          Sv(TierName(parts_.chain->kind(source.pos))),
          " stayed pinned for writing or in transit for ",
          absl::FormatDuration(parts_.options->pin_wait_timeout),
          "; release the write pin (a thread cannot hold a write pin of a "
          "block in one tier and pin it in another) or raise "
          "EngineOptions::pin_wait_timeout"));
    }
  }
}

void Loader::StartShared(const std::shared_ptr<Op>& op, CopyBatch* batch) {
  // The pin below may wait for another process's writer: copies gathered
  // so far must not wait with it.
  if (batch != nullptr) batch->Submit();
  absl::StatusOr<tiers::shm::SharedPin> pin =
      parts_.shared->Pin(*op->ts, op->block, Access::kRead);
  if (!pin.ok()) {
    Complete(*op, pin.status());
    return;
  }
  op->shared_pin = *pin;
  op->holds_source = true;
  op->source = {.kind = Source::kShared, .version = pin->version};
  op->source.frame.data = pin->data;
  op->source.frame.bytes = pin->size;
  op->read_bytes = true;
  StartCopy(op, batch);
}

void Loader::StartCopy(const std::shared_ptr<Op>& op, CopyBatch* batch) {
  CopyJob job;
  job.src = op->source.kind == Source::kZeros    ? kZerosSource
            : op->source.kind == Source::kShared ? kHostSource
                                                 : op->source.pos;
  job.src_frame = op->source.frame;
  job.src_checksum = op->source.checksum;
  job.dst = op->pos;
  job.dst_frame = op->frame;
  job.key = {op->ts->id, op->block, op->source.version};
  job.bytes = op->bytes;
  job.done = &Loader::OnCopied;
  if (op->early) job.enqueued = &Loader::OnEnqueued;
  // The pinner that started this load drives it (AwaitOwn, DriveSource).
  {
    std::lock_guard lock(op->mu);
    job.caller_drives = op->owner_waiting && op->source.kind == Source::kCopy;
  }
  job.user = op.get();
  op->copy_started = Clock::now();
  if (batch != nullptr) {
    batch->Add(job);
  } else {
    internal::StartCopy(*parts_.chain, job);
  }
}

bool Loader::PublishOverwrite(Op& op) {
  TensorState& ts = *op.ts;
  {
    LatchGuard latch(ts.record(op.block).latch, *parts_.waits);
    // Reading nothing is right only if no other copy must be invalidated
    // first; else the new copy loads like any other, then MakeSoleAndPin.
    if (NeedsShared(parts_, ts, op.block, op.pos)) return false;
    CopySlot& slot = op.slot();
    slot.frame = op.frame;
    slot.version = ts.record(op.block).version;
    slot.checksum = 0;
    uint64_t word = S::Resident(0);
    {
      std::lock_guard lock(op.mu);
      if (op.owner_waiting) {
        word |= 1 | S::kExclusive | S::kDirty | S::kNew;
        op.grant_pending = true;
      }
    }
    parts_.waits->Publish(slot.word, word);
  }
  GrantPublished(op);
  Finish(op, absl::OkStatus());
  return true;
}

void Loader::OnCopied(void* user, const CopyResult& result) {
  Op& op = *static_cast<Op*>(user);
  Loader& self = *op.loader;
  if (result.status.ok() && op.source.kind == Source::kCopy) {
    self.parts_.stats->tier(op.source.pos).bytes_out.fetch_add(
        op.bytes, std::memory_order_relaxed);
  } else if (result.failed_pos >= 0) {
    TierCounters& failed = self.parts_.stats->tier(result.failed_pos);
    failed.errors.fetch_add(1, std::memory_order_relaxed);
    // Nobody waits for this one: a pin that needs the block loads it again.
    if (op.speculative && op.prefetch == nullptr) {
      failed.speculative_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  self.Complete(op, result.status);
}

void Loader::OnEnqueued(void* user) {
  Op& op = *static_cast<Op*>(user);
  Loader& self = *op.loader;
  TensorState& ts = *op.ts;
  {
    LatchGuard latch(ts.record(op.block).latch, *self.parts_.waits);
    CopySlot& slot = op.slot();
    slot.frame = op.frame;
    slot.version = op.source.version;
    slot.checksum = 0;
    // The source stays held, and keeps its dirty mark, until the copy
    // landed (Land): a failed copy then loses nothing.
    uint64_t flags = S::kInFlight;
    if (NeedsShared(self.parts_, ts, op.block, op.pos)) flags |= S::kShared;
    {
      std::lock_guard lock(op.mu);
      if (op.owner_waiting) {
        flags += 1;
        op.grant_pending = true;
      }
      op.published = true;
    }
    // As PublishLocked: a copy nobody's pin came with is prefetched.
    if (!op.grant_pending && op.speculative) flags |= S::kPrefetched;
    self.parts_.waits->Publish(slot.word, S::Resident(flags));
  }
  self.GrantPublished(op);
  std::lock_guard lock(op.mu);
  op.cv.notify_all();
}

void Loader::GrantPublished(Op& op) {
  {
    std::lock_guard lock(op.mu);
    if (!op.grant_pending) return;
    op.granted = true;
  }
  op.cv.notify_all();
}

void Loader::Land(Op& op, const absl::Status& status) {
  TensorState& ts = *op.ts;
  LatchGuard latch(ts.record(op.block).latch, *parts_.waits);
  uint64_t dirty = 0;
  if (status.ok() && op.source.kind == Source::kCopy && op.source.moves_dirty) {
    std::atomic<uint64_t>& src = ts.copy(op.source.pos, op.block).word;
    if (S(src.fetch_and(~S::kDirty, std::memory_order_acq_rel)).dirty()) {
      dirty = S::kDirty;
    }
  }
  std::atomic<uint64_t>& word = op.slot().word;
  uint64_t w = word.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t landed = S(w).Landed(status.ok());
    ABSL_ASSERT(landed != 0 && "a copy in flight left its state");
    if (landed == 0) return;
    if (word.compare_exchange_weak(w, (landed | dirty) & ~S::kWaiters,
                                   std::memory_order_acq_rel)) {
      break;
    }
  }
  if (S(w).has_waiters()) parts_.waits->Wake(word);
}

void Loader::Complete(Op& op, absl::Status status) {
  if (op.published) {
    // Published in flight (OnEnqueued): its pins may live, so the copy
    // stays; a failed one is dropped once they are gone.
    Land(op, status);
  } else {
    LatchGuard latch(op.ts->record(op.block).latch, *parts_.waits);
    if (status.ok()) {
      PublishLocked(op);
    } else {
      op.slot().frame = op.frame;
      FreeCopyLocked(parts_, *op.ts, op.block, op.pos);
    }
  }
  ReleaseHeldSource(op);
  Finish(op, status);
}

void Loader::ReleaseHeldSource(Op& op) {
  // Only once the new copy is published (or dropped): until then the
  // source is the one copy that shows the bytes (the new copy's version is
  // set when it is published), and it may carry the dirty mark that
  // publishing moves onto the new copy. Let go earlier, it could be
  // evicted or written meanwhile (blocks were lost so: engine_stress_test,
  // StepsFromOneThreadWhileOthersPin under TSan).
  if (!op.holds_source) return;
  op.holds_source = false;
  if (op.source.kind == Source::kCopy) {
    // Both under the latch, as the hold was recorded (PickSource): a drop
    // judges a pinned copy under it (EngineCore::CallersPin), and must not
    // see the word without this pin while HoldsSource still says it is
    // there. It then took the caller's pin left for this load's, waited
    // for a change the caller's pin need never make, and failed after
    // io_timeout with 'stayed in transit' instead of refusing at once.
    LatchGuard latch(op.ts->record(op.block).latch, *parts_.waits);
    ReleaseSource(parts_, *op.ts, op.block, op.source.pos);
    std::lock_guard lock(mu_);
    op.held_pos = -1;
  } else if (op.source.kind == Source::kShared) {
    parts_.shared->Unpin(op.shared_pin.record, op.shared_pin.count, false);
  }
}

void Loader::PublishLocked(Op& op) {
  TensorState& ts = *op.ts;
  CopySlot& slot = op.slot();
  slot.frame = op.frame;
  slot.version = op.source.version;
  slot.checksum = 0;
  uint64_t flags = 0;
  if (op.source.kind == Source::kCopy && op.source.moves_dirty) {
    // The lowest holder of the newest bytes is now this copy.
    std::atomic<uint64_t>& src = ts.copy(op.source.pos, op.block).word;
    if (S(src.fetch_and(~S::kDirty, std::memory_order_acq_rel)).dirty()) {
      flags |= S::kDirty;
    }
  }
  if (NeedsShared(parts_, ts, op.block, op.pos)) flags |= S::kShared;
  {
    std::lock_guard lock(op.mu);
    if (op.owner_waiting && op.want == Want::kRead) {
      flags += 1;
      op.grant_pending = true;
    } else if (op.owner_waiting && op.want != Want::kNone &&
               (flags & S::kShared) == 0) {
      flags |= 1 | S::kExclusive | S::kDirty | S::kNew;
      op.grant_pending = true;
    }
  }
  if (!op.grant_pending && op.speculative) flags |= S::kPrefetched;
  parts_.waits->Publish(slot.word, S::Resident(flags));
  GrantPublished(op);
}

void Loader::Finish(Op& op, const absl::Status& status) {
  Residency& tier = parts_.tier(op.pos);
  // A failed copy published in flight stays resident until it is dropped:
  // eviction must find it.
  if (status.ok() || op.published) {
    bool granted;
    {
      std::lock_guard lock(op.mu);
      granted = op.granted;
    }
    // A load nobody's pin came with (readahead, a step plan, Prefetch) is
    // not an access: the pin that uses it is logged as a hit.
    tier.Insert(op.ts->Key(op.block), /*accessed=*/granted || !op.speculative);
  }
  if (status.ok()) {
    if (op.read_bytes) {
      parts_.stats->tier(op.pos).bytes_in.fetch_add(op.bytes,
                                                    std::memory_order_relaxed);
    }
  }
  if (op.holds_frame) tier.TransitEnd();
  {
    std::lock_guard lock(mu_);
    auto it = loading_.find(&op.slot());
    if (it != loading_.end() && it->second.get() == &op) loading_.erase(it);
  }
  {
    std::lock_guard lock(op.mu);
    op.done = true;
    op.status = status;
    op.cv.notify_all();
  }
  if (op.prefetch != nullptr) op.prefetch->Done(status);
  std::shared_ptr<Op> self = std::move(op.self);
  parts_.life->AsyncEnd();
}

absl::Status Loader::Timeout(const Op& op) const {
  return absl::DeadlineExceededError(absl::StrCat(
      "tier ", Sv(TierName(parts_.chain->kind(op.source.pos >= 0 ? op.source.pos : op.pos))),
      ": loading ", BlockName(*op.ts, op.block), " into tier ",
      Sv(TierName(parts_.chain->kind(op.pos))),
      " did not complete within EngineOptions::io_timeout (",
      absl::FormatDuration(parts_.options->io_timeout),
      "); its frame stays reserved until the device answers; the device may "
      "be stalled"));
}

Loader::Outcome Loader::AwaitOwn(Op& op, Deadline deadline) {
  const Deadline io = Clock::now() + absl::ToChronoNanoseconds(parts_.options->io_timeout);
  const Deadline until = std::min(deadline, io);
  DriveSource(op, until);
  std::unique_lock lock(op.mu);
  op.cv.wait_until(lock, until, [&] {
    return op.done || op.granted || parts_.life->closing();
  });
  // Granted means published with this pinner's pin counted, even if the
  // load has not finished its bookkeeping yet: the pin is this caller's.
  if (op.granted) return {absl::OkStatus(), true};
  if (op.grant_pending) {
    // Counted in the word its publisher is putting out right now (a few
    // instructions away on a running thread): the pin is this caller's.
    op.cv.wait(lock, [&] { return op.granted; });
    return {absl::OkStatus(), true};
  }
  if (op.done) return {op.status, false};
  op.owner_waiting = false;  // the load goes on without this pinner
  if (parts_.life->closing()) return {Lifecycle::ClosedError(), false};
  return {Timeout(op), false};
}

// A copy from a tier whose completions take a CPU to drive (the remote
// tier over a software provider): for a short while the waiting pinner
// drives them itself, so that its own completion runs here rather than
// on the tier's thread followed by a wake-up of this one (measured: the
// 4 KiB remote pin, bench/remote_bench BM_RemotePin4K; docs/PERFORMANCE.md).
// Then, or at once for other tiers, it blocks as usual.
void Loader::DriveSource(Op& op, Deadline until) {
  if (op.source.kind != Source::kCopy || op.source.pos < 0) return;
  tiers::Tier& source = parts_.chain->tier(op.source.pos);
  const Deadline stop = std::min(until, Clock::now() + kDriveFor);
  source.DriveCompletions(
      [&] {
        std::lock_guard lock(op.mu);
        return op.done || op.granted || parts_.life->closing();
      },
      stop);
}

std::shared_ptr<Loader::Op> Loader::Find(const CopySlot& slot) {
  std::lock_guard lock(mu_);
  auto it = loading_.find(&slot);
  return it == loading_.end() ? nullptr : it->second;
}

bool Loader::HoldsSource(TensorState& ts, uint64_t block, int pos) {
  std::lock_guard lock(mu_);
  for (int target = 0; target < ts.chain_size; ++target) {
    auto it = loading_.find(&ts.copy(target, block));
    if (it != loading_.end() && it->second->held_pos == pos) return true;
  }
  return false;
}

absl::Status Loader::AwaitOther(Op& op, Deadline deadline) {
  const Deadline io = Clock::now() + absl::ToChronoNanoseconds(parts_.options->io_timeout);
  const Deadline until = std::min(deadline, io);
  std::unique_lock lock(op.mu);
  op.cv.wait_until(lock, until, [&] {
    return op.done || op.published || parts_.life->closing();
  });
  if (op.published && !op.done) return absl::OkStatus();  // look at the copy
  if (op.done) {
    // A demand load's error reaches every waiter; a speculative one's
    // waiters load again themselves.
    return op.speculative ? absl::OkStatus() : op.status;
  }
  if (parts_.life->closing()) return Lifecycle::ClosedError();
  return Timeout(op);
}

void Loader::Interrupt() {
  std::vector<std::shared_ptr<Op>> ops;
  {
    std::lock_guard lock(mu_);
    for (const auto& [slot, op] : loading_) ops.push_back(op);
  }
  for (const auto& op : ops) {
    std::lock_guard lock(op->mu);
    op->cv.notify_all();
  }
}

}  // namespace strata::internal
