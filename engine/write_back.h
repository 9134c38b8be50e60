// The one write-back path: a dirty copy's bytes go to a lower tier, for
// eviction (the copy is dropped once the lower tier acknowledged them), for
// evict-ahead (the same, started early), and for Flush (the copy stays and
// turns clean once the lowest tier acknowledged them).
//
// Invariant 4 (DESIGN.md): a dirty copy is dropped only after the lower tier
// acknowledged its bytes and their checksum. A failed write-back leaves it
// dirty and resident; an eviction's error is parked on the tensor for its
// next Flush (never handed to an unrelated caller), a Flush's error is
// returned by that Flush.
//
// Threads: thread-safe. Completions run on the lower tier's completion
// thread (or the submitter's, for synchronous tiers).
#ifndef STRATA_ENGINE_WRITE_BACK_H_
#define STRATA_ENGINE_WRITE_BACK_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/block_hook.h"
#include "engine/block_table.h"
#include "engine/copier.h"
#include "engine/parts.h"
#include "engine/wait_table.h"

namespace strata::internal {

struct WriteBackOp;

class WriteBacks {
 public:
  explicit WriteBacks(EngineParts& parts) : parts_(parts) {}

  // Eviction: copy `src` of `block` is claimed by the caller (evicting) and
  // dirty. Writes it to the first lower tier that accepts it, falling
  // through to the next on kResourceExhausted or when the block's copy there
  // is busy. Non-OK: nothing started (no lower tier took it; kAborted: the
  // copies below were busy being moved, try again soon); the caller puts the
  // copy back, except after NoLongerDirty(status): the copy lost its dirty
  // mark since it was claimed (see ClaimTarget), holds nothing the tiers
  // below need, and the caller drops it as a clean copy.
  absl::Status StartEviction(std::shared_ptr<TensorState> ts, uint64_t block,
                             int src, CopyBatch& batch);
  static bool NoLongerDirty(const absl::Status& status) {
    return absl::IsCancelled(status);
  }

  // Writes every dirty block of `ts` to the lowest tier and waits for the
  // acknowledgements (each within io_timeout). Returns the first error: a
  // background write-back of the tensor that failed since the last Flush,
  // else this Flush's own. kFailedPrecondition for a block pinned for
  // writing.
  absl::Status Flush(const std::shared_ptr<TensorState>& ts);

  // Tests only (testing::SetEvictionHook): called on the evicting thread by
  // StartEviction, after the caller claimed the copy and before any target
  // is claimed, with the tensor's name, the block and the copy's tier.
  BlockHook eviction_hook;

 private:
  friend struct WriteBackOp;
  enum class Mode { kEvict, kFlush };

  // Under the latch: gives the source's bytes their version and claims the
  // target copy in tier `dst`. kBusy when that copy is busy (`seen` set);
  // kNotDirty when the source is no longer dirty, and must not be written.
  enum class Claim { kClaimed, kBusy, kNotDirty };
  Claim ClaimTarget(WriteBackOp& op, int dst, uint64_t* seen);
  void ReleaseTarget(WriteBackOp& op);
  // Frame, claim and copy for one target tier; kResourceExhausted lets an
  // eviction try the next tier.
  absl::Status StartTo(const std::shared_ptr<WriteBackOp>& op, int dst,
                       CopyBatch& batch, uint64_t* busy_seen);
  static void OnCopied(void* user, const CopyResult& result);
  void Complete(WriteBackOp& op, const CopyResult& result);
  void CompleteLocked(WriteBackOp& op, const CopyResult& result);
  void Account(WriteBackOp& op, const CopyResult& result);

  // Flush helpers. `target` is the tier Flush writes down to (FlushTarget);
  // dirty copies above it are the ones flushed.
  int FlushTarget() const;
  absl::Status HoldDirtyCopy(TensorState& ts, uint64_t block, int target,
                             Deadline deadline, int* held_pos);
  absl::Status FlushBatch(const std::shared_ptr<TensorState>& ts, int target,
                          uint64_t begin, uint64_t end);

  EngineParts& parts_;
  std::atomic<uint64_t> logged_failures_{0};
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_WRITE_BACK_H_
