// The one load path: bringing a copy of a block into a tier, for a pin that
// missed, a prefetch, readahead or a step plan alike (DESIGN.md invariants 5
// and 6).
//
// The loader of a copy is whoever moved its word from absent to loading; it
// reserves the frame first (capacity before transfer, given back if the
// load fails), picks the nearest current copy under the block latch
// (block_ops.h), and starts the copy; the rest happens in the copy's
// completion, on whichever thread delivers it: the copy is published
// resident (with the waiting pinner's pin already counted, when one still
// waits) or absent, and every waiter wakes.
//
// A pinner waits for a load with a deadline (EngineOptions::io_timeout):
// when the device does not answer in time the pinner gets
// kDeadlineExceeded, and the frame stays reserved ("quarantined") until the
// completion arrives. Other pinners of the same copy wait on the same load;
// a failed demand load returns its error to every waiter, a failed
// speculative load (prefetch, readahead) lets them try again themselves.
//
// An early load (Engine::PinAsync's read pin of a GPU copy) does not wait
// for the device: when the copy into the device frame is enqueued on the
// tier's stream, the copy is published resident and in flight
// (copy_state.h) with the pin counted, and the pinner returns; the copy's
// completion clears the in-flight bit, or marks the copy failed. The frame,
// the source's hold and any staging buffer stay until that completion.
//
// Threads: thread-safe.
#ifndef STRATA_ENGINE_LOADER_H_
#define STRATA_ENGINE_LOADER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "engine/block_hook.h"
#include "engine/block_ops.h"
#include "engine/block_table.h"
#include "engine/copier.h"
#include "engine/parts.h"
#include "engine/wait_table.h"

namespace strata::internal {

struct PrefetchState;

class Loader {
 public:
  // What the loader's own caller wants once the copy is there.
  enum class Want { kNone, kRead, kWrite, kOverwrite };

  struct Op;
  struct Outcome {
    absl::Status status;
    bool granted = false;  // the pin is counted in the published word
  };

  explicit Loader(EngineParts& parts) : parts_(parts) {}

  // Loads copy `pos` of `block`; the caller moved its word to loading.
  // Blocks while it reserves a frame and picks a source (until
  // `deadline`), then starts the copy (into `batch` when given) and returns.
  // kOverwrite reads nothing when the new copy can be the block's only one.
  // `early` (with kRead): grant the pin once the copy is enqueued on a
  // device stream, without waiting for it (see above). With a `batch`, the
  // caller refills the tier's reserve (Residency::RefillReserve) once it
  // submitted the batch.
  std::shared_ptr<Op> Start(std::shared_ptr<TensorState> ts, uint64_t block,
                            int pos, Want want, bool speculative,
                            std::shared_ptr<PrefetchState> prefetch,
                            Deadline deadline, CopyBatch* batch,
                            bool early = false);

  // The starter waits for its load, until `deadline` at most and for
  // EngineOptions::io_timeout from now at most. On a timeout or a closing
  // engine it gives up its claim on the pin; the load goes on.
  Outcome AwaitOwn(Op& op, Deadline deadline);
  // Another pinner found the copy loading: the load, if the loader runs it
  // (null for a write-back filling the copy, or one just finished).
  std::shared_ptr<Op> Find(const CopySlot& slot);
  // Whether a load of `block` holds its copy in tier `pos` as its source
  // (a read pin the engine takes, let go once the load published its copy).
  bool HoldsSource(TensorState& ts, uint64_t block, int pos);
  // Waits for someone else's load (until it finished, or published its
  // copy in flight); OK means "look at the copy again".
  absl::Status AwaitOther(Op& op, Deadline deadline);

  // Wakes every waiter (Close).
  void Interrupt();

  // Tests only (testing::SetLoadSourceHook): called on the loading thread
  // by PickSource after it found the tensor neither dropped nor closed and
  // before it takes the block's latch to choose the source, with the
  // tensor's name, the block and the tier loaded into.
  BlockHook source_hook;

 private:
  // Start without the reserve's refill.
  std::shared_ptr<Op> StartLoad(std::shared_ptr<TensorState> ts, uint64_t block,
                                int pos, Want want, bool speculative,
                                std::shared_ptr<PrefetchState> prefetch,
                                Deadline deadline, CopyBatch* batch, bool early);
  absl::Status ReserveFrame(Op& op, Deadline deadline, CopyBatch* batch);
  absl::StatusOr<Source> PickSource(Op& op, Deadline deadline,
                                    CopyBatch* batch);
  void StartCopy(const std::shared_ptr<Op>& op, CopyBatch* batch);
  // A shared tensor's private copy: its bytes come from the node segment.
  void StartShared(const std::shared_ptr<Op>& op, CopyBatch* batch);
  bool PublishOverwrite(Op& op);
  // Whether `op` is done and its copy waits, unpinned, for its owner's write
  // pin to make it the block's only copy (MakeSoleAndPin).
  static bool AwaitsSole(Op& op);
  static void OnCopied(void* user, const CopyResult& result);
  // The copy into a device frame is enqueued: an early load publishes it.
  static void OnEnqueued(void* user);
  // The completion of a copy published in flight.
  void Land(Op& op, const absl::Status& status);
  void Complete(Op& op, absl::Status status);
  void ReleaseHeldSource(Op& op);
  void PublishLocked(Op& op);
  // After a publish that counted the owner's pin: the pin is the owner's.
  void GrantPublished(Op& op);
  void Finish(Op& op, const absl::Status& status);
  absl::Status Timeout(const Op& op) const;
  // Drives the source tier's completions while the starter waits (at
  // most kDriveFor), where the tier has any to drive.
  void DriveSource(Op& op, Deadline until);
  static constexpr std::chrono::microseconds kDriveFor{1000};

  EngineParts& parts_;
  std::mutex mu_;
  absl::flat_hash_map<const CopySlot*, std::shared_ptr<Op>> loading_;
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_LOADER_H_
