// Residency of one tier: its frames, its eviction policy and its evictions.
//
// A tier's frames are handed out by the tier itself (tiers/tier.h); this
// class adds what the engine needs around them: when a tier is full, its
// policy names unpinned victims; a clean victim is dropped at once, a dirty
// one is written back to the first lower tier that accepts it
// (write_back.h), and its frame comes free when that tier acknowledged the
// bytes. Many write-backs stay in flight, so the lower tier's queue stays
// deep while the caller goes on; once a load's copy has started
// (RefillReserve), write-backs start early when free space runs low (evict
// ahead) — once an allocation found
// the tier full, and until free space is back at twice the reserve: a
// working set that fits the tier is never evicted ahead of need.
//
// Frames are of each block's own size, so free space can be in pieces: when
// the tier has the bytes for a frame but no free range of that size, the
// policy's order would evict until a hole happens to be large enough (a
// 4 MiB frame among small ones: a hundred victims on average, hundreds at
// worst; catalog_bench BM_Churn). Instead the tier evicts the frames of the
// cheapest window of the arena (the fewest bytes to free, clean ones
// preferred) that makes such a range; it keeps an index of its frames by
// offset for that. Evict-ahead likewise keeps one free range of a default
// block in its reserve, so that a miss of a default block finds one.
//
// The policy is made for the tier's capacity in default blocks; when the
// tier holds more than twice that many (its blocks are smaller), it is made
// again for the blocks it holds (ResizePolicyLocked).
//
// The lowest tier of the chain has no policy and never evicts: it holds
// every block written out; when it is full, demotions into it fail with
// kResourceExhausted.
//
// Threads: thread-safe. The policy mutex is taken on slow paths only, never
// under a block latch; eviction claims a victim by CAS without a latch.
#ifndef STRATA_ENGINE_RESIDENCY_H_
#define STRATA_ENGINE_RESIDENCY_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/parts.h"
#include "engine/policy/policy.h"
#include "engine/wait_table.h"
#include "tiers/tier.h"

namespace strata::internal {

class CopyBatch;
struct CopySlot;
struct TensorState;

class Residency {
 public:
  // The copy a frame is for: its policy key and its slot in this tier.
  struct FrameOwner {
    uint64_t key = 0;
    const CopySlot* slot = nullptr;
    // The copy's tensor: an allocation for it stops waiting once the tensor
    // is being dropped (the drop may hold the frames it waits for).
    const TensorState* ts = nullptr;
  };

  // `policy` null: the lowest tier (no eviction).
  Residency(EngineParts& parts, int pos,
            std::unique_ptr<policy::EvictionPolicy> policy);

  int pos() const { return pos_; }
  bool evicts() const { return policy_ != nullptr; }

  // A frame of at least `bytes`: evicts and waits for write-backs in flight
  // until `deadline`. kResourceExhausted when nothing can be freed (every
  // copy pinned or being moved, or the tiers below are full); the error of
  // the write-backs when they keep failing; kDeadlineExceeded when frames
  // in flight did not come back in time; kFailedPrecondition when closing;
  // kNotFound when `owner.ts` is being dropped.
  // `speculative` (prefetch, readahead): waits while a pin is short of
  // space here, so that loads nobody waits for yet never take the frames a
  // pin evicted for. The frame comes counted in transit (from before the
  // tier handed it out): the loader ends that with TransitEnd once its copy
  // is published or dropped.
  absl::StatusOr<tiers::Frame> Allocate(uint64_t bytes, Deadline deadline,
                                        FrameOwner owner,
                                        bool speculative = false);
  // A frame if one is free now; no eviction, no wait. `speculative`: none
  // while a pin is short of space here. The caller refills the reserve of
  // free frames (RefillReserve) once its copy is on its way. Counted in
  // transit, as Allocate's.
  absl::StatusOr<tiers::Frame> TryAllocate(uint64_t bytes, FrameOwner owner,
                                           bool speculative = false);
  // Keeps a reserve of free frames while the tier is under pressure:
  // starts write-backs (and drops clean copies) ahead of the misses that
  // will need their frames. A loader calls it after starting its copies
  // (`loads` of them), so that the policy's upkeep (draining the pins'
  // access rings, choosing victims) runs while the device works, not
  // before.
  void RefillReserve(size_t loads);
  // A frame now or never (a demotion into this tier falls through to the
  // next one instead of waiting): drops clean victims, starts write-backs
  // of dirty ones for later, and gives up.
  absl::StatusOr<tiers::Frame> AllocateNow(uint64_t bytes, FrameOwner owner);
  // Gives a frame back and wakes whoever waits for space.
  void Free(const tiers::Frame& frame);

  // Policy bookkeeping. Never under a latch. `accessed`: the copy arrived
  // for a pin (a miss: this is the block's access); false for one loaded
  // or placed ahead of use, whose access comes later as a hit.
  void Insert(uint64_t key, bool accessed = true);
  void Erase(uint64_t key);
  void Access(uint64_t key);
  void OnStepBoundary();

  // A frame is held by a load into this tier (Begin) until the copy is
  // published or the load failed (End): a thread that finds nothing to
  // evict waits for such frames instead of failing.
  void TransitBegin() { in_transit_.fetch_add(1, std::memory_order_acq_rel); }
  void TransitEnd();
  // A count in transit that ends with nothing changed (a failed claim or
  // placement, a victim restored): wakes the threads waiting for space
  // (they may have waited for this count) without counting as space come
  // free, so that the thread that undid it does not take its own undo for
  // a reason to look again (it would loop instead of failing). `epoch`: the
  // caller's snapshot of space_epoch_ (or null), moved past this undo
  // unless another thread moved the epoch meanwhile, so that the caller's
  // wait is not woken by its own undo either.
  void TransitUndo(uint64_t* epoch);
  // A write-back of one of this tier's victims finished.
  void VictimWrittenBack(bool ok, const absl::Status& error);
  // Wakes threads waiting for space (Close: they look at the engine again).
  void Interrupt() { NotifySpace(); }

 private:
  struct Victim {
    std::shared_ptr<TensorState> ts;
    uint64_t block = 0;
    bool dirty = false;
  };
  struct EvictResult {
    size_t freed = 0;    // frames free now (clean victims)
    size_t started = 0;  // dirty victims whose write-back is under way
    size_t busy = 0;     // dirty victims whose target copy was being moved
    absl::Status error;  // why nothing could be freed or started
  };

  // A frame of this tier and its owner, in the index by offset.
  struct Placed {
    uint64_t bytes = 0;
    uint64_t key = 0;
    const CopySlot* slot = nullptr;
  };

  absl::StatusOr<tiers::Frame> WhyNoFrame(const EvictResult& evicted,
                                          uint64_t failures_before) const;
  // tier_.Allocate, recording the frame in the index.
  absl::StatusOr<tiers::Frame> Place(uint64_t bytes, FrameOwner owner);
  // Place, for a load: the frame counted in transit from before it is
  // taken. On failure, `epoch` as TransitUndo's.
  absl::StatusOr<tiers::Frame> PlaceForLoad(uint64_t bytes, FrameOwner owner,
                                            uint64_t* epoch);
  // Who evicts: a pin's load that needs a frame now, a speculative load
  // (prefetch, readahead, step plan), or the reserve's refill
  // (EvictAhead). A prefetched copy (a block prefetched for a pin that has
  // not come yet) goes last: a pin takes one when nothing else can go, a
  // speculative load only when no write-back in flight will free a frame,
  // the refill never (ClaimVictims; past its bound on the copies a walk
  // passes over, every walk takes the next).
  enum class For { kNeed, kSpeculative, kReserve };
  EvictResult EvictSome(size_t count, bool clean_only, For why, uint64_t bytes,
                        FrameOwner owner, tiers::Frame* handoff);
  EvictResult EvictSome(size_t count, bool clean_only, For why = For::kNeed) {
    return EvictSome(count, clean_only, why, 0, FrameOwner(), nullptr);
  }
  // Free space holds `bytes` but no free range does: evicts the frames of
  // the cheapest window of the arena that makes one (`started` counts its
  // frames already on their way out). Nothing when no window can be made,
  // or when a free range holds `bytes` after all (space came free since
  // the caller looked).
  EvictResult EvictWindow(uint64_t bytes, For why);
  std::vector<std::pair<uint64_t, Placed>> ChooseWindow(uint64_t bytes, For why,
                                                        size_t* leaving)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(frames_mu_);
  // Drops clean victims and starts the write-backs of dirty ones. With
  // `handoff`, the first clean victim whose frame fits `bytes` is handed to
  // `owner` instead of freed: the thread that evicted for a frame gets it,
  // not whoever allocates first.
  void Evict(std::vector<Victim>& victims, EvictResult& result,
             uint64_t bytes, FrameOwner owner, tiers::Frame* handoff);
  void Evict(std::vector<Victim>& victims, EvictResult& result) {
    Evict(victims, result, 0, FrameOwner(), nullptr);
  }
  absl::StatusOr<tiers::Frame> AllocateLoop(uint64_t bytes, Deadline deadline,
                                            FrameOwner owner, For why);
  std::vector<Victim> ClaimVictims(size_t count, bool clean_only, For why);
  // Claims `key`'s copy as a victim if it is idle. A prefetched copy is
  // refused unless `take_prefetched`, and says so in *passed_prefetched.
  bool TryClaim(uint64_t key, bool take_prefetched, bool clean_only,
                Victim* out, bool* passed_prefetched = nullptr);
  void Restore(const Victim& v);
  void RestoreWord(const Victim& v);
  // One round of RefillReserve: false when it had nothing to do.
  bool EvictAhead();
  // Write-backs of victims in flight at once: max_write_backs_, or half of
  // it while loads into the tier are in flight.
  size_t WriteBackDepth() const;
  void DrainLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(policy_mu_);
  void ResizePolicyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(policy_mu_);
  void NotifySpace();
  // OK while the engine is open and `owner`'s tensor is not being dropped
  // (Close and DropTensor wake the waiters to look).
  absl::Status StillWanted(FrameOwner owner) const;
  bool WaitForSpace(uint64_t seen_epoch, Deadline deadline);
  std::string NoRoomMessage() const;

  EngineParts& parts_;
  const int pos_;
  tiers::Tier& tier_;
  std::mutex policy_mu_;
  std::unique_ptr<policy::EvictionPolicy> policy_ ABSL_GUARDED_BY(policy_mu_);
  // Blocks the policy was made for (its ghosts, aging and targets scale
  // with it); see ResizePolicyLocked.
  size_t policy_capacity_ ABSL_GUARDED_BY(policy_mu_) = 1;

  std::atomic<int64_t> in_transit_{0};       // load frames + victims in flight
  std::atomic<int64_t> demand_waiting_{0};   // pins short of a frame here
  std::atomic<int64_t> victims_in_flight_{0};
  size_t max_write_backs_ = 8;
  uint64_t reserve_bytes_ = 0;  // free bytes evict-ahead keeps
  // An allocation found the tier full since free space was last plentiful:
  // evict-ahead is on.
  std::atomic<bool> pressed_{false};

  // Frames of an evicting tier by offset (every frame Allocate handed out
  // and Free did not take back yet). Taken alone, never with another lock
  // held inside it.
  std::mutex frames_mu_;
  absl::btree_map<uint64_t, Placed> frames_ ABSL_GUARDED_BY(frames_mu_);
  size_t window_cursor_ ABSL_GUARDED_BY(frames_mu_) = 0;

  mutable std::mutex space_mu_;
  std::condition_variable space_cv_;
  // Moves by kSpaceTick when space may have come free (a frame freed, a
  // transit ended) and by kWakeTick when a count in transit was undone:
  // waiters wake on either, a thread deciding to give up looks at the
  // first only (SpaceMoved).
  static constexpr uint64_t kSpaceTick = uint64_t{1} << 32;
  static constexpr uint64_t kWakeTick = 1;
  static bool SpaceMoved(uint64_t before, uint64_t now) {
    return (before >> 32) != (now >> 32);
  }
  std::atomic<uint64_t> space_epoch_{0};
  std::atomic<uint64_t> failures_{0};  // failed write-backs of victims
  absl::Status last_failure_ ABSL_GUARDED_BY(space_mu_);
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_RESIDENCY_H_
