#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>

#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "engine/engine_core.h"
#include "util/status_macros.h"

namespace strata::internal {
namespace {

using tiers::Frame;
using tiers::Transfer;
using namespace word;  // NOLINT: the state word's vocabulary

struct TlsRing {
  uint64_t uid = 0;
  ThreadRing* ring = nullptr;
};
thread_local TlsRing tls_ring;

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Counts down once per transfer completion; the submitter waits on it.
struct Latch {
  std::mutex mu;
  std::condition_variable cv;
  int pending ABSL_GUARDED_BY(mu) = 0;
  void Wait() {
    std::unique_lock lock(mu);
    cv.wait(lock, [this] { return pending == 0; });
  }
  static void OnDone(Transfer* t) {
    auto* latch = static_cast<Latch*>(t->user);
    std::unique_lock lock(latch->mu);
    // Notified under the lock: the waiter owns the latch and may destroy it
    // as soon as it can take the mutex.
    if (--latch->pending == 0) latch->cv.notify_all();
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// Thread rings

inline ThreadRing* EngineCore::LocalRing() {
  if (ABSL_PREDICT_TRUE(tls_ring.uid == uid_)) return tls_ring.ring;
  return RegisterThread();
}

ThreadRing* EngineCore::RegisterThread() {
  std::unique_lock lock(rings_mu_);
  ThreadRing*& ring = ring_of_thread_[std::this_thread::get_id()];
  if (ring == nullptr) {
    rings_.push_back(std::make_unique<ThreadRing>());
    ring = rings_.back().get();
  }
  tls_ring = {uid_, ring};
  return ring;
}

void EngineCore::DrainLocked() {
  std::unique_lock lock(rings_mu_);
  for (auto& ring : rings_) {
    ring->Drain([this](uint64_t key) { policy_->Access(key); });
  }
}

// ---------------------------------------------------------------------------
// Waiting

EngineCore::Deadline EngineCore::WaitDeadline() const {
  return std::chrono::steady_clock::now() +
         absl::ToChronoNanoseconds(options_.pin_wait_timeout);
}

bool EngineCore::WaitForChange(BlockSlot* slot, uint64_t seen,
                               Deadline deadline) {
  WaitStripe& stripe =
      stripes_[(reinterpret_cast<uintptr_t>(slot) / 64) % kWaitStripes];
  std::unique_lock lock(stripe.mu);
  for (;;) {
    uint64_t w = slot->word.load(std::memory_order_acquire);
    if ((w & ~kWaiters) != (seen & ~kWaiters)) return true;
    if ((w & kWaiters) == 0 &&
        !slot->word.compare_exchange_weak(w, w | kWaiters,
                                          std::memory_order_acq_rel)) {
      continue;
    }
    if (stripe.cv.wait_until(lock, deadline) == std::cv_status::timeout) {
      w = slot->word.load(std::memory_order_acquire);
      return (w & ~kWaiters) != (seen & ~kWaiters);
    }
  }
}

void EngineCore::Wake(BlockSlot* slot) {
  slot->word.fetch_and(~kWaiters, std::memory_order_acq_rel);
  WaitStripe& stripe =
      stripes_[(reinterpret_cast<uintptr_t>(slot) / 64) % kWaitStripes];
  std::unique_lock lock(stripe.mu);
  stripe.cv.notify_all();
}

void EngineCore::Publish(BlockSlot* slot, uint64_t desired) {
  uint64_t old = slot->word.exchange(desired & ~kWaiters,
                                     std::memory_order_acq_rel);
  if (old & kWaiters) Wake(slot);
}

// ---------------------------------------------------------------------------
// Pin and unpin

strata::Pin EngineCore::MakePin(TensorState* ts, uint64_t block,
                                BlockSlot* slot, Access access) {
  strata::Pin pin;
  pin.core_ = this;
  pin.word_ = &slot->word;
  pin.data_ = slot->data;
  pin.size_ = ts->BlockSize(block);
  pin.block_ = block;
  pin.tier_ = Tier::kHost;
  pin.access_ = access == Access::kOverwrite ? Access::kWrite : access;
  return pin;
}

absl::StatusOr<strata::Pin> EngineCore::Pin(const Tensor& tensor,
                                            uint64_t block, Tier tier,
                                            Access access) {
  TensorState* ts = tensor.state_.get();
  if (ABSL_PREDICT_FALSE(ts == nullptr || ts->core != this ||
                         tier != Tier::kHost || block >= ts->num_blocks ||
                         ts->gate.load(std::memory_order_relaxed) != 0)) {
    return PinGated(tensor, block, tier, access);
  }
  ThreadRing* ring = LocalRing();
  // One hit in 64 is timed, so that the hot path rarely reads a clock.
  const bool timed =
      (ring->head.load(std::memory_order_relaxed) & 63) == 0;
  const int64_t start = timed ? NowNanos() : 0;
  BlockSlot* slot = &ts->slots[block];
  uint64_t w = slot->word.load(std::memory_order_acquire);
  if (ABSL_PREDICT_TRUE(StateOf(w) == kResident && !(w & kExclusive))) {
    uint64_t desired = 0;
    if (access == Access::kRead) {
      if (Pins(w) != kPinMask) desired = (w + 1) & ~kPrefetched;
    } else if (Pins(w) == 0) {
      desired = (((w | kExclusive | kDirty) + 1) + kVersionOne) & ~kPrefetched;
    }
    if (desired != 0 &&
        slot->word.compare_exchange_strong(w, desired,
                                           std::memory_order_acquire,
                                           std::memory_order_relaxed)) {
      ring->Record(ts->Key(block));  // also counts the hit
      if (timed) ring->hit_latency.Record(NowNanos() - start);
      if (ABSL_PREDICT_FALSE(w & kPrefetched)) OnPrefetchedHit(ts, block);
      return MakePin(ts, block, slot, access);
    }
  }
  return PinSlow(ts, block, access, ring, timed ? start : NowNanos());
}

absl::StatusOr<strata::Pin> EngineCore::PinGated(const Tensor& tensor,
                                                 uint64_t block, Tier tier,
                                                 Access access) {
  TensorState* ts = tensor.state_.get();
  if (ts == nullptr || ts->core != this || tier != Tier::kHost ||
      block >= ts->num_blocks || (ts->gate.load() & ~TensorState::kGateStep)) {
    return PinError(tensor, block, tier);
  }
  const int64_t start = NowNanos();
  OnStepPin(ts, block);
  return PinSlow(ts, block, access, LocalRing(), start);
}

void EngineCore::SetGate(uint32_t bit, bool on) {
  std::unique_lock lock(catalog_mu_);
  gate_ = on ? (gate_ | bit) : (gate_ & ~bit);
  for (const auto& ts : by_id_) {
    if (ts == nullptr) continue;
    if (on) {
      ts->gate.fetch_or(bit, std::memory_order_acq_rel);
    } else {
      ts->gate.fetch_and(~bit, std::memory_order_acq_rel);
    }
  }
}

absl::StatusOr<strata::Pin> EngineCore::PinSlow(TensorState* ts,
                                                uint64_t block, Access access,
                                                ThreadRing* ring,
                                                int64_t start_ns) {
  BlockSlot* slot = &ts->slots[block];
  const Deadline deadline = WaitDeadline();
  for (;;) {
    if (ts->dropped()) {
      return absl::NotFoundError(absl::StrCat(
          "tensor '", ts->name, "' was dropped; open or create it again"));
    }
    STRATA_RETURN_IF_ERROR(CheckOpen());
    uint64_t w = slot->word.load(std::memory_order_acquire);
    switch (StateOf(w)) {
      case kResident: {
        uint64_t desired = 0;
        if (!(w & kExclusive)) {
          if (access == Access::kRead) {
            if (Pins(w) == kPinMask) {
              return absl::ResourceExhaustedError(absl::StrCat(
                  BlockName(ts, block), " has ", kPinMask,
                  " read pins, the most a block can hold; release some"));
            }
            desired = (w + 1) & ~kPrefetched;
          } else if (Pins(w) == 0) {
            desired = (((w | kExclusive | kDirty) + 1) + kVersionOne) &
                      ~kPrefetched;
          }
        }
        if (desired != 0) {
          if (slot->word.compare_exchange_weak(w, desired,
                                               std::memory_order_acquire)) {
            if (w & kPrefetched) OnPrefetchedHit(ts, block);
            ring->Record(ts->Key(block));
            ring->hit_latency.Record(NowNanos() - start_ns);
            return MakePin(ts, block, slot, access);
          }
          continue;
        }
        // A conflicting pin: wait for it to go.
        if (!WaitForChange(slot, w, deadline)) {
          return absl::DeadlineExceededError(absl::StrCat(
              BlockName(ts, block), " stayed pinned ",
              (w & kExclusive) ? "for writing" : "for reading", " for ",
              absl::FormatDuration(options_.pin_wait_timeout),
              "; release the conflicting pin (a thread cannot hold a read pin "
              "and ask for a write pin of the same block) or raise "
              "EngineOptions::pin_wait_timeout"));
        }
        continue;
      }
      case kLoading:
      case kEvicting:
        if (!WaitForChange(slot, w, deadline)) {
          return absl::DeadlineExceededError(absl::StrCat(
              BlockName(ts, block), " is still being moved after ",
              absl::FormatDuration(options_.pin_wait_timeout),
              "; the lower tier may be stalled"));
        }
        continue;
      case kAbsent:
        break;
    }
    // Absent: this thread loads it.
    const uint64_t loading = WithState(w & ~(kPinMask | kExclusive | kDirty),
                                       kLoading);
    if (!slot->word.compare_exchange_weak(w, loading,
                                          std::memory_order_acquire)) {
      continue;
    }
    const uint64_t version = VersionOf(w);
    // An overwrite reads nothing, so it asks nothing of readahead. A block
    // never written reads as zeros, but reading ahead there still pays: the
    // mover finds (and frees) the frames while the caller computes.
    if (access != Access::kOverwrite) OnDemandMiss(ts, block);
    absl::Status status;
    absl::StatusOr<Frame> frame = AllocateFrame(ts->frame_bytes);
    if (frame.ok()) TransitBegin();
    if (frame.ok() && access != Access::kOverwrite) {
      status = FillFrame(ts, block, slot, version, frame->data);
      if (!status.ok()) host_->Free(*frame);
    } else {
      status = frame.status();
    }
    if (!status.ok()) {
      Publish(slot, WithState(slot->word.load() & ~kWaiters, kAbsent));
      if (frame.ok()) TransitEnd();
      return status;
    }
    slot->data = frame->data;
    slot->host_offset = frame->offset;
    if (access != Access::kOverwrite) {
      host_bytes_in_.fetch_add(ts->BlockSize(block), std::memory_order_relaxed);
    }
    {
      std::unique_lock lock(policy_mu_);
      DrainLocked();
      policy_->Insert(ts->Key(block));
    }
    uint64_t resident = WithState(slot->word.load(), kResident) | 1;
    if (access != Access::kRead) {
      resident = (resident | kExclusive | kDirty) + kVersionOne;
    }
    Publish(slot, resident);
    TransitEnd();
    Bump(ring->misses);
    ring->miss_latency.Record(NowNanos() - start_ns);
    return MakePin(ts, block, slot, access);
  }
}

void EngineCore::Unpin(BlockSlot* slot, Access access) {
  const uint64_t step = access == Access::kRead ? 1 : kExclusive + 1;
  const uint64_t old = slot->word.fetch_sub(step, std::memory_order_release);
  ABSL_ASSERT(Pins(old) >= 1);
  if (ABSL_PREDICT_FALSE(old & kWaiters)) Wake(slot);
}

// ---------------------------------------------------------------------------
// Frames, eviction, write-back

absl::StatusOr<Frame> EngineCore::AllocateFrame(uint64_t bytes) {
  const Deadline deadline = WaitDeadline();
  // Bounded: every round gets a frame, frees or starts freeing one, or waits
  // for a frame in transit; the bound only matters when other threads keep
  // taking what this one frees.
  for (int round = 0; round < 100000; ++round) {
    const uint64_t epoch = space_epoch_.load(std::memory_order_acquire);
    absl::StatusOr<Frame> frame = host_->Allocate(bytes);
    if (frame.ok()) {
      EvictAhead();
      return frame;
    }
    if (!absl::IsResourceExhausted(frame.status())) return frame;
    STRATA_RETURN_IF_ERROR(TakeWriteBackError());
    const int64_t in_flight =
        writebacks_in_flight_.load(std::memory_order_acquire);
    const bool in_transit =
        frames_in_transit_.load(std::memory_order_acquire) > 0;
    // Enough write-backs under way: wait for one. (A write-back's frame is
    // in transit until it is freed, so with nothing in transit the count is
    // about to drop and eviction is worth a try.)
    if (in_flight >= static_cast<int64_t>(max_writebacks_) && in_transit) {
      if (!WaitForSpace(epoch, deadline)) break;
      continue;
    }
    const size_t want = in_flight < static_cast<int64_t>(max_writebacks_)
                            ? max_writebacks_ - static_cast<size_t>(in_flight)
                            : 1;
    EvictResult evicted = EvictSome(want);
    if (evicted.freed > 0) continue;
    if (evicted.started == 0 &&
        frames_in_transit_.load(std::memory_order_acquire) <= 0) {
      // Eviction said why it could not help (all pinned, lower tier full).
      return evicted.error.ok()
                 ? absl::ResourceExhaustedError(
                       "tier host: no frame could be freed; release pins or "
                       "raise EngineOptions::host.capacity_bytes")
                 : evicted.error;
    }
    if (!WaitForSpace(epoch, deadline)) break;
  }
  if (std::chrono::steady_clock::now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat(
        "tier host: no frame came free within ",
        absl::FormatDuration(options_.pin_wait_timeout),
        " while blocks were being written back; the lower tier may be "
        "stalled"));
  }
  return absl::ResourceExhaustedError(
      "tier host: could not find a free frame while other threads kept "
      "filling the tier; raise EngineOptions::host.capacity_bytes");
}

void EngineCore::EvictAhead() {
  // Keep a reserve of free frames, refilled by write-backs started before
  // anyone waits for them: a thread that misses then finds a frame at once
  // instead of waiting for the device.
  if (host_->capacity() - host_->used() >= reserve_bytes_) return;
  const int64_t in_flight = writebacks_in_flight_.load(std::memory_order_acquire);
  if (in_flight >= static_cast<int64_t>(max_writebacks_)) return;
  // Speculative: when nothing can go now, the caller that next needs a
  // frame finds out itself; failed write-backs started here leave their
  // error for it (SetWriteBackError).
  (void)EvictSome(max_writebacks_ - static_cast<size_t>(in_flight));
}

void EngineCore::SetWriteBackError(uint64_t key, const absl::Status& status) {
  std::lock_guard lock(space_mu_);
  writeback_errors_[key] = status;
  has_writeback_errors_.store(true, std::memory_order_release);
}

void EngineCore::ClearWriteBackError(uint64_t key) {
  if (!has_writeback_errors_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(space_mu_);
  writeback_errors_.erase(key);
  has_writeback_errors_.store(!writeback_errors_.empty(),
                              std::memory_order_release);
}

absl::Status EngineCore::TakeWriteBackError() {
  if (!has_writeback_errors_.load(std::memory_order_acquire)) {
    return absl::OkStatus();
  }
  std::lock_guard lock(space_mu_);
  if (writeback_errors_.empty()) return absl::OkStatus();
  auto it = writeback_errors_.begin();
  absl::Status error = std::move(it->second);
  writeback_errors_.erase(it);
  has_writeback_errors_.store(!writeback_errors_.empty(),
                              std::memory_order_release);
  return error;
}

void EngineCore::TransitEnd() {
  frames_in_transit_.fetch_sub(1, std::memory_order_acq_rel);
  std::lock_guard lock(space_mu_);
  space_epoch_.fetch_add(1, std::memory_order_acq_rel);
  space_cv_.notify_all();
}

bool EngineCore::WaitForSpace(uint64_t seen_epoch, Deadline deadline) {
  std::unique_lock lock(space_mu_);
  return space_cv_.wait_until(lock, deadline, [&] {
    return space_epoch_.load(std::memory_order_acquire) != seen_epoch;
  });
}

bool EngineCore::TryClaim(uint64_t key, bool take_prefetched, bool clean_only,
                          Victim* out) {
  std::shared_ptr<TensorState> ts = TensorById(static_cast<uint32_t>(key >> 32));
  if (ts == nullptr) return false;
  const uint64_t block = key & 0xFFFFFFFFu;
  if (block >= ts->num_blocks) return false;
  BlockSlot* slot = &ts->slots[block];
  uint64_t w = slot->word.load(std::memory_order_acquire);
  if (StateOf(w) != kResident || Pins(w) != 0 || (w & kExclusive)) return false;
  if ((w & kPrefetched) && !take_prefetched) return false;
  if ((w & kDirty) && (clean_only || nvme_ == nullptr)) return false;
  const uint64_t evicting = WithState(w, kEvicting);
  if (!slot->word.compare_exchange_strong(w, evicting,
                                          std::memory_order_acquire)) {
    return false;
  }
  *out = Victim{ts.get(), block, slot, evicting, std::move(ts)};
  TransitBegin();
  return true;
}

std::vector<EngineCore::Victim> EngineCore::ClaimVictims(size_t count,
                                                        bool clean_only) {
  std::vector<Victim> victims;
  std::unique_lock lock(policy_mu_);
  DrainLocked();
  // Blocks prefetched for a pin that has not come yet go only when nothing
  // else can.
  for (int pass = 0; pass < 2 && victims.empty(); ++pass) {
    while (victims.size() < count) {
      Victim v;
      std::optional<uint64_t> key = policy_->Evict(
          [&](uint64_t k) { return TryClaim(k, pass == 1, clean_only, &v); });
      if (!key) break;
      victims.push_back(v);
      // Batches only serve to keep the write-back queue deep: a clean
      // victim frees its frame at once, so stop there.
      if (!(v.word & kDirty)) break;
    }
  }
  return victims;
}

EngineCore::EvictResult EngineCore::EvictSome(size_t count) {
  EvictResult result;
  std::vector<Victim> victims = ClaimVictims(count, /*clean_only=*/false);
  if (victims.empty()) {
    result.error = absl::ResourceExhaustedError(absl::StrCat(
        "tier host: every frame (", host_->capacity(), " bytes) is pinned",
        nvme_ == nullptr ? ", dirty (no lower tier is configured)" : "",
        " or being moved; release pins",
        nvme_ == nullptr ? ", enable EngineOptions::nvme" : "",
        " or raise EngineOptions::host.capacity_bytes"));
    return result;
  }
  std::vector<Victim> dirty;
  for (const Victim& v : victims) {
    if (v.word & kDirty) {
      dirty.push_back(v);  // TryClaim refuses dirty blocks without NVMe
    } else {
      DropVictim(v);
      ++result.freed;
    }
  }
  if (!dirty.empty()) result.started = StartWriteBack(dirty, &result.error);
  if (result.freed == 0 && result.started == 0 &&
      absl::IsResourceExhausted(result.error)) {
    // The lower tier is full: clean copies can still go, at no cost.
    std::vector<Victim> clean = ClaimVictims(1, /*clean_only=*/true);
    if (!clean.empty()) {
      DropVictim(clean.front());
      result.freed = 1;
    }
  }
  return result;
}

void EngineCore::DropVictim(const Victim& v) {
  host_->Free(Frame{.offset = v.slot->host_offset,
                    .bytes = v.tensor->frame_bytes,
                    .data = v.slot->data});
  v.slot->data = nullptr;
  Publish(v.slot, WithState(v.slot->word.load() &
                                ~(kDirty | kPinMask | kPrefetched),
                            kAbsent));
  evictions_.fetch_add(1, std::memory_order_relaxed);
  TransitEnd();
}

void EngineCore::RestoreVictim(const Victim& v) {
  // Invariant 4: a copy the lower tier did not acknowledge stays dirty and
  // resident.
  {
    std::unique_lock lock(policy_mu_);
    policy_->Insert(v.tensor->Key(v.block));
  }
  Publish(v.slot, WithState(v.slot->word.load(), kResident));
  TransitEnd();
}

struct EngineCore::AsyncWriteBack {
  Transfer transfer;
  EngineCore* core;
  Victim victim;
};

size_t EngineCore::StartWriteBack(std::vector<Victim>& dirty,
                                  absl::Status* error) {
  std::vector<AsyncWriteBack*> started;
  std::vector<Transfer*> batch;
  for (Victim& v : dirty) {
    BlockSlot* slot = v.slot;
    if (!slot->nvme.valid()) {
      absl::StatusOr<Frame> extent = nvme_->Allocate(v.tensor->frame_bytes);
      if (!extent.ok()) {
        if (error->ok()) *error = extent.status();
        RestoreVictim(v);
        continue;
      }
      slot->nvme = *extent;
      slot->nvme_version = 0;
    }
    auto* wb = new AsyncWriteBack{{}, this, std::move(v)};
    Transfer& t = wb->transfer;
    t.op = Transfer::Op::kWrite;
    t.key = {wb->victim.tensor->id, wb->victim.block, VersionOf(wb->victim.word)};
    t.frame = slot->nvme;
    t.host = {slot->data, wb->victim.tensor->BlockSize(wb->victim.block)};
    t.on_done = &EngineCore::OnWriteBackDone;
    t.user = wb;
    started.push_back(wb);
    batch.push_back(&t);
  }
  if (batch.empty()) return 0;
  writebacks_in_flight_.fetch_add(static_cast<int64_t>(batch.size()));
  {
    std::unique_lock lock(mover_mu_);  // Close waits for these too
    async_in_flight_ += batch.size();
  }
  absl::Status submitted = nvme_->Submit(batch);
  if (submitted.ok()) return batch.size();
  if (error->ok()) *error = submitted;
  for (AsyncWriteBack* wb : started) {
    wb->transfer.status = submitted;
    OnWriteBackDone(&wb->transfer);
  }
  return 0;
}

void EngineCore::OnWriteBackDone(Transfer* t) {
  auto* wb = static_cast<AsyncWriteBack*>(t->user);
  EngineCore* core = wb->core;
  const Victim& v = wb->victim;
  if (t->status.ok()) {
    v.slot->nvme_checksum = t->checksum;
    v.slot->nvme_version = t->key.version;
    core->host_bytes_out_.fetch_add(t->host.size(), std::memory_order_relaxed);
    core->write_backs_.fetch_add(1, std::memory_order_relaxed);
    core->ClearWriteBackError(v.tensor->Key(v.block));
    core->DropVictim(v);
  } else {
    core->SetWriteBackError(v.tensor->Key(v.block), t->status);
    core->RestoreVictim(v);
    // Logged at the 1st, 2nd, 4th, 8th, ... failure: a dying device must
    // not flood the log.
    const uint64_t n = core->nvme_errors_.fetch_add(1) + 1;
    if ((n & (n - 1)) == 0) {
      core->Log(absl::StrCat("strata: write-back failed (", n,
                             " NVMe errors so far), the block stays dirty in "
                             "host memory and will be written again: ",
                             t->status.ToString()));
    }
  }
  delete wb;
  // Last: a snapshot that sees no write-back in flight sees its counters.
  core->writebacks_in_flight_.fetch_sub(1, std::memory_order_release);
  std::unique_lock lock(core->mover_mu_);
  if (--core->async_in_flight_ == 0) core->mover_cv_.notify_all();
}

void EngineCore::WriteBack(std::span<const Victim> items,
                           std::vector<absl::Status>& statuses) {
  std::vector<Transfer> transfers(items.size());
  std::vector<Transfer*> batch;
  Latch latch;
  for (size_t i = 0; i < items.size(); ++i) {
    const Victim& v = items[i];
    BlockSlot* slot = v.slot;
    if (!slot->nvme.valid()) {
      absl::StatusOr<Frame> extent = nvme_->Allocate(v.tensor->frame_bytes);
      if (!extent.ok()) {
        statuses[i] = extent.status();
        continue;
      }
      slot->nvme = *extent;
      slot->nvme_version = 0;
    }
    Transfer& t = transfers[i];
    t.op = Transfer::Op::kWrite;
    t.key = {v.tensor->id, v.block, VersionOf(v.word)};
    t.frame = slot->nvme;
    t.host = {slot->data, v.tensor->BlockSize(v.block)};
    t.on_done = &Latch::OnDone;
    t.user = &latch;
    batch.push_back(&t);
  }
  if (batch.empty()) return;
  {
    std::unique_lock lock(latch.mu);
    latch.pending = static_cast<int>(batch.size());
  }
  absl::Status submitted = nvme_->Submit(batch);
  if (!submitted.ok()) {
    for (Transfer* t : batch) statuses[t - transfers.data()] = submitted;
    return;
  }
  latch.Wait();
  for (Transfer* t : batch) {
    const size_t i = t - transfers.data();
    statuses[i] = t->status;
    if (t->status.ok()) {
      items[i].slot->nvme_checksum = t->checksum;
      items[i].slot->nvme_version = t->key.version;
      host_bytes_out_.fetch_add(t->host.size(), std::memory_order_relaxed);
    }
  }
}

absl::Status EngineCore::FillFrame(TensorState* ts, uint64_t block,
                                   BlockSlot* slot, uint64_t version,
                                   std::byte* data) {
  const uint64_t size = ts->BlockSize(block);
  if (version == 0) {  // never written: a new tensor reads as zeros
    std::memset(data, 0, size);
    return absl::OkStatus();
  }
  if (nvme_ == nullptr || !slot->nvme.valid() || slot->nvme_version != version) {
    return absl::DataLossError(absl::StrCat(
        BlockName(ts, block), " version ", version,
        " has no copy in any tier (internal error: please report it)"));
  }
  Latch latch;
  Transfer t;
  t.op = Transfer::Op::kRead;
  t.key = {ts->id, block, version};
  t.frame = slot->nvme;
  t.host = {data, size};
  t.checksum = slot->nvme_checksum;
  t.on_done = &Latch::OnDone;
  t.user = &latch;
  {
    std::unique_lock lock(latch.mu);
    latch.pending = 1;
  }
  Transfer* batch[1] = {&t};
  STRATA_RETURN_IF_ERROR(nvme_->Submit(batch));
  latch.Wait();
  if (!t.status.ok()) nvme_errors_.fetch_add(1, std::memory_order_relaxed);
  return t.status;
}

// ---------------------------------------------------------------------------
// Flush

absl::Status EngineCore::Flush(const Tensor& tensor) {
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, CheckTensor(tensor));
  if (nvme_ == nullptr) return absl::OkStatus();  // host is the lowest tier
  std::unique_lock flush_lock(ts->flush_mu);
  const Deadline deadline = WaitDeadline();
  constexpr size_t kBatch = 64;
  absl::Status first_error;
  for (uint64_t begin = 0; begin < ts->num_blocks; begin += kBatch) {
    const uint64_t end = std::min(ts->num_blocks, begin + kBatch);
    std::vector<Victim> held;  // dirty blocks under a read pin
    for (uint64_t b = begin; b < end; ++b) {
      BlockSlot* slot = &ts->slots[b];
      for (;;) {
        uint64_t w = slot->word.load(std::memory_order_acquire);
        const State state = StateOf(w);
        if (state == kAbsent) break;  // evicted: its write-back was acked
        if (state == kResident && !(w & kDirty)) break;
        if (state == kResident && !(w & kExclusive)) {
          if (Pins(w) == kPinMask) {
            first_error = absl::ResourceExhaustedError(absl::StrCat(
                BlockName(ts, b), " has too many pins to flush"));
            break;
          }
          if (slot->word.compare_exchange_weak(w, w + 1,
                                               std::memory_order_acquire)) {
            held.push_back({ts, b, slot, w + 1});
            break;
          }
          continue;
        }
        if (state == kResident) {  // pinned for writing
          if (first_error.ok()) {
            first_error = absl::FailedPreconditionError(absl::StrCat(
                BlockName(ts, b),
                " is pinned for writing; release the write pin before Flush"));
          }
          break;
        }
        // Loading or evicting: wait, then look again.
        if (!WaitForChange(slot, w, deadline)) {
          first_error = absl::DeadlineExceededError(absl::StrCat(
              BlockName(ts, b), " stayed in transit during Flush"));
          break;
        }
      }
    }
    std::vector<absl::Status> statuses(held.size());
    WriteBack(held, statuses);
    for (size_t i = 0; i < held.size(); ++i) {
      if (statuses[i].ok()) {
        ClearWriteBackError(ts->Key(held[i].block));
        held[i].slot->word.fetch_and(~kDirty, std::memory_order_acq_rel);
        write_backs_.fetch_add(1, std::memory_order_relaxed);
      } else {
        nvme_errors_.fetch_add(1, std::memory_order_relaxed);
        if (first_error.ok()) first_error = statuses[i];
      }
      Unpin(held[i].slot, Access::kRead);
    }
  }
  return first_error;
}

absl::Status EngineCore::FlushAll() {
  STRATA_RETURN_IF_ERROR(CheckOpen());
  std::vector<std::shared_ptr<TensorState>> all;
  {
    std::unique_lock lock(catalog_mu_);
    for (auto& [name, ts] : by_name_) all.push_back(ts);
  }
  absl::Status first_error;
  for (auto& ts : all) {
    Tensor handle;
    handle.state_ = ts;
    absl::Status s = Flush(handle);
    if (!s.ok() && !absl::IsNotFound(s) && first_error.ok()) first_error = s;
  }
  return first_error;
}

// ---------------------------------------------------------------------------
// Prefetch and the mover

struct EngineCore::AsyncLoad {
  Transfer transfer;
  EngineCore* core;
  std::shared_ptr<TensorState> tensor;
  uint64_t block;
  Frame frame;
  std::shared_ptr<PrefetchState> prefetch;
};

void PrefetchState::Done(const absl::Status& status) {
  std::unique_lock lock(mu);
  if (!status.ok() && first_error.ok()) first_error = status;
  if (--pending == 0) cv.notify_all();
}

absl::StatusOr<PrefetchHandle> EngineCore::Prefetch(const Tensor& tensor,
                                                    BlockRange range,
                                                    Tier tier) {
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, CheckTensor(tensor));
  if (tier != Tier::kHost) return PinError(tensor, 0, tier);
  const uint64_t end = std::min(range.end, ts->num_blocks);
  if (range.begin > end || range.begin >= ts->num_blocks) {
    return absl::OutOfRangeError(absl::StrCat(
        "prefetch range [", range.begin, ", ", range.end, ") of tensor '",
        ts->name, "' is outside its ", ts->num_blocks, " blocks"));
  }
  PrefetchHandle handle;
  handle.state_ = std::make_shared<PrefetchState>();
  MoverJob job;
  job.prefetch = handle.state_;
  for (uint64_t b = range.begin; b < end; ++b) {
    job.blocks.emplace_back(tensor.state_, b);
  }
  {
    std::unique_lock lock(handle.state_->mu);
    handle.state_->pending = job.blocks.size();
  }
  if (job.blocks.empty()) return handle;
  Enqueue(std::move(job));
  return handle;
}

void EngineCore::Enqueue(MoverJob job) {
  std::unique_lock lock(mover_mu_);
  jobs_.push_back(std::move(job));
  mover_cv_.notify_all();
}

void EngineCore::MoverLoop() {
  for (;;) {
    MoverJob job;
    {
      std::unique_lock lock(mover_mu_);
      mover_cv_.wait(lock, [this] { return stop_mover_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    RunMoverJob(job);
  }
}

void EngineCore::RunMoverJob(MoverJob& job) {
  auto finish = [&](const absl::Status& s) {
    if (job.prefetch) job.prefetch->Done(s);
  };
  std::vector<AsyncLoad*> reads;
  auto submit_reads = [&] {
    if (reads.empty()) return;
    std::vector<Transfer*> batch;
    for (AsyncLoad* load : reads) batch.push_back(&load->transfer);
    {
      std::unique_lock lock(mover_mu_);
      async_in_flight_ += reads.size();
    }
    absl::Status s = nvme_->Submit(batch);
    if (!s.ok()) {
      for (AsyncLoad* load : reads) FinishAsyncLoad(load, s);
    }
    reads.clear();
  };
  for (auto& [ts, block] : job.blocks) {
    if (ts->dropped() || closed_.load()) {
      finish(absl::CancelledError(absl::StrCat(
          "prefetch of tensor '", ts->name, "' cancelled: dropped or closed")));
      continue;
    }
    BlockSlot* slot = &ts->slots[block];
    uint64_t w = slot->word.load(std::memory_order_acquire);
    if (StateOf(w) != kAbsent ||
        !slot->word.compare_exchange_strong(
            w, WithState(w & ~(kPinMask | kExclusive | kDirty), kLoading),
            std::memory_order_acquire)) {
      finish(absl::OkStatus());  // already there or on its way
      continue;
    }
    const uint64_t version = VersionOf(w);
    absl::StatusOr<Frame> frame = host_->Allocate(ts->frame_bytes);
    if (!frame.ok()) {
      // Finding a frame may wait for frames in transit, and the reads
      // gathered so far hold some: they must be on their way first, or the
      // mover would wait for itself.
      submit_reads();
      frame = AllocateFrame(ts->frame_bytes);
    }
    if (!frame.ok()) {
      Publish(slot, WithState(slot->word.load(), kAbsent));
      finish(frame.status());
      continue;
    }
    TransitBegin();
    auto* load = new AsyncLoad{{}, this, ts, block, *frame, job.prefetch};
    if (version == 0) {
      std::memset(frame->data, 0, ts->BlockSize(block));
      {
        std::unique_lock lock(mover_mu_);
        ++async_in_flight_;
      }
      FinishAsyncLoad(load, absl::OkStatus());
      continue;
    }
    if (!slot->nvme.valid() || slot->nvme_version != version) {
      {
        std::unique_lock lock(mover_mu_);
        ++async_in_flight_;
      }
      FinishAsyncLoad(load, absl::DataLossError(absl::StrCat(
                                BlockName(ts.get(), block),
                                " has no copy in any tier (internal error)")));
      continue;
    }
    Transfer& t = load->transfer;
    t.op = Transfer::Op::kRead;
    t.key = {ts->id, block, version};
    t.frame = slot->nvme;
    t.host = {frame->data, ts->BlockSize(block)};
    t.checksum = slot->nvme_checksum;
    t.on_done = &EngineCore::OnAsyncLoadDone;
    t.user = load;
    reads.push_back(load);
    if (reads.size() >= options_.nvme.queue_depth) submit_reads();
  }
  submit_reads();
}

void EngineCore::OnAsyncLoadDone(Transfer* t) {
  auto* load = static_cast<AsyncLoad*>(t->user);
  load->core->FinishAsyncLoad(load, t->status);
}

void EngineCore::FinishAsyncLoad(AsyncLoad* load, absl::Status status) {
  TensorState* ts = load->tensor.get();
  BlockSlot* slot = &ts->slots[load->block];
  if (status.ok()) {
    slot->data = load->frame.data;
    slot->host_offset = load->frame.offset;
    host_bytes_in_.fetch_add(ts->BlockSize(load->block),
                             std::memory_order_relaxed);
    {
      std::unique_lock lock(policy_mu_);
      policy_->Insert(ts->Key(load->block));
    }
    Publish(slot, WithState(slot->word.load(), kResident) | kPrefetched);
  } else {
    host_->Free(load->frame);
    Publish(slot, WithState(slot->word.load(), kAbsent));
    if (!absl::IsCancelled(status)) {
      nvme_errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  TransitEnd();
  if (load->prefetch) load->prefetch->Done(status);
  delete load;
  std::unique_lock lock(mover_mu_);
  if (--async_in_flight_ == 0) mover_cv_.notify_all();
}

// ---------------------------------------------------------------------------
// Sequential readahead

void EngineCore::OnDemandMiss(TensorState* ts, uint64_t block) {
  if (readahead_window_ == 0) return;
  const uint64_t previous = ts->last_sequential.exchange(block);
  if (previous + 1 != block) {
    ts->readahead_to.store(0);
    return;
  }
  const uint64_t to = ts->readahead_to.load();
  if (to > block + 1) return;  // a window is already on its way
  ExtendReadahead(ts, block + 1, to, readahead_window_);
}

void EngineCore::OnPrefetchedHit(TensorState* ts, uint64_t block) {
  ts->last_sequential.store(block);
  const uint64_t to = ts->readahead_to.load();
  if (to == 0 || to >= ts->num_blocks) return;
  // Slide on when the reader is half a window from the end of it.
  if (block + readahead_window_ / 2 + 1 < to) return;
  ExtendReadahead(ts, to, to, std::max<size_t>(readahead_window_ / 2, 1));
}

void EngineCore::ExtendReadahead(TensorState* ts, uint64_t from,
                                 uint64_t expected_to, uint64_t count) {
  const uint64_t end = std::min(ts->num_blocks, from + count);
  if (from >= end) return;
  // One thread extends a window at a time; others find it moved on.
  if (!ts->readahead_to.compare_exchange_strong(expected_to, end)) return;
  std::shared_ptr<TensorState> owner = TensorById(ts->id);
  if (owner == nullptr) return;  // dropped meanwhile
  MoverJob job;
  for (uint64_t b = from; b < end; ++b) job.blocks.emplace_back(owner, b);
  Enqueue(std::move(job));
}

// ---------------------------------------------------------------------------
// Step hints

absl::Status EngineCore::BeginStep() {
  STRATA_RETURN_IF_ERROR(CheckOpen());
  std::vector<std::pair<std::shared_ptr<TensorState>, uint64_t>> first;
  {
    std::unique_lock lock(step_mu_);
    if (in_step_) {
      return absl::FailedPreconditionError(
          "BeginStep called twice without EndStep; call EndStep first");
    }
    in_step_ = true;
    recording_ = plan_.empty();
    step_pos_ = 0;
    prefetched_to_ = std::min(plan_.size(), lookahead_);
    first.assign(plan_.begin(), plan_.begin() + prefetched_to_);
  }
  SetGate(TensorState::kGateStep, true);
  if (!first.empty()) Enqueue(MoverJob{std::move(first), nullptr});
  return absl::OkStatus();
}

absl::Status EngineCore::EndStep() {
  STRATA_RETURN_IF_ERROR(CheckOpen());
  {
    std::unique_lock lock(step_mu_);
    if (!in_step_) {
      return absl::FailedPreconditionError(
          "EndStep called without BeginStep; call BeginStep first");
    }
    in_step_ = false;
    recording_ = false;
  }
  SetGate(TensorState::kGateStep, false);
  std::unique_lock lock(policy_mu_);
  DrainLocked();
  policy_->OnStepBoundary();
  return absl::OkStatus();
}

void EngineCore::OnStepPin(TensorState* ts, uint64_t block) {
  MoverJob job;
  {
    std::unique_lock lock(step_mu_);
    if (!in_step_) return;
    if (recording_) {
      plan_.emplace_back(TensorById(ts->id), block);
      return;
    }
    ++step_pos_;
    // Keep the mover `lookahead_` blocks ahead, in chunks of half of it.
    const uint64_t want = std::min<uint64_t>(plan_.size(), step_pos_ + lookahead_);
    if (want < prefetched_to_ + lookahead_ / 2 && want != plan_.size()) return;
    if (want <= prefetched_to_) return;
    job.blocks.assign(plan_.begin() + prefetched_to_, plan_.begin() + want);
    prefetched_to_ = want;
  }
  Enqueue(std::move(job));
}

}  // namespace strata::internal
