// The mover: one background thread that loads blocks nobody waits for yet
// — Prefetch requests, step plans replayed ahead of the trainer, and
// sequential readahead — through the same load path as a pin (loader.h).
// A job's first load is submitted at once and the rest in groups of
// kSubmitGroup (one io_uring submission for many small blocks); the tiers'
// reserves are refilled once the job's loads are on their way.
//
// Sequential readahead, like a file system's: a demand miss right after the
// previous one in the same tensor (the block after it, or the block before
// it: a backward pass reads its layers last to first) starts a window of
// blocks on the mover in that direction; the first pin of a block it
// brought (the prefetched bit, cleared by that pin's CAS) slides the window
// on. Readahead is speculative: a reader whose block failed to arrive loads
// it again itself and gets the error itself. A window's blocks that the
// reader has passed by the time the mover runs it are skipped.
//
// Threads: Enqueue-side calls are thread-safe; the jobs run on the mover's
// own thread.
#ifndef STRATA_ENGINE_MOVER_H_
#define STRATA_ENGINE_MOVER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "engine/block_table.h"
#include "engine/parts.h"
#include "engine/stats.h"

namespace strata::internal {

class CopyBatch;
struct PrefetchState;

class Mover {
 public:
  explicit Mover(EngineParts& parts);
  ~Mover() { Stop(); }
  Mover(const Mover&) = delete;
  Mover& operator=(const Mover&) = delete;

  // Queues blocks [begin, end) of `ts` for tier `pos`; each one counts
  // `prefetch` down when it arrived or failed.
  void Prefetch(std::shared_ptr<TensorState> ts, uint64_t begin, uint64_t end,
                int pos, std::shared_ptr<PrefetchState> prefetch);
  // Queues the blocks named in `blocks` (a gather) as one job.
  void PrefetchBlocks(std::shared_ptr<TensorState> ts,
                      std::span<const uint64_t> blocks, int pos,
                      std::shared_ptr<PrefetchState> prefetch);
  // Queues step plan entries (tensors are looked up on the mover thread).
  void PrefetchPlan(std::vector<PlanEntry> entries);

  void OnDemandMiss(TensorState& ts, uint64_t block, int pos);
  void OnPrefetchedHit(TensorState& ts, uint64_t block, int pos);

  // Stops taking jobs and waits for the one running to end (Close, before
  // it looks for live pins); Resume undoes it.
  void Pause();
  void Resume();
  // Until no job is queued or running, or `deadline` (false then). For
  // tests (testing::WaitForBackgroundWork).
  bool WaitIdle(Deadline deadline);
  // Stops the thread; jobs still queued fail their handles
  // (kFailedPrecondition: the engine closed). Idempotent.
  void Stop();

 private:
  struct Entry {
    std::shared_ptr<TensorState> ts;  // null: look up key's tensor
    uint64_t key = 0;                 // tensor id << 32 | block
    int pos = 0;
  };
  // A readahead window's direction; its blocks the reader has passed by
  // the time the job runs are skipped (a lagging mover once loaded them
  // again behind the reader).
  enum class Trail { kNone, kUp, kDown };
  struct Job {
    std::vector<Entry> entries;
    std::shared_ptr<PrefetchState> prefetch;  // may be null
    Trail trail = Trail::kNone;               // readahead only
  };

  void Enqueue(Job job);
  void Loop();
  void Run(Job& job);
  // What became of one entry: its load started (the loader reports it to
  // the job's handle), it was finished here (there already, or cancelled),
  // or its copy is on its way out (or changed under the look) and the
  // entry is to be tried again.
  enum class Outcome { kStarted, kFinished, kLeaving };
  Outcome StartOne(Job& job, Entry& e, Deadline deadline, CopyBatch& batch);
  // A Prefetch's copies already resident are kept as the ones it loads
  // will be: marked prefetched (CopyState::MarkedPrefetched), so that the
  // job's own loads evict other copies, not these (EngineApiTest.
  // PrefetchKeepsTheBlocksAlreadyResident).
  void MarkResident(const Job& job);
  // Asks for `count` blocks from `from` upwards, if the window still ends
  // at `expected_to` (one thread moves a window at a time).
  void ExtendReadahead(TensorState& ts, uint64_t from, uint64_t expected_to,
                       uint64_t count, int pos);
  // Asks for `count` blocks below `to`, if the window still starts at
  // `expected_from`.
  void ExtendReadaheadDown(TensorState& ts, uint64_t to,
                           uint64_t expected_from, uint64_t count, int pos);
  uint64_t Window(int pos) const;
  // Queues blocks [begin, end) of `ts` for tier `pos`: a Prefetch's
  // (Trail::kNone), or a readahead window's, with its direction.
  void QueueRange(std::shared_ptr<TensorState> ts, uint64_t begin, uint64_t end,
                  int pos, std::shared_ptr<PrefetchState> prefetch, Trail trail);
  // Whether the reader of `ts` has passed `block` in `trail`'s direction.
  static bool Passed(const TensorState& ts, uint64_t block, Trail trail);

  static constexpr uint32_t kSubmitGroup = 8;

  EngineParts& parts_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stop_ = false;
  bool paused_ = false;
  bool running_ = false;  // a job is running
  std::thread thread_;
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_MOVER_H_
