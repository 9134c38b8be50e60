#include "engine/block_ops.h"

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "engine/chain.h"
#include "engine/lifecycle.h"
#include "engine/residency.h"

namespace strata::internal {
namespace {

using S = CopyState;

// Calls f(pos) for every position but `target`, nearest first (at equal
// distance the lower tier first: it is the more likely to hold host bytes);
// stops when f returns true.
template <typename F>
void ForNearest(int n, int target, F&& f) {
  for (int d = 1; d < n; ++d) {
    if (target + d < n && f(target + d)) return;
    if (target - d >= 0 && f(target - d)) return;
  }
}

// Takes one read pin of a resident copy for copying it out; false when the
// copy is not pinnable now (being written, claimed, or full of pins).
bool HoldForCopy(std::atomic<uint64_t>& word, uint64_t* seen) {
  uint64_t w = word.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t desired = S(w).HeldForCopy();
    if (desired == 0) {
      *seen = w;
      return false;
    }
    if (word.compare_exchange_weak(w, desired, std::memory_order_acq_rel)) {
      *seen = desired;
      return true;
    }
  }
}

// The copy a write pin changed (then the only current one), or -1; sets
// `wait` when a copy is being written or moved.
int NewestCopy(TensorState& ts, uint64_t block, int target, Source* wait) {
  for (int i = 0; i < ts.chain_size; ++i) {
    if (i == target) continue;
    const S w = Load(ts.copy(i, block).word);
    if (w.exclusive() || (w.is_new() && !w.resident())) {
      *wait = {.kind = Source::kWait, .pos = i, .seen = w.raw()};
      return -1;
    }
    if (w.is_new()) return i;
  }
  return -1;
}

}  // namespace

Source ChooseSource(EngineParts& parts, TensorState& ts, uint64_t block,
                    int target) {
  const TierChain& chain = *parts.chain;
  const int n = ts.chain_size;
  for (int i = 0; i < n; ++i) {
    if (i == target || !chain.pinnable(i)) continue;
    std::atomic<uint64_t>& word = ts.copy(i, block).word;
    const S w = Load(word);
    if (w.state() != S::kAbsent && !w.shared()) {
      word.fetch_or(S::kShared, std::memory_order_seq_cst);
    }
  }
  Source wait;
  int candidate = NewestCopy(ts, block, target, &wait);
  if (wait.kind == Source::kWait) return wait;
  const uint64_t version = ts.record(block).version;
  if (candidate < 0) {
    if (version == 0) return {.kind = Source::kZeros};
    Source in_transit;
    ForNearest(n, target, [&](int i) {
      CopySlot& slot = ts.copy(i, block);
      const S w = Load(slot.word);
      // A failed copy (its asynchronous transfer failed) holds no bytes.
      if (slot.version != version || w.state() == S::kAbsent || w.failed()) {
        return false;
      }
      if (w.resident()) {
        candidate = i;
        return true;
      }
      if (in_transit.kind != Source::kWait) {
        in_transit = {.kind = Source::kWait, .pos = i, .seen = w.raw()};
      }
      return false;
    });
    if (candidate < 0) return in_transit;  // kLost unless one is in transit
  }
  CopySlot& src = ts.copy(candidate, block);
  uint64_t held = 0;
  if (!HoldForCopy(src.word, &held)) {
    return {.kind = Source::kWait, .pos = candidate, .seen = held};
  }
  Source source{.kind = Source::kCopy, .pos = candidate};
  source.version = VersionForCopyOut(ts, block, candidate);
  source.frame = src.frame;
  source.checksum = src.checksum;
  source.moves_dirty = S(held).dirty() && candidate < target;
  return source;
}

void ReleaseSource(EngineParts& parts, TensorState& ts, uint64_t block,
                   int pos) {
  std::atomic<uint64_t>& word = ts.copy(pos, block).word;
  const uint64_t old = word.fetch_sub(1, std::memory_order_acq_rel);
  ABSL_ASSERT(S(old).pins() != 0 && "release of a copy that holds no pin");
  if (S(old).has_waiters()) parts.waits->Wake(word);
}

uint64_t VersionForCopyOut(TensorState& ts, uint64_t block, int pos) {
  CopySlot& slot = ts.copy(pos, block);
  if (Load(slot.word).is_new()) {
    BlockRecord& rec = ts.record(block);
    slot.version = ++rec.version;
    // Held (pinned or claimed) by the caller: no write pin can set it again
    // before this clears it.
    slot.word.fetch_and(~S::kNew, std::memory_order_acq_rel);
  }
  return slot.version;
}

bool NeedsShared(const EngineParts& parts, TensorState& ts, uint64_t block,
                 int pos) {
  for (int i = 0; i < ts.chain_size; ++i) {
    if (i == pos) continue;
    const S w = Load(ts.copy(i, block).word);
    if (parts.chain->pinnable(i) && w.state() != S::kAbsent) return true;
    if (w.dirty()) return true;
  }
  return false;
}

namespace {

// Under the latch, for a write pin of copy `pos`: drops every other pinnable
// copy and clears the dirty mark of lower ones (returned in `dirty_moves`:
// the mark must move to `pos`, which holds the same bytes). Stops at the
// first copy it must wait for (`wait_pos`, `wait_seen`).
void InvalidateOthersLocked(EngineParts& parts, TensorState& ts,
                            uint64_t block, int pos, std::vector<int>& dropped,
                            bool* dirty_moves, int* wait_pos,
                            uint64_t* wait_seen) {
  for (int i = 0; i < ts.chain_size; ++i) {
    if (i == pos) continue;
    CopySlot& slot = ts.copy(i, block);
    uint64_t w = slot.word.load(std::memory_order_acquire);
    if (!parts.chain->pinnable(i)) {
      if (S(w).dirty()) {
        slot.word.fetch_and(~S::kDirty, std::memory_order_acq_rel);
        *dirty_moves = true;
      }
      continue;
    }
    if (S(w).state() == S::kAbsent) continue;
    const uint64_t claimed = S(w).Claimed();
    if (claimed == 0 || !slot.word.compare_exchange_strong(w, claimed)) {
      *wait_pos = i;
      *wait_seen = w;
      return;
    }
    *dirty_moves |= S(claimed).dirty();
    FreeCopyLocked(parts, ts, block, i);
    dropped.push_back(i);
  }
}

// Under the latch: turns this thread's read pin of `word` into the write
// pin, if it is the only pin. False (pin kept) otherwise.
bool UpgradeLocked(std::atomic<uint64_t>& word, uint64_t* seen) {
  uint64_t w = word.load(std::memory_order_acquire);
  for (;;) {
    if (S(w).pins() != 1 || S(w).exclusive()) {
      *seen = w;
      return false;
    }
    const uint64_t desired =
        (w | S::kExclusive | S::kDirty | S::kNew) & ~S::kPrefetched;
    if (word.compare_exchange_weak(w, desired, std::memory_order_acq_rel)) {
      return true;
    }
  }
}

}  // namespace

absl::StatusOr<bool> MakeSoleAndPin(EngineParts& parts, TensorState& ts,
                                    uint64_t block, int pos,
                                    Deadline deadline) {
  CopySlot& own = ts.copy(pos, block);
  for (;;) {
    if (absl::Status s = Interrupted(parts, ts); !s.ok()) return s;
    std::vector<int> dropped;
    int wait_pos = -1;
    uint64_t wait_seen = 0;
    bool granted = false;
    {
      LatchGuard latch(ts.record(block).latch, *parts.waits);
      // Held by a read pin from here on, so that eviction cannot take the
      // copy while the dirty mark moves onto it.
      uint64_t held = 0;
      if (!HoldForCopy(own.word, &held)) return false;
      bool dirty_moves = false;
      InvalidateOthersLocked(parts, ts, block, pos, dropped, &dirty_moves,
                             &wait_pos, &wait_seen);
      if (dirty_moves) own.word.fetch_or(S::kDirty, std::memory_order_acq_rel);
      if (wait_pos < 0) {
        own.word.fetch_and(~S::kShared, std::memory_order_acq_rel);
        granted = UpgradeLocked(own.word, &wait_seen);
        if (!granted) {
          wait_pos = pos;  // read pins of this copy: wait for them to go
          --wait_seen;     // without this thread's, released below
        }
      }
      if (!granted) ReleaseSource(parts, ts, block, pos);
    }
    for (int i : dropped) parts.tier(i).Erase(ts.Key(block));
    if (granted) return true;
    CopySlot& waited = ts.copy(wait_pos, block);
    if (!parts.waits->WaitForChange(waited.word, wait_seen, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          BlockName(ts, block), " stayed pinned in tier ",
          Sv(TierName(parts.chain->kind(wait_pos))), " for ",
          absl::FormatDuration(parts.options->pin_wait_timeout),
          " while a write pin waited for it; release the conflicting pin (a "
          "thread cannot hold a read pin and ask for a write pin of the same "
          "block) or raise EngineOptions::pin_wait_timeout"));
    }
    if (wait_pos == pos && !Load(waited.word).resident()) return false;
  }
}

void FreeCopyLocked(EngineParts& parts, TensorState& ts, uint64_t block,
                    int pos) {
  CopySlot& slot = ts.copy(pos, block);
  const tiers::Frame frame = slot.frame;
  slot.frame = {};
  slot.version = 0;
  slot.checksum = 0;
  if (frame.valid()) parts.tier(pos).Free(frame);
  parts.waits->Publish(slot.word, S::Absent());
}

void DropClaimed(EngineParts& parts, TensorState& ts, uint64_t block, int pos) {
  LatchGuard latch(ts.record(block).latch, *parts.waits);
  FreeCopyLocked(parts, ts, block, pos);
}

bool TakeClaimedFrame(EngineParts& parts, TensorState& ts, uint64_t block,
                      int pos, uint64_t bytes, tiers::Frame* frame) {
  LatchGuard latch(ts.record(block).latch, *parts.waits);
  CopySlot& slot = ts.copy(pos, block);
  if (slot.frame.bytes < bytes || slot.frame.bytes - bytes >= 4096) return false;
  // A failed copy's frame goes back through its tier, which forgets the
  // failure with it (the GPU's ready event and error).
  if (Load(slot.word).failed()) return false;
  *frame = slot.frame;
  slot.frame = {};
  slot.version = 0;
  slot.checksum = 0;
  parts.waits->Publish(slot.word, S::Absent());
  return true;
}

absl::Status Interrupted(const EngineParts& parts, const TensorState& ts) {
  if (ts.dropped()) {
    return absl::NotFoundError(absl::StrCat(
        "tensor '", ts.info->name, "' was dropped; open or create it again"));
  }
  return parts.life->CheckOpen();
}

}  // namespace strata::internal
