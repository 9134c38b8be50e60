#include "engine/residency.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "engine/block_ops.h"
#include "engine/catalog.h"
#include "engine/chain.h"
#include "engine/copier.h"
#include "engine/lifecycle.h"
#include "engine/stats.h"
#include "engine/write_back.h"
#include "util/status_macros.h"

namespace strata::internal {
namespace {

using S = CopyState;

// A caller stops waiting for write-backs after this many failed while it
// waited: a device that keeps failing must not keep a pin busy until its
// deadline (the errors go to the blocks' tensors all the same).
constexpr uint64_t kMaxFailuresPerAllocation = 4;

}  // namespace

Residency::Residency(EngineParts& parts, int pos,
                     std::unique_ptr<policy::EvictionPolicy> policy)
    : parts_(parts),
      pos_(pos),
      tier_(parts.chain->tier(pos)),
      policy_(std::move(policy)) {
  const uint64_t frames = std::max<uint64_t>(
      tier_.capacity() / parts.options->default_block_bytes, 1);
  // Write-backs in flight at once: deep enough to keep the lower tier busy,
  // shallow enough not to evict a big share of the cache early.
  max_write_backs_ = std::clamp<size_t>(
      frames / 8, 1, std::max<uint32_t>(parts.options->nvme.queue_depth, 1));
  const bool has_lower = pos < parts.chain->lowest();
  reserve_bytes_ = evicts() && has_lower
                       ? max_write_backs_ * parts.options->default_block_bytes
                       : 0;
  policy_capacity_ = frames;  // EngineCore made the policy for as many
}

std::string Residency::NoRoomMessage() const {
  const bool has_lower = pos_ < parts_.chain->lowest();
  const absl::string_view name = Sv(TierName(parts_.chain->kind(pos_)));
  return absl::StrCat(
      "tier ", name, ": every frame (", tier_.capacity(), " bytes, ",
      tier_.used(), " in frames, longest free range ", tier_.largest_free(),
      ") is pinned",
      has_lower ? "" : ", dirty (no lower tier is configured)",
      " or being moved; release pins",
      has_lower ? "" : ", add a lower tier to EngineOptions::tiers",
      " or raise the tier's capacity",
      name == "host"  ? " (EngineOptions::host.capacity_bytes)"
      : name == "gpu" ? " (EngineOptions::gpu.capacity_bytes)"
                      : "");
}

absl::StatusOr<tiers::Frame> Residency::Place(uint64_t bytes, FrameOwner owner) {
  absl::StatusOr<tiers::Frame> frame = tier_.Allocate(bytes);
  if (frame.ok() && evicts()) {
    std::lock_guard lock(frames_mu_);
    frames_[frame->offset] = Placed{frame->bytes, owner.key, owner.slot};
  }
  return frame;
}

absl::StatusOr<tiers::Frame> Residency::PlaceForLoad(uint64_t bytes,
                                                     FrameOwner owner,
                                                     uint64_t* epoch) {
  // Counted in transit from before the tier hands the frame out: a thread
  // that finds no frame while this one holds it uncounted would give up
  // (kResourceExhausted) instead of waiting for the load (a pin failed so
  // while a prefetch took a tier's only frame: gpu_tier_test,
  // APinNeverFailsForAFrameAPrefetchIsTaking).
  in_transit_.fetch_add(1, std::memory_order_acq_rel);
  absl::StatusOr<tiers::Frame> frame = Place(bytes, owner);
  if (!frame.ok()) TransitUndo(epoch);
  return frame;
}

absl::StatusOr<tiers::Frame> Residency::Allocate(uint64_t bytes,
                                                 Deadline deadline,
                                                 FrameOwner owner,
                                                 bool speculative) {
  if (!evicts()) {
    TransitBegin();
    absl::StatusOr<tiers::Frame> frame = AllocateNow(bytes, owner);
    if (!frame.ok()) TransitEnd();
    return frame;
  }
  if (speculative) {
    // Let pins short of space here go first. The epoch is read before the
    // count: a pin that leaves after the count was read bumps it (Allocate
    // below), so this wait cannot miss its leaving (it once slept to the
    // deadline so, while a pin of the same block waited for this load:
    // engine_fault_test, about 1 run in 150).
    for (;;) {
      const uint64_t epoch = space_epoch_.load(std::memory_order_acquire);
      if (demand_waiting_.load(std::memory_order_acquire) == 0) break;
      STRATA_RETURN_IF_ERROR(StillWanted(owner));
      if (!WaitForSpace(epoch, deadline)) {
        return absl::DeadlineExceededError(absl::StrCat(
            "tier ", Sv(TierName(parts_.chain->kind(pos_))),
            ": a prefetch waited for pins short of space until its deadline"));
      }
    }
    return AllocateLoop(bytes, deadline, owner, For::kSpeculative);
  }
  absl::StatusOr<tiers::Frame> frame = PlaceForLoad(bytes, owner, nullptr);
  if (frame.ok()) {
    EvictAhead();
    return frame;
  }
  demand_waiting_.fetch_add(1, std::memory_order_acq_rel);
  frame = AllocateLoop(bytes, deadline, owner, For::kNeed);
  demand_waiting_.fetch_sub(1, std::memory_order_acq_rel);
  NotifySpace();  // speculative allocations waiting on this one
  return frame;
}

absl::StatusOr<tiers::Frame> Residency::AllocateLoop(uint64_t bytes,
                                                     Deadline deadline,
                                                     FrameOwner owner, For why) {
  const uint64_t failures_before = failures_.load(std::memory_order_acquire);
  // Every round gets a frame, frees or starts freeing one, or waits for a
  // frame in transit. Rounds whose freed frame another thread takes at once
  // can repeat for as long as the tier stays contended, so they are bounded
  // by the caller's deadline, not by a count: a count of 100,000 ran out
  // under a loaded 2-core VM (engine_stress_test CreateAndDropWhileOthersPin)
  // and failed pins that would have got a frame a moment later.
  for (uint32_t round = 0;; ++round) {
    if (round % 256 == 255 && Clock::now() >= deadline) break;
    uint64_t epoch = space_epoch_.load(std::memory_order_acquire);
    absl::StatusOr<tiers::Frame> frame = PlaceForLoad(bytes, owner, &epoch);
    if (frame.ok()) {
      EvictAhead();
      return frame;
    }
    if (!absl::IsResourceExhausted(frame.status())) return frame;
    pressed_.store(true, std::memory_order_relaxed);
    STRATA_RETURN_IF_ERROR(StillWanted(owner));
    if (failures_.load(std::memory_order_acquire) - failures_before >=
        kMaxFailuresPerAllocation) {
      return WhyNoFrame({}, failures_before);
    }
    const int64_t in_flight = victims_in_flight_.load(std::memory_order_acquire);
    const size_t depth = WriteBackDepth();
    if (in_flight >= static_cast<int64_t>(depth)) {
      if (!WaitForSpace(epoch, deadline)) break;
      continue;
    }
    // A frame came free since this round looked: take it rather than
    // evict another (every Free moves the epoch, so this repeats only
    // while other threads free frames).
    if (SpaceMoved(epoch, space_epoch_.load(std::memory_order_acquire))) continue;
    // The bytes are free but in pieces: make a range where it is cheapest,
    // rather than evicting by the policy's order until one happens to form.
    EvictResult evicted;
    if (tier_.capacity() - tier_.used() >= bytes) evicted = EvictWindow(bytes, why);
    tiers::Frame handoff;
    if (evicted.freed == 0 && evicted.started == 0) {
      evicted = EvictSome(depth - in_flight, false, why, bytes, owner,
                          &handoff);
    }
    if (handoff.valid()) return handoff;  // counted in transit by its claim
    if (evicted.freed > 0) continue;
    if (evicted.started == 0 && evicted.busy > 0) {
      // A victim's copy below is in the middle of its own move (it ends
      // within a transfer): look again shortly.
      WaitForSpace(epoch, std::min(deadline, Clock::now() + std::chrono::milliseconds(1)));
      continue;
    }
    if (evicted.started == 0 && in_transit_.load(std::memory_order_acquire) <= 0) {
      // A transit that ended after the victims were sought bumped the
      // epoch first (TransitEnd): its frame may be free or evictable now.
      if (SpaceMoved(epoch, space_epoch_.load(std::memory_order_acquire))) continue;
      return WhyNoFrame(evicted, failures_before);
    }
    if (!WaitForSpace(epoch, deadline)) break;
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "tier ", Sv(TierName(parts_.chain->kind(pos_))), ": no frame came free within ",
      absl::FormatDuration(parts_.options->pin_wait_timeout),
      " while blocks were being moved or other threads kept taking the frames "
      "freed; the tier below may be stalled, or raise the tier's capacity"));
}

absl::StatusOr<tiers::Frame> Residency::WhyNoFrame(
    const EvictResult& evicted, uint64_t failures_before) const {
  if (failures_.load(std::memory_order_acquire) != failures_before) {
    absl::Status last;
    {
      std::lock_guard lock(space_mu_);
      last = last_failure_;
    }
    return absl::Status(
        last.code(),
        absl::StrCat("tier ", Sv(TierName(parts_.chain->kind(pos_))),
                     ": no frame could be freed because writing dirty blocks "
                     "down keeps failing (the blocks stay dirty, their "
                     "tensors' next Flush reports it): ",
                     last.message()));
  }
  if (!evicted.error.ok()) return evicted.error;
  return absl::ResourceExhaustedError(NoRoomMessage());
}

absl::StatusOr<tiers::Frame> Residency::TryAllocate(uint64_t bytes,
                                                    FrameOwner owner,
                                                    bool speculative) {
  if (speculative && demand_waiting_.load(std::memory_order_acquire) > 0) {
    return absl::ResourceExhaustedError("a pin is short of space here");
  }
  return PlaceForLoad(bytes, owner, nullptr);
}

absl::StatusOr<tiers::Frame> Residency::AllocateNow(uint64_t bytes,
                                                    FrameOwner owner) {
  absl::StatusOr<tiers::Frame> frame = Place(bytes, owner);
  if (frame.ok() || !evicts() || !absl::IsResourceExhausted(frame.status())) {
    return frame;
  }
  pressed_.store(true, std::memory_order_relaxed);
  // Clean copies go at no cost; dirty ones start their way down, for a
  // later demotion to find room.
  EvictResult evicted = EvictSome(std::max<size_t>(max_write_backs_ / 2, 1), false);
  if (evicted.freed > 0) {
    absl::StatusOr<tiers::Frame> again = Place(bytes, owner);
    if (again.ok()) return again;
  }
  return frame;
}

void Residency::Free(const tiers::Frame& frame) {
  if (evicts()) {
    std::lock_guard lock(frames_mu_);
    frames_.erase(frame.offset);
  }
  tier_.Free(frame);
  NotifySpace();
}

Residency::EvictResult Residency::EvictSome(size_t count, bool clean_only,
                                            For why, uint64_t bytes,
                                            FrameOwner owner,
                                            tiers::Frame* handoff) {
  EvictResult result;
  std::vector<Victim> victims = ClaimVictims(count, clean_only, why);
  if (victims.empty()) {
    result.error = absl::ResourceExhaustedError(NoRoomMessage());
    return result;
  }
  Evict(victims, result, bytes, owner, handoff);
  if (result.freed == 0 && result.started == 0 && !clean_only &&
      absl::IsResourceExhausted(result.error)) {
    // The tiers below are full: clean copies can still go, at no cost.
    EvictResult clean = EvictSome(1, true, why);
    result.freed = clean.freed;
  }
  return result;
}

std::vector<std::pair<uint64_t, Residency::Placed>> Residency::ChooseWindow(
    uint64_t bytes, For why, size_t* leaving) {
  // A window is a run of frames, each unpinned and resident (a victim) or
  // already on its way out, with the free gaps between them; any other
  // frame (pinned, loading) ends a run. Its cost is the bytes it evicts,
  // dirty ones twice (they must be written down first), prefetched ones
  // three times (their load is wasted and another follows); only a pin
  // short of a frame takes them (they end a run for the others). A sliding window
  // over each run finds the cheapest one whose span holds `bytes`. At most
  // kMaxScan frames are looked at per call, going round the arena from one
  // call to the next, so a tier of a million small frames stays cheap.
  // Frames of a tier never overlap (arena or file extents); were they to,
  // a window would only be computed wrong, and evicting stays safe.
  constexpr size_t kMaxScan = 4096;
  struct Entry {
    uint64_t offset, end;
    uint64_t cost;  // kBarrier: cannot be freed
    bool leaving;
  };
  constexpr uint64_t kBarrier = ~uint64_t{0};
  if (frames_.empty()) return {};
  auto it = frames_.size() <= kMaxScan ? frames_.begin()
                                       : frames_.lower_bound(window_cursor_);
  if (it == frames_.end()) it = frames_.begin();
  const uint64_t before =
      it == frames_.begin() ? 0 : std::prev(it)->first + std::prev(it)->second.bytes;
  std::vector<Entry> entries;
  std::vector<decltype(it)> where;
  entries.reserve(std::min(kMaxScan, frames_.size()));
  const bool lowest = pos_ == parts_.chain->lowest();
  for (; it != frames_.end() && entries.size() < kMaxScan; ++it) {
    const Placed& p = it->second;
    const S state = Load(p.slot->word, std::memory_order_relaxed);
    uint64_t cost = kBarrier;
    bool out = false;
    if (state.state() == S::kEvicting) {
      cost = 0;
      out = true;
    } else if (state.idle() && !(state.dirty() && lowest) &&
               !(state.prefetched() && why != For::kNeed)) {
      cost = state.prefetched() ? 3 * p.bytes
             : state.dirty()    ? 2 * p.bytes
                                : p.bytes;
    }
    entries.push_back({it->first, it->first + p.bytes, cost, out});
    where.push_back(it);
  }
  const uint64_t after = it == frames_.end() ? tier_.capacity() : it->first;
  window_cursor_ = it == frames_.end() ? 0 : it->first;

  auto left = [&](size_t l) { return l == 0 ? before : entries[l - 1].end; };
  auto right = [&](size_t r) {
    return r + 1 < entries.size() ? entries[r + 1].offset : after;
  };
  *leaving = 0;
  // Space came free since the caller looked: a range holds the bytes
  // already, and evicting would only lose a copy.
  for (size_t i = 0; i <= entries.size(); ++i) {
    const uint64_t gap_start = i == 0 ? before : entries[i - 1].end;
    const uint64_t gap_end = i == entries.size() ? after : entries[i].offset;
    if (gap_end >= gap_start + bytes) return {};
  }
  uint64_t best = kBarrier;
  size_t best_l = 0, best_r = 0;
  size_t l = 0;
  uint64_t cost = 0;
  for (size_t r = 0; r < entries.size(); ++r) {
    if (entries[r].cost == kBarrier) {
      l = r + 1;
      cost = 0;
      continue;
    }
    cost += entries[r].cost;
    while (l <= r && right(r) >= left(l) + bytes) {
      if (cost < best) {
        best = cost;
        best_l = l;
        best_r = r;
      }
      cost -= entries[l].cost;
      ++l;
    }
  }
  std::vector<std::pair<uint64_t, Placed>> chosen;
  if (best == kBarrier) return chosen;
  for (size_t i = best_l; i <= best_r; ++i) {
    if (entries[i].leaving) {
      ++*leaving;
    } else {
      chosen.emplace_back(entries[i].offset, where[i]->second);
    }
  }
  return chosen;
}

Residency::EvictResult Residency::EvictWindow(uint64_t bytes, For why) {
  EvictResult result;
  size_t leaving = 0;
  std::vector<std::pair<uint64_t, Placed>> chosen;
  {
    std::lock_guard lock(frames_mu_);
    chosen = ChooseWindow(bytes, why, &leaving);
  }
  // Frames of the window already on their way out come free by themselves:
  // the caller waits for them as for write-backs it started.
  result.started = leaving;
  std::vector<Victim> victims;
  for (const auto& [offset, placed] : chosen) {
    Victim v;
    // A copy pinned or moved since the scan stays (the window will not
    // form: the next call looks again).
    if (!TryClaim(placed.key, /*take_prefetched=*/why == For::kNeed,
                  /*clean_only=*/false, &v)) {
      continue;
    }
    const tiers::Frame& frame = v.ts->copy(pos_, v.block).frame;
    if (!frame.valid() || frame.offset != offset) {
      RestoreWord(v);  // the copy lives in another frame now
      TransitUndo(nullptr);
      continue;
    }
    victims.push_back(std::move(v));
  }
  if (victims.empty()) return result;
  {
    std::lock_guard lock(policy_mu_);
    for (const Victim& v : victims) policy_->Erase(v.ts->Key(v.block));
  }
  Evict(victims, result);
  return result;
}

void Residency::Evict(std::vector<Victim>& victims, EvictResult& result,
                      uint64_t bytes, FrameOwner owner, tiers::Frame* handoff) {
  TierCounters& counters = parts_.stats->tier(pos_);
  {
    CopyBatch batch(*parts_.chain);
    // A clean victim's frame goes to the caller's load, or is freed.
    auto free_clean = [&](const Victim& v) {
      if (handoff != nullptr && !handoff->valid() &&
          TakeClaimedFrame(parts_, *v.ts, v.block, pos_, bytes, handoff)) {
        // The claim's count in transit goes with the frame to the load.
        std::lock_guard lock(frames_mu_);
        frames_[handoff->offset] = Placed{handoff->bytes, owner.key, owner.slot};
      } else {
        DropClaimed(parts_, *v.ts, v.block, pos_);
        TransitEnd();
      }
      counters.evictions.fetch_add(1, std::memory_order_relaxed);
      ++result.freed;
    };
    for (const Victim& v : victims) {
      if (!v.dirty) {
        free_clean(v);
        continue;
      }
      // The claim's count in transit ends when the write-back does
      // (VictimWrittenBack).
      victims_in_flight_.fetch_add(1, std::memory_order_acq_rel);
      absl::Status s = parts_.write_backs->StartEviction(v.ts, v.block, pos_, batch);
      if (s.ok()) {
        ++result.started;
        continue;
      }
      victims_in_flight_.fetch_sub(1, std::memory_order_acq_rel);
      if (WriteBacks::NoLongerDirty(s)) {
        // A write pin took its dirty mark since the claim: it is a stale
        // copy now, freed like any clean one.
        free_clean(v);
        continue;
      }
      Restore(v);  // back in the policy before the count ends
      TransitUndo(nullptr);
      if (absl::IsAborted(s)) {  // the copy below is busy: try again soon
        ++result.busy;
      } else if (result.error.ok()) {
        result.error = s;
      }
    }
  }  // the batch is submitted here
}

std::vector<Residency::Victim> Residency::ClaimVictims(size_t count,
                                                       bool clean_only,
                                                       For why) {
  std::vector<Victim> victims;
  std::lock_guard lock(policy_mu_);
  DrainLocked();
  // Blocks prefetched for a pin that has not come yet are passed over, up
  // to kPrefetchedPassedOver of them a walk (readahead's largest window):
  // past that the walk takes them too. Unbounded, a tier full of prefetched
  // copies (a Prefetch of a whole tensor over another) walked every one of
  // them for each eviction: quadratic (gpu_bench BM_GpuPromote at 1 MiB
  // blocks, H200: 0.95x raw at 256 blocks, 0.37x at 1024). A second pass
  // takes them when nothing else was found: for a pin short of a frame;
  // for a speculative load only when no write-back is in flight (it waits
  // for that frame instead: a prefetch evicted the gather's first blocks
  // for its last, EngineApiTest.PrefetchBlocksMakesAGatherResident under
  // load); never for the reserve's refill, which would evict a block about
  // to be read to keep a frame free for a miss that may never come
  // (EngineApiTest.RefillingTheReserveNeverEvictsPrefetchedBlocks). Every
  // walk keeps the bound: a tier full of prefetched copies must not be
  // walked end to end for each victim.
  constexpr int kPrefetchedPassedOver = 32;
  const bool second_pass =
      why == For::kNeed ||
      (why == For::kSpeculative &&
       victims_in_flight_.load(std::memory_order_acquire) == 0);
  const int passes = second_pass ? 2 : 1;
  for (int pass = 0; pass < passes && victims.empty(); ++pass) {
    while (victims.size() < count) {
      Victim v;
      int passed_over = 0;
      std::optional<uint64_t> key = policy_->Evict([&](uint64_t k) {
        const bool take_prefetched = pass == 1 || passed_over >= kPrefetchedPassedOver;
        bool prefetched = false;
        if (TryClaim(k, take_prefetched, clean_only, &v, &prefetched)) return true;
        passed_over += prefetched;
        return false;
      });
      if (!key) break;
      victims.push_back(std::move(v));
      // Batches only keep the write-back queue deep: a clean victim frees
      // its frame at once, so stop there.
      if (!victims.back().dirty) break;
    }
  }
  return victims;
}

bool Residency::TryClaim(uint64_t key, bool take_prefetched, bool clean_only,
                         Victim* out, bool* passed_prefetched) {
  std::shared_ptr<TensorState> ts =
      parts_.catalog->Find(static_cast<uint32_t>(key >> 32));
  if (ts == nullptr) return false;
  const uint64_t block = key & 0xFFFFFFFFu;
  if (block >= ts->num_blocks) return false;
  std::atomic<uint64_t>& word = ts->copy(pos_, block).word;
  uint64_t w = word.load(std::memory_order_acquire);
  const S state(w);
  if (state.prefetched() && !take_prefetched) {
    if (passed_prefetched != nullptr) *passed_prefetched = true;
    return false;
  }
  if (state.dirty() && (clean_only || pos_ == parts_.chain->lowest())) {
    return false;
  }
  const uint64_t claimed = state.Claimed();
  if (claimed == 0) return false;
  // A claimed copy's frame is counted in transit from before the claim
  // until it is freed, handed to a load or written down: an allocation
  // that finds no victim meanwhile waits for it rather than failing
  // (as PlaceForLoad's frames).
  in_transit_.fetch_add(1, std::memory_order_acq_rel);
  if (!word.compare_exchange_strong(w, claimed, std::memory_order_acq_rel)) {
    TransitUndo(nullptr);
    return false;
  }
  *out = Victim{std::move(ts), block, S(claimed).dirty()};
  return true;
}

void Residency::Restore(const Victim& v) {
  RestoreWord(v);
  Insert(v.ts->Key(v.block));
}

void Residency::RestoreWord(const Victim& v) {
  // Invariant 4: a copy no lower tier took stays dirty and resident.
  std::atomic<uint64_t>& word = v.ts->copy(pos_, v.block).word;
  uint64_t w = word.load(std::memory_order_acquire);
  while (!word.compare_exchange_weak(w, S(w).With(S::kResident) & ~S::kWaiters,
                                     std::memory_order_acq_rel)) {
  }
  if (S(w).has_waiters()) parts_.waits->Wake(word);
}

bool Residency::EvictAhead() {
  // Keep a reserve of free space, refilled by write-backs started before
  // anyone waits for them: a thread that misses then finds a frame at once
  // instead of waiting for the device. Only while the tier is under
  // pressure: evicting ahead a working set that fits would cost it 1/8 of
  // the tier (catalog_bench BM_SmallFit: 74% hits instead of 100% on a set
  // filling 90% of it).
  if (reserve_bytes_ == 0) return false;
  const uint64_t free = tier_.capacity() - tier_.used();
  if (free >= 2 * reserve_bytes_) pressed_.store(false, std::memory_order_relaxed);
  if (!pressed_.load(std::memory_order_relaxed)) return false;
  // A reserve in pieces does not serve a miss of a default block: the
  // reserve holds one free range of that size too, made where it costs
  // least (catalog_bench BM_Churn: without it, a quarter of the times the
  // host had 4x the largest block free, no range held one).
  const uint64_t hole = parts_.options->default_block_bytes;
  const bool short_of_space = free < reserve_bytes_;
  bool in_pieces = !short_of_space && free >= hole && tier_.largest_free() < hole;
  // Read again after the largest range: a frame taken in between made a
  // full tier look like one in pieces.
  if (in_pieces) in_pieces = tier_.capacity() - tier_.used() >= hole;
  if (!short_of_space && !in_pieces) return false;
  const int64_t in_flight = victims_in_flight_.load(std::memory_order_acquire);
  const size_t depth = WriteBackDepth();
  if (in_flight >= static_cast<int64_t>(depth)) return false;
  // Speculative: failed write-backs started here park their errors on their
  // tensors, for the next Flush.
  const EvictResult evicted =
      short_of_space
          ? EvictSome(depth - static_cast<size_t>(in_flight), false, For::kReserve)
          : EvictWindow(hole, For::kReserve);
  return evicted.freed > 0 || evicted.started > 0;
}

size_t Residency::WriteBackDepth() const {
  // While loads into this tier are in flight, the device is kept busy by
  // reads as well as writes, and half as many write-backs keep it busy: a
  // write-back's frame is a frame the cache does not hold. On a recorded
  // loop 4x the host tier (`strata bench train --scale 4`) the engine kept
  // ~24 of 32 blocks from one step to the next instead of ~20 (5% fewer
  // bytes each way); a stream of overwrites, which loads nothing, still
  // gets the full depth (nvme_bench BM_NvmeWriteBack, the same either way).
  const int64_t loads = in_transit_.load(std::memory_order_acquire) -
                        victims_in_flight_.load(std::memory_order_acquire);
  return loads > 0 ? std::max<size_t>(max_write_backs_ / 2, 1) : max_write_backs_;
}

void Residency::RefillReserve(size_t loads) {
  // One victim a load keeps the free space where it was (a clean victim is
  // one frame; dirty ones go down in batches): the reserve is refilled as
  // fast as loads use it, and never grows past it.
  for (size_t i = 0; i < std::max<size_t>(loads, 1); ++i) {
    if (!EvictAhead()) return;
  }
}

void Residency::Insert(uint64_t key, bool accessed) {
  if (!evicts()) return;
  std::lock_guard lock(policy_mu_);
  DrainLocked();
  if (accessed) {
    policy_->Insert(key);
  } else {
    policy_->InsertWithoutAccess(key);
  }
  if (policy_->size() > 2 * policy_capacity_) ResizePolicyLocked();
}

void Residency::ResizePolicyLocked() {
  // The policy was made for the tier's capacity in default blocks, and the
  // tier holds more than twice that many: its blocks are smaller (4 KiB
  // rows of an embedding table under 2 MiB default blocks). Sized for 1/64
  // of what it tracks, an LFU halves its counts every few hundred requests
  // and an ARC's ghosts forget almost everything: the policy would no
  // longer rank what it holds. Make it again, for the blocks the tier holds
  // when full at the blocks' present size, with the resident keys inserted
  // in the old policy's eviction order (recency survives; frequency counts
  // and ghosts start over, once per doubling, while the tier fills).
  const uint64_t used = tier_.used();
  const size_t resident = policy_->size();
  if (used == 0) return;
  const size_t capacity = std::max<size_t>(
      2 * policy_capacity_,
      static_cast<size_t>(static_cast<double>(tier_.capacity()) * resident / used));
  absl::StatusOr<std::unique_ptr<policy::EvictionPolicy>> made =
      policy::MakePolicy(parts_.options->policy, capacity);
  if (!made.ok()) return;  // the name was valid at Open: cannot happen
  std::vector<uint64_t> keys;
  keys.reserve(resident);
  while (std::optional<uint64_t> key = policy_->Evict([](uint64_t) { return true; })) {
    keys.push_back(*key);
  }
  for (uint64_t key : keys) (*made)->Insert(key);
  policy_ = *std::move(made);
  policy_capacity_ = capacity;
}

void Residency::Erase(uint64_t key) {
  if (!evicts()) return;
  std::lock_guard lock(policy_mu_);
  policy_->Erase(key);
}

void Residency::Access(uint64_t key) {
  if (!evicts()) return;
  std::lock_guard lock(policy_mu_);
  policy_->Access(key);
}

void Residency::OnStepBoundary() {
  if (!evicts()) return;
  std::lock_guard lock(policy_mu_);
  DrainLocked();
  policy_->OnStepBoundary();
}

void Residency::DrainLocked() {
  if (!parts_.chain->pinnable(pos_)) return;  // no rings: no hot path here
  parts_.stats->ForEachThread([this](ThreadState& t) {
    t.rings[pos_]->Drain([this](uint64_t key) { policy_->Access(key); });
  });
}

void Residency::TransitEnd() {
  // The epoch moves before the count: a thread that saw the count at zero
  // also sees the epoch moved, and looks again rather than giving up.
  space_epoch_.fetch_add(kSpaceTick, std::memory_order_acq_rel);
  in_transit_.fetch_sub(1, std::memory_order_acq_rel);
  NotifySpace();
}

void Residency::TransitUndo(uint64_t* epoch) {
  {
    std::lock_guard lock(space_mu_);
    const uint64_t before = space_epoch_.fetch_add(kWakeTick, std::memory_order_acq_rel);
    in_transit_.fetch_sub(1, std::memory_order_acq_rel);
    // The caller's own undo does not wake the caller: its snapshot moves
    // along, unless another thread moved the epoch meanwhile.
    if (epoch != nullptr && *epoch == before) *epoch = before + kWakeTick;
  }
  space_cv_.notify_all();
}

void Residency::VictimWrittenBack(bool ok, const absl::Status& error) {
  if (!ok) {
    std::lock_guard lock(space_mu_);
    last_failure_ = error;
    failures_.fetch_add(1, std::memory_order_acq_rel);
  }
  victims_in_flight_.fetch_sub(1, std::memory_order_acq_rel);
  TransitEnd();
}

void Residency::NotifySpace() {
  std::lock_guard lock(space_mu_);
  space_epoch_.fetch_add(kSpaceTick, std::memory_order_acq_rel);
  space_cv_.notify_all();
}

absl::Status Residency::StillWanted(FrameOwner owner) const {
  if (owner.ts != nullptr) return Interrupted(parts_, *owner.ts);
  return parts_.life->CheckOpen();
}

bool Residency::WaitForSpace(uint64_t seen_epoch, Deadline deadline) {
  std::unique_lock lock(space_mu_);
  return space_cv_.wait_until(lock, deadline, [&] {
    return space_epoch_.load(std::memory_order_acquire) != seen_epoch ||
           parts_.life->closing();
  });
}

}  // namespace strata::internal
