#include "engine/engine_core.h"

#include <algorithm>
#include <chrono>

#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "engine/block_ops.h"
#include "engine/catalog.h"
#include "engine/chain.h"
#include "engine/loader.h"
#include "engine/mover.h"
#include "engine/options.h"
#include "engine/prefetch_state.h"
#include "engine/residency.h"
#include "engine/shared_tensors.h"
#include "engine/stats.h"
#include "engine/steps.h"
#include "engine/write_back.h"
#include "util/status_macros.h"

namespace strata::internal {
namespace {

using S = CopyState;

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             Clock::now().time_since_epoch())
      .count();
}

// Engine ids only tell one engine's thread states from another's; they are
// never reused, so a stale thread-local cache can never match a new engine.
std::atomic<uint64_t> engine_uids{1};

bool IsValid(Tier tier) { return static_cast<uint8_t>(tier) < kNumTiers; }
bool IsValid(Access access) {
  return access == Access::kRead || access == Access::kWrite ||
         access == Access::kOverwrite;
}

}  // namespace

// ---------------------------------------------------------------------------
// Pin: the hot path

// Inlined into Pin: built in place in the returned StatusOr (measured: out
// of line, a resident pin cost 20.9 ns instead of about 10, pin_bench).
ABSL_ATTRIBUTE_ALWAYS_INLINE inline strata::Pin EngineCore::MakePin(
    const TensorState& ts, uint64_t block, CopySlot& slot, Tier tier,
    Access access) {
  strata::Pin pin;
  pin.core_ = this;
  pin.word_ = &slot.word;
  // A device frame (the GPU's) hands out its device pointer.
  pin.data_ = slot.frame.data != nullptr
                  ? slot.frame.data
                  : static_cast<std::byte*>(slot.frame.device);
  pin.size_ = ts.BlockSize(block);
  pin.block_ = block;
  pin.tier_ = tier;
  pin.access_ = access == Access::kOverwrite ? Access::kWrite : access;
  return pin;
}

strata::Pin EngineCore::MakePin(TensorState& ts, uint64_t block, int pos,
                                Access access) {
  return MakePin(ts, block, ts.copy(pos, block), kind_of_[pos], access);
}


namespace {

// One load and one CAS (retried while other pins of the copy change the
// word): takes the pin if the copy is resident and the access allows it.
// Returns the word it replaced, or 0 (never a resident word) when it did
// not take the pin.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline uint64_t TryPinResident(CopySlot& slot,
                                                            Access access) {
  uint64_t w = slot.word.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t desired =
        access == Access::kRead ? S(w).ReadPinned() : S(w).WritePinned();
    if (ABSL_PREDICT_FALSE(desired == 0)) return 0;
    if (slot.word.compare_exchange_weak(w, desired, std::memory_order_acq_rel,
                                        std::memory_order_relaxed)) {
      return w;
    }
  }
}

}  // namespace

// The hot path Pin and TryPin share, always inlined into both.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool EngineCore::OnHotPath(const TensorState* ts,
                                                             int pos, uint64_t block,
                                                             Access access) const {
  return ts != nullptr && ts->core == this && pos >= 0 && block < ts->num_blocks &&
         IsValid(access) && ts->gate.load(std::memory_order_acquire) == 0;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline EngineCore::Hit EngineCore::TryHit(TensorState& ts,
                                                                     uint64_t block,
                                                                     int pos,
                                                                     Access access) {
  Stats::Tls& local = Stats::Cached();
  if (ABSL_PREDICT_FALSE(local.uid != uid_)) stats_->Register();
  ThreadRing& ring = *local.rings[pos];
  // One hit in 64 is timed, so that the hot path rarely reads a clock.
  const bool timed = (ring.head.load(std::memory_order_relaxed) & 63) == 0;
  Hit hit{&ring, &ts.copy(pos, block), local.state, 0, timed ? NowNanos() : 0};
  hit.seen = TryPinResident(*hit.slot, access);
  return hit;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline strata::Pin EngineCore::CountHit(
    TensorState& ts, uint64_t block, int pos, Tier tier, Access access, const Hit& hit) {
  hit.ring->Record(ts.Key(block));  // also counts the hit
  if (hit.start != 0) hit.ring->hit_latency.Record(NowNanos() - hit.start);
  if (ABSL_PREDICT_FALSE(S(hit.seen).prefetched())) {
    mover_->OnPrefetchedHit(ts, block, pos);
  }
  return MakePin(ts, block, *hit.slot, tier, access);
}

absl::StatusOr<strata::Pin> EngineCore::Pin(const Tensor& tensor,
                                            uint64_t block, Tier tier,
                                            Access access) {
  TensorState* ts = tensor.state_.get();
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  // The gate (dropped, closing, a step) is read before the CAS: a Close or
  // DropTensor that sets it then claims every unpinned copy, so a pin that
  // read the gate open either got its CAS in first (and they see it) or
  // finds the copy claimed.
  if (ABSL_PREDICT_FALSE(!OnHotPath(ts, pos, block, access))) {
    return PinGated(tensor, block, tier, access);
  }
  const Hit hit = TryHit(*ts, block, pos, access);
  if (ABSL_PREDICT_FALSE(hit.seen == 0)) {
    return PinSlow(tensor, block, pos, access, *hit.thread,
                   hit.start != 0 ? hit.start : NowNanos());
  }
  return CountHit(*ts, block, pos, tier, access, hit);
}

// Pin's hot path without its waits: every branch where Pin would go to
// PinSlow (a miss, a conflicting pin) or PinShared (a shared tensor) returns
// nullopt instead, and the caller may call Pin. A step's gate is taken as
// PinGated takes it (Grant hands the pin to the thread's plan; no I/O, no
// wait). Bad arguments get PinRefused's errors, those of Pin.
absl::StatusOr<std::optional<strata::Pin>> EngineCore::TryPin(
    const Tensor& tensor, uint64_t block, Tier tier, Access access) {
  TensorState* ts = tensor.state_.get();
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  if (ABSL_PREDICT_FALSE(!OnHotPath(ts, pos, block, access))) {
    return TryPinGated(tensor, block, tier, access);
  }
  const Hit hit = TryHit(*ts, block, pos, access);
  // Not counted as a miss: the caller's Pin counts it.
  if (ABSL_PREDICT_FALSE(hit.seen == 0)) return std::nullopt;
  return CountHit(*ts, block, pos, tier, access, hit);
}

// Pin's asynchronous form. Only a read pin of a private tensor's GPU copy
// differs from Pin: a resident copy is pinned as Pin pins it; a miss is
// granted as soon as the copy into VRAM is enqueued (Loader, "early"), and
// a copy still in flight is pinned too (ReadPinnedInFlight); the pin's
// ready event orders the caller's work after the copy.
absl::StatusOr<strata::Pin> EngineCore::PinAsync(const Tensor& tensor,
                                                 uint64_t block, Tier tier,
                                                 Access access) {
  TensorState* ts = tensor.state_.get();
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  if (tier != Tier::kGpu || access != Access::kRead || ts == nullptr ||
      ts->core != this || pos < 0 || block >= ts->num_blocks ||
      (ts->gate.load(std::memory_order_acquire) & ~TensorState::kGateStep) != 0) {
    // Other tiers, write pins, shared tensors, bad arguments, a dropped
    // tensor or a closing engine: as Pin (it waits, or says what is wrong).
    return Pin(tensor, block, tier, access);
  }
  Stats::Tls& local = stats_->Local();
  const bool timed = (local.rings[pos]->head.load(std::memory_order_relaxed) & 63) == 0;
  const int64_t start = timed ? NowNanos() : 0;
  const uint64_t seen = TryPinResident(ts->copy(pos, block), access);
  if (seen == 0) {
    return PinSlow(tensor, block, pos, access, *local.state,
                   timed ? start : NowNanos(), /*async=*/true);
  }
  return Grant(*ts, block, pos, access, *local.state, /*hit=*/true, seen, start);
}

absl::Status EngineCore::Synchronize(const strata::Pin& pin) {
  STRATA_ASSIGN_OR_RETURN(auto where, DeviceFrame(pin));
  EngineCore& core = *pin.core_;
  const Deadline deadline =
      Clock::now() + absl::ToChronoNanoseconds(core.options_.io_timeout);
  for (;;) {
    const uint64_t w = pin.word_->load(std::memory_order_acquire);
    if (!S(w).in_flight()) break;
    if (!core.waits_.WaitForChange(*pin.word_, w, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "tier gpu: the copy of block ", pin.block_, " into VRAM did not "
          "complete within EngineOptions::io_timeout (",
          absl::FormatDuration(core.options_.io_timeout),
          "); the device may be stalled"));
    }
  }
  // The tier keeps a failed copy's error with its frame.
  return where.first->ReadyEvent(where.second).status();
}

absl::StatusOr<std::optional<strata::Pin>> EngineCore::TryPinGated(
    const Tensor& tensor, uint64_t block, Tier tier, Access access) {
  TensorState* ts = tensor.state_.get();
  if (ts != nullptr && ts->core == this &&
      (ts->gate.load(std::memory_order_acquire) & TensorState::kGateShared)) {
    return std::nullopt;  // PinShared may wait on the segment
  }
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  if (ts == nullptr || ts->core != this || pos < 0 ||
      block >= ts->num_blocks || !IsValid(access)) {
    absl::StatusOr<strata::Pin> refused =
        PinRefused(tensor, block, tier, access);
    if (!refused.ok()) return refused.status();
    return std::optional<strata::Pin>(*std::move(refused));
  }
  if ((ts->gate.load(std::memory_order_acquire) & ~TensorState::kGateStep) != 0) {
    return std::nullopt;  // dropped or closing: Pin's slow path says which
  }
  Stats::Tls& local = stats_->Local();
  const bool timed = (local.rings[pos]->head.load(std::memory_order_relaxed) & 63) == 0;
  const int64_t start = timed ? NowNanos() : 0;
  const uint64_t seen = TryPinResident(ts->copy(pos, block), access);
  if (seen == 0) return std::nullopt;
  return Grant(*ts, block, pos, access, *local.state, /*hit=*/true, seen, start);
}

absl::StatusOr<strata::Pin> EngineCore::PinGated(const Tensor& tensor,
                                                 uint64_t block, Tier tier,
                                                 Access access) {
  TensorState* ts = tensor.state_.get();
  if (ts != nullptr && ts->core == this &&
      (ts->gate.load(std::memory_order_acquire) & TensorState::kGateShared)) {
    return PinShared(tensor, *ts, block, tier, access);
  }
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  if (ts == nullptr || ts->core != this || pos < 0 ||
      block >= ts->num_blocks || !IsValid(access)) {
    return PinRefused(tensor, block, tier, access);
  }
  if ((ts->gate.load(std::memory_order_acquire) & ~TensorState::kGateStep) != 0) {
    // Dropped, closing, or a gate left by a refused Close or DropTensor:
    // the slow path says which (it looks again at the engine and the
    // tensor), or pins if neither holds any more.
    return PinSlow(tensor, block, pos, access, *stats_->Local().state,
                   NowNanos());
  }
  // A step is being recorded or replayed: the pin is taken as on the hot
  // path (one in 64 timed) and goes through Grant, which hands it to the
  // thread's plan.
  Stats::Tls& local = stats_->Local();
  const bool timed = (local.rings[pos]->head.load(std::memory_order_relaxed) & 63) == 0;
  const int64_t start = timed ? NowNanos() : 0;
  const uint64_t seen = TryPinResident(ts->copy(pos, block), access);
  if (seen == 0) {
    return PinSlow(tensor, block, pos, access, *local.state,
                   timed ? start : NowNanos());
  }
  return Grant(*ts, block, pos, access, *local.state, /*hit=*/true, seen, start);
}

strata::Pin EngineCore::Grant(TensorState& ts, uint64_t block, int pos,
                              Access access, ThreadState& thread, bool hit,
                              uint64_t seen, int64_t start_ns) {
  ThreadRing& ring = *thread.rings[pos];
  if (hit) {
    ring.Record(ts.Key(block));
    // 0: this hit was not one of the sampled ones (see Pin).
    if (start_ns != 0) ring.hit_latency.Record(NowNanos() - start_ns);
    if (S(seen).prefetched()) mover_->OnPrefetchedHit(ts, block, pos);
  } else {
    Bump(ring.misses);
    ring.miss_latency.Record(NowNanos() - start_ns);
  }
  if (ts.gate.load(std::memory_order_acquire) & TensorState::kGateStep) {
    steps_->OnPin(thread, ts, block, pos);
  }
  return MakePin(ts, block, pos, access);
}

absl::StatusOr<std::pair<tiers::Tier*, tiers::Frame>> EngineCore::DeviceFrame(
    const strata::Pin& pin) {
  if (pin.word_ == nullptr) {
    return absl::FailedPreconditionError(
        "the pin is empty (released, moved from or default-constructed)");
  }
  if (pin.tier_ != Tier::kGpu) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stream ordering applies to GPU pins; this pin is of tier ",
        Sv(TierName(pin.tier_))));
  }
  // The pin holds the copy: its frame stays put until it is released.
  const CopySlot& slot = *reinterpret_cast<const CopySlot*>(pin.word_);
  const int pos = pin.core_->pin_pos_[static_cast<uint8_t>(Tier::kGpu)];
  return std::make_pair(&pin.core_->chain_->tier(pos), slot.frame);
}

// ---------------------------------------------------------------------------
// Pin: refusals and the slow path

absl::StatusOr<strata::Pin> EngineCore::PinShared(const Tensor& tensor,
                                                  TensorState& ts,
                                                  uint64_t block, Tier tier,
                                                  Access access) {
  // No Lifecycle scope (a shared counter) on this path: a pin announces
  // itself in the segment, then looks at `closing`; Close sets `closing`,
  // then counts this process's pins there. One of the two sees the other.
  if (ABSL_PREDICT_FALSE(ts.dropped())) {
    return absl::NotFoundError(absl::StrCat(
        "shared tensor '", ts.info->name, "' was removed; create it again"));
  }
  if (!IsValid(access)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "access value ", static_cast<int>(access),
        " is not a strata::Access; use Access::kRead, kWrite or kOverwrite"));
  }
  if (tier != Tier::kShm) return PinSharedCopy(tensor, ts, block, tier, access);
  tiers::shm::SharedPin shared;
  if (access != Access::kRead || block >= ts.num_blocks ||
      !SharedTensors::TryPinRead(ts, block, &shared)) {
    STRATA_ASSIGN_OR_RETURN(shared, shared_->Pin(ts, block, access));
  }
  if (ABSL_PREDICT_FALSE(life_.closing_seq_cst())) {
    shared_->Cancel(shared, access != Access::kRead);
    return life_.CheckOpen().ok()
               ? absl::FailedPreconditionError("engine closing; Pin refused")
               : life_.CheckOpen();
  }
  strata::Pin pin;
  pin.core_ = this;
  pin.word_ = &shared.record->state;
  pin.data_ = shared.data;
  pin.size_ = shared.size;
  pin.block_ = block;
  pin.tier_ = Tier::kShm;
  pin.access_ = access == Access::kRead ? Access::kRead : Access::kWrite;
  pin.aux_ = shared.count;
  return pin;
}

absl::StatusOr<strata::Pin> EngineCore::PinSharedCopy(const Tensor& tensor,
                                                      TensorState& ts,
                                                      uint64_t block, Tier tier,
                                                      Access access) {
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  if (pos < 0 || block >= ts.num_blocks) return PinRefused(tensor, block, tier, access);
  if (access != Access::kRead) {
    return absl::UnimplementedError(absl::StrCat(
        "shared tensor '", ts.info->name, "': its private copies (tier ",
        Sv(TierName(tier)), ") are read-only; write it in Tier::kShm"));
  }
  CopySlot& slot = ts.copy(pos, block);
  for (bool refreshed = false;;) {
    absl::StatusOr<strata::Pin> pin;
    const uint64_t seen = TryPinResident(slot, access);
    ThreadState& thread = *stats_->Local().state;
    if (seen != 0) {
      pin = Grant(ts, block, pos, access, thread, /*hit=*/true, seen, 0);
    } else {
      pin = PinSlow(tensor, block, pos, access, thread, NowNanos());
    }
    if (!pin.ok()) return pin;
    // The copy's version is stable while it is pinned; the segment's moves
    // when another process seals the block.
    STRATA_ASSIGN_OR_RETURN(const uint64_t sealed, shared_->SealedVersion(ts, block));
    if (slot.version == sealed || refreshed) return pin;
    // A stale snapshot: drop it and load it anew, unless other pins of it
    // live (they keep the snapshot they have; this pin gets it too).
    *pin = strata::Pin();
    uint64_t w = slot.word.load(std::memory_order_acquire);
    const uint64_t claimed = S(w).Claimed();
    if (claimed != 0 && slot.word.compare_exchange_strong(w, claimed, std::memory_order_acq_rel)) {
      DropClaimed(parts_, ts, block, pos);
    } else {
      refreshed = true;
    }
  }
}

absl::Status EngineCore::NeedShared() const {
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  if (shared_ == nullptr) {
    return absl::FailedPreconditionError(
        "shared tensors live in the node segment: add Tier::kShm to "
        "EngineOptions::tiers and name the segment in EngineOptions::shm.name");
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> EngineCore::CreateSharedTensor(std::string_view name,
                                                      const TensorSpec& spec,
                                                      bool open_existing) {
  STRATA_RETURN_IF_ERROR(NeedShared());
  return shared_->Create(name, spec, open_existing);
}

absl::StatusOr<Tensor> EngineCore::OpenSharedTensor(std::string_view name) {
  STRATA_RETURN_IF_ERROR(NeedShared());
  return shared_->Open(name);
}

absl::StatusOr<strata::Pin> EngineCore::PinRefused(const Tensor& tensor,
                                                   uint64_t block, Tier tier,
                                                   Access access) const {
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, catalog_->Check(tensor));
  if (!IsValid(tier)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier value ", static_cast<int>(tier),
        " is not a strata::Tier; use Tier::kGpu, kHost, kShm, kRemote or kNvme"));
  }
  if (!IsValid(access)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "access value ", static_cast<int>(access),
        " is not a strata::Access; use Access::kRead, kWrite or kOverwrite"));
  }
  if (block >= ts->num_blocks) {
    return absl::OutOfRangeError(absl::StrCat(
        "block ", block, " is out of range: tensor '", ts->info->name, "' has ",
        ts->num_blocks, " blocks"));
  }
  if (!TierChain::IsPinnableKind(tier)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier ", Sv(TierName(tier)), " is not pinnable (it holds copies only); pin "
        "in Tier::kHost, and the engine loads the block from ", Sv(TierName(tier))));
  }
  if (chain_->position(tier) < 0) {
    if (tier != Tier::kHost) {
      return absl::UnimplementedError(absl::StrCat(
          "tier ", Sv(TierName(tier)), " is not built in this version of Strata "
          "(or not in EngineOptions::tiers); pin in Tier::kHost"));
    }
  }
  return absl::InternalError("pin refused for no known reason");
}

absl::StatusOr<strata::Pin> EngineCore::PinSlow(const Tensor& tensor,
                                                uint64_t block, int pos,
                                                Access access,
                                                ThreadState& thread,
                                                int64_t start_ns, bool async) {
  Lifecycle::Scope scope(life_);
  TensorState& ts = *tensor.state_;
  const Deadline deadline =
      Clock::now() + absl::ToChronoNanoseconds(options_.pin_wait_timeout);
  CopySlot& slot = ts.copy(pos, block);
  for (uint64_t round = 0;; ++round) {
    STRATA_RETURN_IF_ERROR(Interrupted(parts_, ts));
    // Each round either pins, waits (bounded by `deadline`) or retries
    // after the copy changed under it. A copy that keeps changing (loaded,
    // then gone before this pin could take it) must not keep a pin here
    // for ever: the whole pin is bounded by pin_wait_timeout.
    if (round > 0 && Clock::now() >= deadline) return PinTimedOut(ts, block, pos, round);
    const uint64_t w = slot.word.load(std::memory_order_acquire);
    MaybePin pin;
    switch (S(w).state()) {
      case S::kResident:
        pin = PinResident(ts, block, pos, access, w, deadline, thread,
                          start_ns, async);
        break;
      case S::kLoading:
      case S::kEvicting:
        pin = PinInTransit(ts, block, pos, w, deadline);
        break;
      case S::kAbsent:
        pin = PinAbsent(tensor, block, pos, access, w, deadline, thread,
                        start_ns, async);
        break;
    }
    if (!pin.ok()) return pin.status();
    if (pin->has_value()) return std::move(**pin);
  }
}

absl::Status EngineCore::PinTimedOut(const TensorState& ts, uint64_t block,
                                     int pos, uint64_t rounds) const {
  return absl::DeadlineExceededError(absl::StrCat(
      BlockName(ts, block), " could not be pinned in tier ",
      Sv(TierName(kind_of_[pos])), " within EngineOptions::pin_wait_timeout (",
      absl::FormatDuration(options_.pin_wait_timeout), "): its copy there changed ",
      rounds, " times before this pin could take it (loaded, then evicted or "
      "dropped by other threads); raise the tier's capacity or pin_wait_timeout"));
}

EngineCore::MaybePin EngineCore::PinResident(TensorState& ts, uint64_t block,
                                             int pos, Access access,
                                             uint64_t seen, Deadline deadline,
                                             ThreadState& thread,
                                             int64_t start_ns, bool async) {
  CopySlot& slot = ts.copy(pos, block);
  const S state(seen);
  const uint64_t desired =
      access != Access::kRead ? state.WritePinned()
      : async                 ? state.ReadPinnedInFlight()
                              : state.ReadPinned();
  if (desired != 0) {
    uint64_t w = seen;
    if (!slot.word.compare_exchange_strong(w, desired, std::memory_order_seq_cst)) {
      return std::nullopt;
    }
    return Grant(ts, block, pos, access, thread, /*hit=*/true, seen, start_ns);
  }
  if (access == Access::kRead && !state.exclusive() &&
      state.pins() == S::kPinMask) {
    return absl::ResourceExhaustedError(absl::StrCat(
        BlockName(ts, block), " has ", S::kPinMask,
        " read pins, the most a block can hold; release some"));
  }
  if (state.failed() && state.idle()) {
    // Its asynchronous copy failed and nobody pins it any more: drop it and
    // load the block anew (this pin gets its own result).
    uint64_t w = seen;
    if (slot.word.compare_exchange_strong(w, state.Claimed(),
                                          std::memory_order_acq_rel)) {
      parts_.tier(pos).Erase(ts.Key(block));
      DropClaimed(parts_, ts, block, pos);
    }
    return std::nullopt;
  }
  if (access != Access::kRead && state.idle() && state.shared()) {
    absl::StatusOr<bool> pinned = MakeSoleAndPin(parts_, ts, block, pos, deadline);
    if (!pinned.ok()) return pinned.status();
    if (!*pinned) return std::nullopt;
    return Grant(ts, block, pos, access, thread, /*hit=*/true, seen, start_ns);
  }
  // A conflicting pin, a copy in flight to the device (its completion
  // clears the bit), or a failed one still pinned: wait for it to change.
  if (!waits_.WaitForChange(slot.word, seen, deadline)) {
    if (state.in_flight() || state.failed()) {
      return absl::DeadlineExceededError(absl::StrCat(
          BlockName(ts, block), ": its copy into tier ",
          Sv(TierName(kind_of_[pos])),
          state.in_flight() ? " stayed in flight" : " failed and stayed pinned",
          " for ", absl::FormatDuration(options_.pin_wait_timeout),
          "; the device may be stalled, or pins of the failed copy are "
          "still held (release them), or raise "
          "EngineOptions::pin_wait_timeout"));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        BlockName(ts, block), " stayed pinned ",
        state.exclusive() ? "for writing" : "for reading", " for ",
        absl::FormatDuration(options_.pin_wait_timeout),
        "; release the conflicting pin (a thread cannot hold a read pin and "
        "ask for a write pin of the same block) or raise "
        "EngineOptions::pin_wait_timeout"));
  }
  return std::nullopt;
}

EngineCore::MaybePin EngineCore::PinInTransit(TensorState& ts, uint64_t block,
                                              int pos, uint64_t seen,
                                              Deadline deadline) {
  CopySlot& slot = ts.copy(pos, block);
  if (std::shared_ptr<Loader::Op> op = loader_->Find(slot)) {
    STRATA_RETURN_IF_ERROR(loader_->AwaitOther(*op, deadline));
    return std::nullopt;
  }
  if (!waits_.WaitForChange(slot.word, seen, deadline)) {
    return absl::DeadlineExceededError(absl::StrCat(
        BlockName(ts, block), " is still being moved after ",
        absl::FormatDuration(options_.pin_wait_timeout),
        "; the tier below may be stalled"));
  }
  return std::nullopt;
}

EngineCore::MaybePin EngineCore::PinAbsent(const Tensor& tensor,
                                           uint64_t block, int pos,
                                           Access access, uint64_t seen,
                                           Deadline deadline,
                                           ThreadState& thread,
                                           int64_t start_ns, bool async) {
  TensorState& ts = *tensor.state_;
  std::atomic<uint64_t>& word = ts.copy(pos, block).word;
  const uint64_t loading = S(seen).Loading();
  uint64_t w = seen;
  if (loading == 0 ||
      !word.compare_exchange_strong(w, loading, std::memory_order_acq_rel)) {
    return std::nullopt;
  }
  // An overwrite reads nothing, so it asks nothing of readahead.
  if (access != Access::kOverwrite) mover_->OnDemandMiss(ts, block, pos);
  const Loader::Want want = access == Access::kRead    ? Loader::Want::kRead
                            : access == Access::kWrite ? Loader::Want::kWrite
                                                       : Loader::Want::kOverwrite;
  std::shared_ptr<Loader::Op> op =
      loader_->Start(tensor.state_, block, pos, want, /*speculative=*/false,
                     nullptr, deadline, nullptr, /*early=*/async);
  const Loader::Outcome outcome = loader_->AwaitOwn(*op, deadline);
  if (!outcome.status.ok()) return outcome.status;
  if (!outcome.granted) return std::nullopt;  // a write waits for MakeSole
  return Grant(ts, block, pos, access, thread, /*hit=*/false, 0, start_ns);
}

// ---------------------------------------------------------------------------
// Prefetch, Flush, steps

absl::StatusOr<int> EngineCore::PrefetchTier(const Tensor& tensor,
                                              TensorState& ts, Tier tier) const {
  if (ts.info->shared && tier == Tier::kShm) {
    return absl::UnimplementedError(absl::StrCat(
        "shared tensor '", ts.info->name, "': Prefetch in Tier::kShm is not "
        "built yet (pin the blocks); Prefetch into a private tier (host, gpu) works"));
  }
  const int pos = pin_pos_[static_cast<uint8_t>(tier)];
  if (pos < 0) return PinRefused(tensor, 0, tier, Access::kRead).status();
  return pos;
}

PrefetchHandle EngineCore::MakeHandle(std::shared_ptr<PrefetchState> state,
                                      uint64_t pending) {
  {
    std::lock_guard lock(state->mu);
    state->pending = pending;
  }
  PrefetchHandle handle;
  handle.state_ = std::move(state);
  return handle;
}

absl::StatusOr<PrefetchHandle> EngineCore::Prefetch(const Tensor& tensor,
                                                    BlockRange range,
                                                    Tier tier) {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, catalog_->Check(tensor));
  STRATA_ASSIGN_OR_RETURN(const int pos, PrefetchTier(tensor, *ts, tier));
  const uint64_t end = std::min(range.end, ts->num_blocks);
  if (range.begin > end || range.begin >= ts->num_blocks) {
    return absl::OutOfRangeError(absl::StrCat(
        "prefetch range [", range.begin, ", ", range.end, ") of tensor '",
        ts->info->name, "' is outside its ", ts->num_blocks, " blocks"));
  }
  auto state = std::make_shared<PrefetchState>();
  PrefetchHandle handle = MakeHandle(state, end - range.begin);
  if (end > range.begin) mover_->Prefetch(tensor.state_, range.begin, end, pos, state);
  return handle;
}

absl::StatusOr<PrefetchHandle> EngineCore::PrefetchBlocks(
    const Tensor& tensor, std::span<const uint64_t> blocks, Tier tier) {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, catalog_->Check(tensor));
  STRATA_ASSIGN_OR_RETURN(const int pos, PrefetchTier(tensor, *ts, tier));
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i] >= ts->num_blocks) {
      return absl::OutOfRangeError(absl::StrCat(
          "prefetch of block ", blocks[i], " (entry ", i, " of ", blocks.size(),
          ") of tensor '", ts->info->name, "', which has ", ts->num_blocks,
          " blocks; nothing was started"));
    }
  }
  auto state = std::make_shared<PrefetchState>();
  PrefetchHandle handle = MakeHandle(state, blocks.size());
  if (!blocks.empty()) mover_->PrefetchBlocks(tensor.state_, blocks, pos, state);
  return handle;
}

absl::Status EngineCore::Flush(const Tensor& tensor) {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, catalog_->Check(tensor));
  // A shared tensor's sealed blocks are in the segment already, which is
  // as far down as they go (no spill file yet).
  if (ts->info->shared) return absl::OkStatus();
  return write_backs_->Flush(tensor.state_);
}

absl::Status EngineCore::FlushAll() {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  absl::Status first;
  for (const auto& ts : catalog_->All()) {
    if (ts->dropped()) continue;
    absl::Status s = write_backs_->Flush(ts);
    if (!s.ok() && !absl::IsNotFound(s) && first.ok()) first = s;
  }
  return first;
}

absl::Status EngineCore::BeginStep() {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  return steps_->Begin();
}

absl::Status EngineCore::EndStep() {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  return steps_->End();
}

// ---------------------------------------------------------------------------
// Tensors

absl::StatusOr<Tensor> EngineCore::CreateTensor(std::string_view name,
                                                const TensorSpec& spec) {
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  return catalog_->Create(name, spec);
}

absl::StatusOr<Tensor> EngineCore::OpenTensor(std::string_view name) {
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  return catalog_->Open(name);
}

absl::Status EngineCore::DropTensor(const Tensor& tensor) {
  Lifecycle::Scope scope(life_);
  STRATA_RETURN_IF_ERROR(life_.CheckOpen());
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, catalog_->Check(tensor));
  // One drop at a time; pins, Prefetch and Flush see the tensor gone from
  // here on.
  uint32_t gate = ts->gate.load(std::memory_order_acquire);
  do {
    if (gate & (TensorState::kGateDropping | TensorState::kGateDropped)) {
      return absl::NotFoundError(absl::StrCat(
          "tensor '", ts->info->name, "' was dropped; create it again"));
    }
  } while (!ts->gate.compare_exchange_weak(
      gate, gate | TensorState::kGateDropping, std::memory_order_seq_cst));
  // Loads of the tensor waiting for a frame give up (the claims below may
  // hold the frames they wait for, and wait for those loads).
  for (auto& tier : residency_) tier->Interrupt();
  std::lock_guard flush_lock(ts->info->flush_mu);  // a Flush in progress ends first
  std::vector<uint64_t> claimed;
  if (absl::Status s = ClaimEveryCopy(*ts, claimed, "DropTensor"); !s.ok()) {
    RollBackClaims(*ts, claimed);
    ts->gate.fetch_and(~TensorState::kGateDropping, std::memory_order_seq_cst);
    return s;
  }
  if (ts->info->shared) {
    // Its private copies are claimed; now the segment, for every process.
    if (absl::Status s = shared_->Remove(*ts); !s.ok()) {
      RollBackClaims(*ts, claimed);
      ts->gate.fetch_and(~TensorState::kGateDropping, std::memory_order_seq_cst);
      return s;
    }
  }
  ts->gate.fetch_or(TensorState::kGateDropped, std::memory_order_seq_cst);
  ForgetEveryCopy(*ts);
  EndClaims(*ts, claimed);  // their frames are free now
  (void)ts->TakeWriteBackErrors();
  catalog_->Forget(*ts);
  return absl::OkStatus();
}

absl::Status EngineCore::ClaimEveryCopy(TensorState& ts,
                                        std::vector<uint64_t>& claimed,
                                        std::string_view caller) {
  const Deadline deadline =
      Clock::now() + absl::ToChronoNanoseconds(options_.io_timeout);
  claimed.reserve(ts.num_blocks * ts.chain_size);
  for (uint64_t b = 0; b < ts.num_blocks; ++b) {
    for (int pos = 0; pos < ts.chain_size; ++pos) {
      std::atomic<uint64_t>& word = ts.copy(pos, b).word;
      for (;;) {
        uint64_t w = word.load(std::memory_order_acquire);
        const S state(w);
        if (state.state() == S::kAbsent || state.idle()) {
          // A claimed resident copy keeps its frame until the claim ends
          // (EndClaims): counted in transit from before the CAS, so that an
          // allocation finding every frame of the tier claimed waits for
          // the claim instead of failing with kResourceExhausted.
          const bool holds_frame = state.resident();
          if (holds_frame) residency_[pos]->TransitBegin();
          if (word.compare_exchange_weak(w, state.With(S::kEvicting),
                                         std::memory_order_acq_rel)) {
            claimed.push_back(w & ~S::kWaiters);
            break;
          }
          if (holds_frame) residency_[pos]->TransitEnd();
          continue;
        }
        // A load of the block holds its source with a read pin until the
        // new copy is published (and only the engine pins copies of tiers
        // that cannot be pinned): while a load holds this copy, wait as for
        // a copy in transit; the pins left after it are the callers'.
        if (state.resident() && state.pins() != 0 && chain_->pinnable(pos) &&
            CallersPin(ts, b, pos, w)) {
          return absl::FailedPreconditionError(absl::StrCat(
              BlockName(ts, b), " is pinned in tier ",
              Sv(TierName(chain_->kind(pos))), "; release its pins before ",
              Sv(caller)));
        }
        // Loading, being written back, in flight to the device, or held
        // as a source: its transfer ends soon.
        if (!waits_.WaitForChange(word, w, deadline)) {
          return absl::DeadlineExceededError(absl::StrCat(
              BlockName(ts, b), " stayed in transit for io_timeout during ",
              Sv(caller), "; the device may be stalled"));
        }
      }
    }
  }
  return absl::OkStatus();
}

bool EngineCore::CallersPin(TensorState& ts, uint64_t b, int pos, uint64_t w) {
  // A load records the source it pins under the block's latch (Loader::
  // PickSource), so under the latch a pin is either a load's or a caller's.
  LatchGuard latch(ts.record(b).latch, waits_);
  return ts.copy(pos, b).word.load(std::memory_order_acquire) == w &&
         !loader_->HoldsSource(ts, b, pos);
}

void EngineCore::RollBackClaims(TensorState& ts,
                                const std::vector<uint64_t>& claimed) {
  for (size_t i = 0; i < claimed.size(); ++i) {
    const uint64_t b = i / ts.chain_size;
    const int pos = static_cast<int>(i % ts.chain_size);
    std::atomic<uint64_t>& word = ts.copy(pos, b).word;
    if (!S(claimed[i]).resident()) {
      waits_.Publish(word, claimed[i]);
      continue;
    }
    // Only the state goes back, the flags stay as they are now: a load
    // that looked at the gate before the drop began may have chosen its
    // source since, and set the shared bit on this claimed copy (its own
    // copy in another pinnable tier is current). Put back without it, this
    // copy's next write pin would be the hot path's one CAS, and that
    // other copy would keep the bytes from before the write (a read pin of
    // it returned them: chain_test ARefusedDropKeepsTheSharedBitALoadSet
    // Meanwhile). As Residency::RestoreWord.
    uint64_t w = word.load(std::memory_order_acquire);
    while (!word.compare_exchange_weak(w, S(w).With(S::kResident) & ~S::kWaiters,
                                       std::memory_order_acq_rel)) {
    }
    if (S(w).has_waiters()) waits_.Wake(word);
  }
  EndClaims(ts, claimed);
}

void EngineCore::EndClaims(const TensorState& ts,
                           const std::vector<uint64_t>& claimed) {
  for (size_t i = 0; i < claimed.size(); ++i) {
    if (S(claimed[i]).resident()) residency_[i % ts.chain_size]->TransitEnd();
  }
}

void EngineCore::ForgetEveryCopy(TensorState& ts) {
  for (int pos = 0; pos < ts.chain_size; ++pos) {
    Residency& tier = *residency_[pos];
    for (uint64_t b = 0; b < ts.num_blocks; ++b) {
      CopySlot& slot = ts.copy(pos, b);
      if (slot.frame.valid()) tier.Erase(ts.Key(b));
      {
        LatchGuard latch(ts.record(b).latch, waits_);
        FreeCopyLocked(parts_, ts, b, pos);  // wakes anyone still waiting
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Close and statistics

void EngineCore::Interrupt() {
  waits_.Interrupt();
  loader_->Interrupt();
  for (auto& tier : residency_) tier->Interrupt();
}

absl::Status EngineCore::ClaimForClose() {
  // Every copy of every tensor is claimed (a pinned one refuses, and every
  // claim is undone): from here on no pin's CAS can succeed, whatever gate
  // it read.
  std::vector<std::pair<std::shared_ptr<TensorState>, std::vector<uint64_t>>> done;
  for (auto& ts : catalog_->All()) {
    if (ts->dropped()) continue;
    std::vector<uint64_t> claimed;
    absl::Status s = ClaimEveryCopy(*ts, claimed, "Close");
    if (!s.ok()) {
      RollBackClaims(*ts, claimed);
      for (auto& [other, other_claimed] : done) RollBackClaims(*other, other_claimed);
      return s;
    }
    done.emplace_back(std::move(ts), std::move(claimed));
  }
  // The claims stay (the engine is closed); allocations waiting for them
  // look again and find the engine closed.
  for (auto& [ts, claimed] : done) EndClaims(*ts, claimed);
  return absl::OkStatus();
}

absl::Status EngineCore::Close() {
  std::lock_guard close_lock(close_mu_);
  if (closed_) return absl::OkStatus();
  life_.BeginClose();
  catalog_->SetGate(TensorState::kGateClosed, true);
  life_.WaitForCalls([this] { Interrupt(); }, 0);
  mover_->Pause();
  const Deadline deadline =
      Clock::now() + absl::ToChronoNanoseconds(options_.io_timeout);
  if (!life_.WaitForTransfers(deadline)) {
    return absl::DeadlineExceededError(absl::StrCat(
        life_.async_in_flight(), " transfers did not complete within "
        "EngineOptions::io_timeout (", absl::FormatDuration(options_.io_timeout),
        "); the engine is closed, and destroying it waits for them"));
  }
  // No call is in progress any more, so no shm pin can be granted from
  // here on: checked before the claims, which a refusal would have to undo.
  absl::Status pinned =
      shared_ != nullptr && shared_->live_pins() != 0
          ? absl::FailedPreconditionError(absl::StrCat(
                shared_->live_pins(), " pins of shared tensors are live; "
                "release them before Close"))
          : ClaimForClose();
  if (!pinned.ok()) {
    catalog_->SetGate(TensorState::kGateClosed, false);
    life_.CancelClose();
    mover_->Resume();
    return pinned;
  }
  mover_->Stop();
  closed_ = true;
  return absl::OkStatus();
}

void EngineCore::FillTierStats(int pos, TierStats& out) const {
  const tiers::Tier& tier = chain_->tier(pos);
  const TierCounters& c = stats_->tier(pos);
  out.present = true;
  out.capacity_bytes = tier.capacity();
  out.bytes_in = c.bytes_in.load(std::memory_order_relaxed);
  out.bytes_out = c.bytes_out.load(std::memory_order_relaxed);
  out.evictions = c.evictions.load(std::memory_order_relaxed);
  out.write_backs = c.write_backs.load(std::memory_order_relaxed);
  out.errors = c.errors.load(std::memory_order_relaxed);
  out.speculative_errors = c.speculative_errors.load(std::memory_order_relaxed);
  out.write_backs_in_flight = static_cast<uint64_t>(std::max<int64_t>(
      c.write_backs_in_flight.load(std::memory_order_acquire), 0));
}

EngineStats EngineCore::GetStats() const {
  EngineStats stats;
  for (int i = 0; i < kNumTiers; ++i) stats.tiers[i].tier = static_cast<Tier>(i);
  std::array<uint64_t, LatencyHistogram::kBuckets> hit_lat{}, miss_lat{};
  // In-flight counts first: a snapshot that sees none sees the counters of
  // every write-back that finished before it.
  for (int pos = 0; pos < chain_->size(); ++pos) {
    TierStats& out = stats.tiers[static_cast<int>(chain_->kind(pos))];
    FillTierStats(pos, out);
    if (chain_->pinnable(pos)) {
      stats_->SumRings(pos, &out.hits, &out.misses, &hit_lat, &miss_lat);
    }
  }
  for (const auto& ts : catalog_->All()) {
    if (ts->dropped()) continue;
    for (int pos = 0; pos < ts->chain_size; ++pos) {
      if (!chain_->pinnable(pos)) continue;
      TierStats& out = stats.tiers[static_cast<int>(chain_->kind(pos))];
      for (uint64_t b = 0; b < ts->num_blocks; ++b) {
        if (Load(ts->copy(pos, b).word, std::memory_order_relaxed).pins() != 0) {
          out.pinned_bytes += (ts->BlockSize(b) + 4095) / 4096 * 4096;
        }
      }
    }
  }
  // Pins come and go while the words are scanned, and frames with them:
  // read `used` after the scan, and keep the snapshot consistent (a pinned
  // copy always holds a frame), so that used - pinned never wraps.
  for (int pos = 0; pos < chain_->size(); ++pos) {
    TierStats& out = stats.tiers[static_cast<int>(chain_->kind(pos))];
    out.used_bytes = std::max(chain_->tier(pos).used(), out.pinned_bytes);
  }
  if (shared_ != nullptr) shared_->FillStats(stats.tiers[static_cast<int>(Tier::kShm)]);
  stats.pin_hit_latency = LatencyHistogram::Summarize(hit_lat);
  stats.pin_miss_latency = LatencyHistogram::Summarize(miss_lat);
  return stats;
}

uint64_t EngineCore::ResidentBytes(Tier tier) const {
  const int pos = chain_->position(tier);
  if (pos < 0) return 0;
  uint64_t bytes = 0;
  for (const auto& ts : catalog_->All()) {
    if (ts->dropped()) continue;
    for (uint64_t b = 0; b < ts->num_blocks; ++b) {
      if (Load(ts->copy(pos, b).word, std::memory_order_relaxed).resident()) {
        bytes += ts->BlockSize(b);
      }
    }
  }
  return bytes;
}

bool EngineCore::CopyHasWaiters(const Tensor& tensor, Tier tier,
                                uint64_t block) const {
  const int pos = chain_->position(tier);
  TensorState* ts = tensor.state_.get();
  if (pos < 0 || ts == nullptr || block >= ts->num_blocks) return false;
  return Load(ts->copy(pos, block).word).has_waiters();
}

bool EngineCore::WaitForBackgroundWork(Deadline deadline) {
  // The mover's jobs start transfers, and finished transfers may queue no
  // job: the mover first, then the transfers.
  return mover_->WaitIdle(deadline) && life_.WaitForTransfers(deadline);
}

void EngineCore::PauseBackgroundWork() { mover_->Pause(); }
void EngineCore::ResumeBackgroundWork() { mover_->Resume(); }
void EngineCore::SetEvictionHook(BlockHook::Fn hook) {
  write_backs_->eviction_hook.Set(std::move(hook));
}
void EngineCore::SetLoadSourceHook(BlockHook::Fn hook) {
  loader_->source_hook.Set(std::move(hook));
}

// ---------------------------------------------------------------------------
// Construction and destruction

EngineCore::EngineCore(EngineOptions options, std::unique_ptr<TierChain> chain)
    : options_(std::move(options)),
      uid_(engine_uids.fetch_add(1)),
      life_(options_.log),
      chain_(std::move(chain)) {
  pin_pos_.fill(-1);
  for (int pos = 0; pos < chain_->size(); ++pos) {
    kind_of_[pos] = chain_->kind(pos);
    if (chain_->pinnable(pos)) {
      pin_pos_[static_cast<uint8_t>(chain_->kind(pos))] = static_cast<int8_t>(pos);
    }
  }
}

absl::Status EngineCore::Build() {
  parts_.options = &options_;
  parts_.chain = chain_.get();
  parts_.waits = &waits_;
  parts_.life = &life_;
  parts_.residency = &residency_;
  std::vector<int> pinnable;
  for (int pos = 0; pos < chain_->size(); ++pos) {
    if (chain_->pinnable(pos)) pinnable.push_back(pos);
  }
  catalog_ = std::make_unique<Catalog>(parts_, this);
  parts_.catalog = catalog_.get();
  stats_ = std::make_unique<Stats>(uid_, std::move(pinnable));
  parts_.stats = stats_.get();
  for (int pos = 0; pos < chain_->size(); ++pos) {
    std::unique_ptr<policy::EvictionPolicy> policy;
    if (pos != chain_->lowest() || chain_->pinnable(pos)) {
      const size_t frames = std::max<uint64_t>(
          chain_->tier(pos).capacity() / options_.default_block_bytes, 1);
      STRATA_ASSIGN_OR_RETURN(policy, policy::MakePolicy(options_.policy, frames));
    }
    residency_.push_back(std::make_unique<Residency>(parts_, pos, std::move(policy)));
  }
  write_backs_ = std::make_unique<WriteBacks>(parts_);
  parts_.write_backs = write_backs_.get();
  loader_ = std::make_unique<Loader>(parts_);
  parts_.loader = loader_.get();
  const uint64_t host_frames = std::max<uint64_t>(
      chain_->tier(chain_->host()).capacity() / options_.default_block_bytes, 1);
  steps_ = std::make_unique<Steps>(parts_, std::clamp<uint64_t>(host_frames / 4, 1, 64));
  parts_.steps = steps_.get();
  mover_ = std::make_unique<Mover>(parts_);
  parts_.mover = mover_.get();
  if (HasTier(options_, Tier::kShm) && chain_->position(Tier::kShm) < 0) {
    STRATA_ASSIGN_OR_RETURN(shared_,
                            SharedTensors::Open(options_, this, *catalog_, chain_->size()));
    parts_.shared = shared_.get();
    // Shared blocks promote to VRAM from the mapping itself: register it
    // with CUDA once, as the host arena is.
    for (int pos = 0; pos < chain_->size(); ++pos) {
      if (chain_->kind(pos) != Tier::kGpu) continue;
      tiers::shm::Segment& seg = shared_->segment();
      absl::Status registered =
          chain_->tier(pos).RegisterHostMemory({seg.base(), seg.mapped_bytes()});
      if (!registered.ok() && options_.log) {
        options_.log(absl::StrCat("strata: shm segment ", seg.name(),
                                  " not registered with the GPU tier (",
                                  registered.message(), "); shared blocks copy "
                                  "to VRAM from pageable memory"));
      }
    }
  }
  return absl::OkStatus();
}

EngineCore::~EngineCore() {
  const absl::Status closed = Close();
  ABSL_ASSERT(!absl::IsFailedPrecondition(closed) &&
              "an engine was destroyed with live pins");
  if (!closed.ok()) {
    // Live pins (release builds: they now dangle), or transfers that did not
    // finish in time: shut down anyway.
    life_.BeginClose();
    life_.WaitForCalls([this] { Interrupt(); }, 0);
  }
  if (mover_ != nullptr) mover_->Stop();
  // Tiers complete whatever is still in flight when they are destroyed
  // (failing it); the parts those completions call into are still here.
  chain_->Shutdown();
  life_.WaitForTransfers(Clock::now() + std::chrono::hours(1));
}

}  // namespace strata::internal
