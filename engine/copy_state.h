// The state word of one copy of one block in one tier, and its named
// transitions (vmcache's PageState, LeanStore's guards): every change of a
// copy's state in the engine is one of the operations below, applied with a
// CAS on the word; nowhere else does code do bit arithmetic on it.
//
//   bits  0..15  pin count             bit 16  exclusive (a write pin)
//   bit  17      dirty                 bits 18..19  absent/loading/resident/evicting
//   bit  20      someone waits on this word
//   bit  21      prefetched and not pinned since
//   bit  22      shared: another copy may need invalidating before a write
//   bit  23      new: written since its bytes last got a version
//   bit  24      in flight: resident for asynchronous pins only (below)
//   bit  25      failed: its asynchronous copy failed; holds no bytes
//
// What the bits mean for the block (DESIGN.md, invariants 1-6):
// - dirty: the copy is the lowest one holding the block's newest bytes and
//   the lowest tier of the chain does not hold them yet. At most one copy of
//   a block is dirty; it is dropped only after a lower tier acknowledged it.
// - new: a write pin changed the bytes after they were last versioned, so
//   every other copy is stale. Whoever first copies the bytes out (under the
//   block's latch, with the copy held) gives them a version and clears it.
// - shared: set on a pinnable copy when another pinnable copy exists, or a
//   dirty copy lives elsewhere. A write pin of a copy without it is one CAS
//   (the hot path); with it, the writer first invalidates the others
//   (BlockOps::MakeSole) under the block latch.
//
// - in flight: a device copy (the GPU's) published resident as soon as the
//   copy of its bytes was enqueued on the device's stream, for an
//   asynchronous pin (Engine::PinAsync) that orders its work after the
//   copy's event instead of waiting for it. Until the copy's completion
//   clears the bit, only asynchronous read pins take the copy
//   (ReadPinnedInFlight): a plain pin waits for the bit to clear, and no
//   one claims (evicts, drops), holds for copying out, or write-pins it.
// - failed: that copy's transfer failed after the copy was published. Its
//   frame holds no valid bytes and it is never dirty: nobody pins it; once
//   its pins are gone it is claimed and dropped like a clean copy (by
//   eviction, or by the next pinner, who then loads the block anew).
//
// Every resident copy of a pinnable tier holds the block's newest bytes: a
// write pin of one copy drops every other pinnable copy first (a failed
// copy holds none, and nobody reads it).
#ifndef STRATA_ENGINE_COPY_STATE_H_
#define STRATA_ENGINE_COPY_STATE_H_

#include <atomic>
#include <cstdint>

#include "api/strata/strata.h"

namespace strata::internal {

class CopyState {
 public:
  static constexpr uint64_t kPinMask = 0xFFFF;
  static constexpr uint64_t kExclusive = uint64_t{1} << 16;
  static constexpr uint64_t kDirty = uint64_t{1} << 17;
  static constexpr int kStateShift = 18;
  static constexpr uint64_t kStateMask = uint64_t{3} << kStateShift;
  static constexpr uint64_t kWaiters = uint64_t{1} << 20;
  static constexpr uint64_t kPrefetched = uint64_t{1} << 21;
  static constexpr uint64_t kShared = uint64_t{1} << 22;
  static constexpr uint64_t kNew = uint64_t{1} << 23;
  static constexpr uint64_t kInFlight = uint64_t{1} << 24;
  static constexpr uint64_t kFailed = uint64_t{1} << 25;

  enum State : uint64_t { kAbsent = 0, kLoading = 1, kResident = 2, kEvicting = 3 };

  constexpr explicit CopyState(uint64_t word) : w_(word) {}
  constexpr uint64_t raw() const { return w_; }

  constexpr State state() const {
    return static_cast<State>((w_ & kStateMask) >> kStateShift);
  }
  constexpr uint64_t pins() const { return w_ & kPinMask; }
  constexpr bool exclusive() const { return (w_ & kExclusive) != 0; }
  constexpr bool dirty() const { return (w_ & kDirty) != 0; }
  constexpr bool is_new() const { return (w_ & kNew) != 0; }
  constexpr bool shared() const { return (w_ & kShared) != 0; }
  constexpr bool prefetched() const { return (w_ & kPrefetched) != 0; }
  constexpr bool has_waiters() const { return (w_ & kWaiters) != 0; }
  constexpr bool in_flight() const { return (w_ & kInFlight) != 0; }
  constexpr bool failed() const { return (w_ & kFailed) != 0; }
  constexpr bool resident() const { return state() == kResident; }
  // Resident, its bytes in place or known lost (not in flight), with no pin
  // at all: eviction may claim it.
  constexpr bool idle() const {
    return resident() && pins() == 0 && !in_flight();
  }
  // Resident with its bytes in place: neither in flight nor failed.
  constexpr bool usable() const {  // one mask and compare: the hot path's
    return (w_ & (kStateMask | kInFlight | kFailed)) ==
           (static_cast<uint64_t>(kResident) << kStateShift);
  }
  // The same state, pins and flags, ignoring who waits.
  constexpr bool SameAs(CopyState o) const {
    return (w_ & ~kWaiters) == (o.w_ & ~kWaiters);
  }

  // --- Transitions. Each returns the word to CAS in, or 0 when the
  // transition is not allowed from this word (0 is never a valid result:
  // every result below is loading, resident or evicting).

  // A shared read pin of a resident copy: one more pin, prefetched cleared.
  constexpr uint64_t ReadPinned() const {
    if (!usable() || exclusive() || pins() == kPinMask) return 0;
    return (w_ + 1) & ~kPrefetched;
  }
  // An asynchronous read pin (Engine::PinAsync): like a read pin, and also
  // of a copy still in flight (the pin then orders work after its event).
  constexpr uint64_t ReadPinnedInFlight() const {
    if (!resident() || failed() || exclusive() || pins() == kPinMask) return 0;
    return (w_ + 1) & ~kPrefetched;
  }
  // The engine's own read pin of a copy it copies out (a load's source, a
  // Flush): like a read pin, but leaves the prefetched bit alone.
  constexpr uint64_t HeldForCopy() const {
    if (!usable() || exclusive() || pins() == kPinMask) return 0;
    return w_ + 1;
  }
  // An exclusive write pin: only of an unpinned resident copy that no other
  // copy needs invalidating for. Marks it dirty and new.
  constexpr uint64_t WritePinned() const {
    if (!idle() || failed() || shared()) return 0;
    return ((w_ + 1) | kExclusive | kDirty | kNew) & ~kPrefetched;
  }
  // A Prefetch of a copy already resident (Mover::MarkResident): marked
  // as a copy it loaded would be, so that eviction passes over it until
  // its pin comes. Not a copy being written (its writer's pin is its
  // access), nor one marked already.
  constexpr uint64_t MarkedPrefetched() const {
    if (!resident() || exclusive() || prefetched()) return 0;
    return w_ | kPrefetched;
  }
  // Eviction (or a drop) claims an unpinned resident copy.
  constexpr uint64_t Claimed() const {
    if (!idle()) return 0;
    return With(kEvicting);
  }
  // The first loader of an absent copy owns it while it fills it.
  constexpr uint64_t Loading() const {
    if (state() != kAbsent) return 0;
    return CopyState(0).With(kLoading) | (w_ & kWaiters);
  }
  // The completion of an in-flight copy's transfer: its bytes are in place
  // (`ok`), or the copy is failed. Pins and flags stay.
  constexpr uint64_t Landed(bool ok) const {
    if (!resident() || !in_flight()) return 0;
    return (w_ & ~kInFlight) | (ok ? 0 : kFailed);
  }
  // A write-back claims the copy of a lower tier it overwrites: absent, or
  // resident, stale and unpinned. Never a dirty one: that copy holds the
  // block's newest bytes (its dirty mark moved down onto it after the
  // write-back's source was chosen), and writing over it would publish
  // them clean, to be dropped as such.
  constexpr uint64_t ClaimedAsTarget() const {
    if (state() == kAbsent) return Loading();
    if (!idle() || dirty()) return 0;
    return CopyState(0).With(kLoading) | (w_ & kWaiters);
  }

  // --- Words published by an owner (loading or evicting) when it is done.
  static constexpr uint64_t Absent() { return 0; }
  static constexpr uint64_t Resident(uint64_t flags) {
    return CopyState(0).With(kResident) | flags;
  }

  constexpr uint64_t With(State s) const {
    return (w_ & ~kStateMask) | (static_cast<uint64_t>(s) << kStateShift);
  }

 private:
  uint64_t w_;
};

static_assert(kUnpinRead == 1 && kUnpinWrite == CopyState::kExclusive + 1 &&
                  kWaitersBit == CopyState::kWaiters,
              "Pin's inline unpin must match the copy state word layout");

inline CopyState Load(const std::atomic<uint64_t>& word,
                      std::memory_order order = std::memory_order_acquire) {
  return CopyState(word.load(order));
}

}  // namespace strata::internal

#endif  // STRATA_ENGINE_COPY_STATE_H_
