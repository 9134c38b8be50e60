// The block-level protocol: decisions that look at every copy of one block
// at once, made under the block's latch (engine/block_table.h).
//
// Truth of a block (DESIGN.md, "The tier chain"):
// - A copy is current when it holds the block's newest bytes: the copy whose
//   word says `new` (a write pin changed it; then it is the only current
//   one), else every resident copy whose version equals the record's.
// - Every resident copy of a pinnable tier is current (a write pin drops the
//   other pinnable copies first: MakeSoleAndPin).
// - At most one copy is dirty: the lowest one holding the newest bytes, as
//   long as the lowest tier of the chain does not hold them. A clean current
//   copy therefore always has the newest bytes below it, and may be dropped.
#ifndef STRATA_ENGINE_BLOCK_OPS_H_
#define STRATA_ENGINE_BLOCK_OPS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/block_table.h"
#include "engine/parts.h"
#include "engine/wait_table.h"
#include "tiers/tier.h"

namespace strata::internal {

// Where a load takes its bytes from.
struct Source {
  // kShared: the block of a shared tensor in the node segment (the loader
  // holds a read pin of it there while it copies).
  enum Kind { kZeros, kCopy, kWait, kLost, kShared };
  Kind kind = kLost;
  int pos = -1;            // kCopy: the copy read; kWait: the copy to wait on
  uint64_t seen = 0;       // kWait: its word as seen
  tiers::Frame frame;      // kCopy
  uint64_t checksum = 0;   // kCopy
  uint64_t version = 0;    // kCopy: version of the bytes (0 for kZeros)
  bool moves_dirty = false;  // kCopy: the dirty mark moves to the target
};

// Under the latch. Picks the nearest current copy for loading copy `target`
// and takes one read pin of it (release it with ReleaseSource once the
// bytes are copied). Sets the shared bit of every other resident pinnable
// copy first, so that none of them is written while the new copy is made.
// kWait: a current copy is being written or moved; wait for its word to
// change and ask again. kLost: the block has a version no tier holds.
Source ChooseSource(EngineParts& parts, TensorState& ts, uint64_t block,
                    int target);
void ReleaseSource(EngineParts& parts, TensorState& ts, uint64_t block,
                   int pos);

// Under the latch, with copy `pos` held (pinned or claimed): gives its bytes
// a version if a write pin changed them since, and returns their version.
uint64_t VersionForCopyOut(TensorState& ts, uint64_t block, int pos);

// Under the latch: whether copy `pos` must carry the shared bit (another
// pinnable copy exists, or another copy is dirty).
bool NeedsShared(const EngineParts& parts, TensorState& ts, uint64_t block,
                 int pos);

// The write pin's slow path for a resident copy that carries the shared
// bit: drops every other pinnable copy (waiting for their pins to go), moves
// a lower copy's dirty mark onto copy `pos`, then takes the write pin.
// Returns true when the pin was taken; false when the caller must look at
// the copy again (it was evicted, or new read pins came); an error at the
// deadline or when the engine closes or the tensor is dropped.
absl::StatusOr<bool> MakeSoleAndPin(EngineParts& parts, TensorState& ts,
                                    uint64_t block, int pos,
                                    Deadline deadline);

// Under the latch: gives back the frame of copy `pos` (owned by the caller:
// claimed, or loading) and publishes the copy absent.
void FreeCopyLocked(EngineParts& parts, TensorState& ts, uint64_t block,
                    int pos);

// Drops copy `pos`, which this thread claimed (evicting): frees its frame
// and publishes it absent. Takes the latch.
void DropClaimed(EngineParts& parts, TensorState& ts, uint64_t block, int pos);
// Like DropClaimed, but hands the frame to the caller instead of freeing it
// when it fits `bytes` (at least that, less than 4 KiB more): the thread
// that evicted for a frame gets it, not whoever allocates first. False (the
// copy untouched, still claimed) when it does not fit, or the copy is
// failed (its frame must go back through its tier).
bool TakeClaimedFrame(EngineParts& parts, TensorState& ts, uint64_t block,
                      int pos, uint64_t bytes, tiers::Frame* frame);

// The error a pin gets for a dropped tensor or a closing engine, or OK.
absl::Status Interrupted(const EngineParts& parts, const TensorState& ts);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_BLOCK_OPS_H_
