#include "engine/mover.h"

#include <algorithm>
#include <pthread.h>

#include "absl/strings/str_cat.h"
#include "engine/catalog.h"
#include "engine/chain.h"
#include "engine/copier.h"
#include "engine/lifecycle.h"
#include "engine/loader.h"
#include "engine/prefetch_state.h"
#include "engine/residency.h"

namespace strata::internal {

Mover::Mover(EngineParts& parts) : parts_(parts) {
  thread_ = std::thread([this] { Loop(); });
}

void Mover::Prefetch(std::shared_ptr<TensorState> ts, uint64_t begin,
                     uint64_t end, int pos,
                     std::shared_ptr<PrefetchState> prefetch) {
  QueueRange(std::move(ts), begin, end, pos, std::move(prefetch), Trail::kNone);
}

void Mover::QueueRange(std::shared_ptr<TensorState> ts, uint64_t begin,
                       uint64_t end, int pos,
                       std::shared_ptr<PrefetchState> prefetch, Trail trail) {
  Job job;
  job.prefetch = std::move(prefetch);
  job.trail = trail;
  for (uint64_t b = begin; b < end; ++b) {
    job.entries.push_back({ts, ts->Key(b), pos});
  }
  MarkResident(job);
  Enqueue(std::move(job));
}

bool Mover::Passed(const TensorState& ts, uint64_t block, Trail trail) {
  const uint64_t last = ts.info->last_sequential.load(std::memory_order_relaxed);
  switch (trail) {
    case Trail::kNone:
      return false;
    case Trail::kUp:
      return last != TensorInfo::kNoReadahead && block <= last;
    case Trail::kDown:
      return block >= last;
  }
  return false;
}

void Mover::PrefetchBlocks(std::shared_ptr<TensorState> ts,
                           std::span<const uint64_t> blocks, int pos,
                           std::shared_ptr<PrefetchState> prefetch) {
  Job job;
  job.prefetch = std::move(prefetch);
  job.entries.reserve(blocks.size());
  for (uint64_t b : blocks) job.entries.push_back({ts, ts->Key(b), pos});
  MarkResident(job);
  Enqueue(std::move(job));
}

void Mover::PrefetchPlan(std::vector<PlanEntry> entries) {
  Job job;
  for (const PlanEntry& e : entries) job.entries.push_back({nullptr, e.key, e.pos});
  Enqueue(std::move(job));
}

void Mover::Enqueue(Job job) {
  if (job.entries.empty()) return;
  {
    std::lock_guard lock(mu_);
    if (!stop_) {
      jobs_.push_back(std::move(job));
      cv_.notify_all();
      return;
    }
  }
  for (size_t i = 0; i < job.entries.size() && job.prefetch; ++i) {
    job.prefetch->Done(Lifecycle::ClosedError());
  }
}

void Mover::Loop() {
  pthread_setname_np(pthread_self(), "strata-mover");
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stop_ || (!paused_ && !jobs_.empty()); });
      if (stop_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
      running_ = true;
    }
    Run(job);
    std::lock_guard lock(mu_);
    running_ = false;
    cv_.notify_all();
  }
}

void Mover::Pause() {
  std::unique_lock lock(mu_);
  paused_ = true;
  cv_.wait(lock, [this] { return !running_; });
}

bool Mover::WaitIdle(Deadline deadline) {
  std::unique_lock lock(mu_);
  return cv_.wait_until(lock, deadline,
                        [this] { return stop_ || (jobs_.empty() && !running_); });
}

void Mover::Resume() {
  std::lock_guard lock(mu_);
  paused_ = false;
  cv_.notify_all();
}

void Mover::MarkResident(const Job& job) {
  // In the caller's thread, at the call: marked later, by the mover, a
  // copy the caller pinned meanwhile would stay marked though used (so
  // readahead and step plans, whose jobs trail the reader, mark nothing:
  // written blocks their stale windows marked stayed in an 8-frame tier,
  // EngineFaultMiscTest.ReadaheadFaultsReachTheDemandPin).
  for (const Entry& e : job.entries) {
    const uint64_t block = e.key & 0xFFFFFFFFu;
    if (e.ts == nullptr || e.ts->dropped() || block >= e.ts->num_blocks) continue;
    std::atomic<uint64_t>& word = e.ts->copy(e.pos, block).word;
    uint64_t w = word.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t marked = CopyState(w).MarkedPrefetched();
      if (marked == 0 ||
          word.compare_exchange_weak(w, marked, std::memory_order_acq_rel)) {
        break;
      }
    }
  }
}

Mover::Outcome Mover::StartOne(Job& job, Entry& e, Deadline deadline,
                               CopyBatch& batch) {
  auto finish = [&job](const absl::Status& s) {
    if (job.prefetch) job.prefetch->Done(s);
    return Outcome::kFinished;
  };
  if (e.ts == nullptr) e.ts = parts_.catalog->Find(static_cast<uint32_t>(e.key >> 32));
  const uint64_t block = e.key & 0xFFFFFFFFu;
  if (parts_.life->closing()) return finish(Lifecycle::ClosedError());
  if (e.ts == nullptr || e.ts->dropped() || block >= e.ts->num_blocks) {
    return finish(absl::NotFoundError("prefetch of a dropped tensor: cancelled"));
  }
  if (Passed(*e.ts, block, job.trail)) return finish(absl::OkStatus());
  std::atomic<uint64_t>& word = e.ts->copy(e.pos, block).word;
  uint64_t w = word.load(std::memory_order_acquire);
  if (CopyState(w).state() == CopyState::kEvicting) return Outcome::kLeaving;
  const uint64_t loading = CopyState(w).Loading();
  if (loading == 0 ||
      !word.compare_exchange_strong(w, loading, std::memory_order_acq_rel)) {
    // Already there or on its way; or changed since it was read (the next
    // look sees what it became).
    if (CopyState(w).state() == CopyState::kEvicting) return Outcome::kLeaving;
    if (CopyState(w).state() == CopyState::kAbsent) return Outcome::kLeaving;
    return finish(absl::OkStatus());
  }
  parts_.loader->Start(e.ts, block, e.pos, Loader::Want::kNone,
                       /*speculative=*/true, job.prefetch, deadline, &batch);
  return Outcome::kStarted;
}

void Mover::Run(Job& job) {
  const Deadline deadline =
      Clock::now() + absl::ToChronoNanoseconds(parts_.options->pin_wait_timeout);
  CopyBatch batch(*parts_.chain);
  std::vector<size_t> started(parts_.chain->size());  // loads, by tier
  std::vector<Entry*> leaving;
  uint64_t submitted = 0;
  for (Entry& e : job.entries) {
    const Outcome outcome = StartOne(job, e, deadline, batch);
    if (outcome == Outcome::kLeaving) leaving.push_back(&e);
    if (outcome != Outcome::kStarted) continue;
    ++started[e.pos];
    // The first load goes at once, then groups of kSubmitGroup: the device
    // starts while the rest are set up (a frame, a source each), and a
    // submission still carries many small reads.
    if (batch.pending() >= std::min<uint32_t>(submitted == 0 ? 1 : kSubmitGroup,
                                              parts_.options->nvme.queue_depth)) {
      submitted += batch.pending();
      batch.Submit();
    }
  }
  batch.Submit();
  // Copies that were on their way out when their turn came (evicted, their
  // write-back in flight) are loaded again once they are gone: a Prefetch
  // is done when its blocks are there (one skipped so was missed:
  // EnginePrefetchTest.PrefetchWaitsOutABlockBeingEvicted). Waiting is
  // bounded by the write-back, and by the job's deadline when the tier
  // below stalls.
  for (Entry* e : leaving) {
    for (;;) {
      std::atomic<uint64_t>& word = e->ts->copy(e->pos, e->key & 0xFFFFFFFFu).word;
      const uint64_t w = word.load(std::memory_order_acquire);
      if (Clock::now() >= deadline ||
          (CopyState(w).state() == CopyState::kEvicting &&
           !parts_.waits->WaitForChange(word, w, deadline))) {
        if (job.prefetch) {
          job.prefetch->Done(absl::DeadlineExceededError(absl::StrCat(
              "prefetch: a block was still being written to the tier below after ",
              absl::FormatDuration(parts_.options->pin_wait_timeout),
              "; the tier below may be stalled")));
        }
        break;
      }
      const Outcome outcome = StartOne(job, *e, deadline, batch);
      if (outcome == Outcome::kLeaving) continue;
      if (outcome == Outcome::kStarted) ++started[e->pos];
      batch.Submit();
      break;
    }
  }
  // The loads are on their way; making room for the next ones (the
  // policy's upkeep, write-backs) overlaps them.
  for (int pos = 0; pos < static_cast<int>(started.size()); ++pos) {
    if (started[pos] > 0) parts_.tier(pos).RefillReserve(started[pos]);
  }
}

void Mover::Stop() {
  std::deque<Job> left;
  {
    std::lock_guard lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(mu_);
    left.swap(jobs_);
  }
  for (Job& job : left) {
    for (size_t i = 0; i < job.entries.size() && job.prefetch; ++i) {
      job.prefetch->Done(Lifecycle::ClosedError());
    }
  }
}

// ---------------------------------------------------------------------------
// Sequential readahead

uint64_t Mover::Window(int pos) const {
  const uint64_t frames = std::max<uint64_t>(
      parts_.chain->tier(pos).capacity() / parts_.options->default_block_bytes, 1);
  const int option = parts_.options->readahead_blocks;
  // Never more than half the tier: a window as large as the tier can only
  // evict the block the reader holds or has just released (a tier of one
  // frame then loaded blocks twice, and pins found its frame taken by the
  // speculative load), so a tier of one frame reads nothing ahead.
  const uint64_t automatic = std::clamp<uint64_t>(frames / 8, 1, 32);
  return std::min<uint64_t>(option >= 0 ? option : automatic, frames / 2);
}

void Mover::OnDemandMiss(TensorState& ts, uint64_t block, int pos) {
  const uint64_t window = Window(pos);
  if (window == 0) return;
  TensorInfo& info = *ts.info;
  const uint64_t previous = info.last_sequential.exchange(block);
  if (previous + 1 == block) {
    info.readahead_from.store(TensorInfo::kNoReadahead);
    const uint64_t to = info.readahead_to.load();
    if (to > block + 1) return;  // a window is already on its way
    ExtendReadahead(ts, block + 1, to, window, pos);
  } else if (block + 1 == previous) {
    info.readahead_to.store(0);
    const uint64_t from = info.readahead_from.load();
    if (from < block) return;  // a window is already on its way
    ExtendReadaheadDown(ts, block, from, window, pos);
  } else {
    info.readahead_to.store(0);
    info.readahead_from.store(TensorInfo::kNoReadahead);
  }
}

void Mover::OnPrefetchedHit(TensorState& ts, uint64_t block, int pos) {
  const uint64_t window = Window(pos);
  TensorInfo& info = *ts.info;
  info.last_sequential.store(block);
  if (window == 0) return;
  // Slide on when the reader is half a window from the end of it.
  const uint64_t slide = std::max<uint64_t>(window / 2, 1);
  const uint64_t from = info.readahead_from.load();
  if (from != TensorInfo::kNoReadahead) {
    if (from == 0 || block > from + window / 2) return;
    ExtendReadaheadDown(ts, from, from, slide, pos);
    return;
  }
  const uint64_t to = info.readahead_to.load();
  if (to == 0 || to >= ts.num_blocks) return;
  if (block + window / 2 + 1 < to) return;
  ExtendReadahead(ts, to, to, slide, pos);
}

void Mover::ExtendReadahead(TensorState& ts, uint64_t from,
                            uint64_t expected_to, uint64_t count, int pos) {
  const uint64_t end = std::min(ts.num_blocks, from + count);
  if (from >= end) return;
  // One thread extends a window at a time; others find it moved on.
  if (!ts.info->readahead_to.compare_exchange_strong(expected_to, end)) return;
  std::shared_ptr<TensorState> owner = parts_.catalog->Find(ts.id);
  if (owner == nullptr) return;  // dropped meanwhile
  QueueRange(std::move(owner), from, end, pos, nullptr, Trail::kUp);
}

void Mover::ExtendReadaheadDown(TensorState& ts, uint64_t to,
                                uint64_t expected_from, uint64_t count,
                                int pos) {
  const uint64_t begin = to > count ? to - count : 0;
  if (begin >= to) return;
  if (!ts.info->readahead_from.compare_exchange_strong(expected_from, begin)) {
    return;
  }
  std::shared_ptr<TensorState> owner = parts_.catalog->Find(ts.id);
  if (owner == nullptr) return;  // dropped meanwhile
  QueueRange(std::move(owner), begin, to, pos, nullptr, Trail::kDown);
}

}  // namespace strata::internal
