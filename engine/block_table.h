// The block table: what the engine knows about every block of a tensor, in
// every tier of the chain.
//
// Per tensor, one *column* per configured tier (struct-of-arrays by tier):
// per block, the copy's state word (engine/copy_state.h) with the copy's
// frame, the version of the bytes it holds and, for lower tiers, their
// checksum — one cache line per block per tier, so that two threads pinning
// neighbouring blocks never share a line. Per block, one BlockRecord: a
// short latch and the block's version (64 bits: a block written 2^64 times
// is out of reach).
//
// Who may touch what:
// - A copy's word changes only through CopyState's transitions: by CAS on
//   the hot path (pin, unpin, eviction's claim), and otherwise under the
//   block's latch.
// - `frame`, `version` and `checksum` of a copy are written by the owner of
//   the copy's loading or evicting state, under the latch; readers hold a pin
//   of the copy or the latch.
// - BlockRecord::version is read and written under the latch only.
// - The latch is held for short sections only: never while waiting on
//   anything, never around I/O, never while taking a policy mutex.
#ifndef STRATA_ENGINE_BLOCK_TABLE_H_
#define STRATA_ENGINE_BLOCK_TABLE_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "api/strata/strata.h"
#include "engine/copy_state.h"
#include "engine/wait_table.h"
#include "tiers/tier.h"

namespace strata::internal {

// Most tiers a chain can hold (one of each kind).
inline constexpr int kMaxChain = kNumTiers;

struct alignas(64) CopySlot {
  std::atomic<uint64_t> word{0};
  tiers::Frame frame;     // valid while loading (owner), resident, evicting
  uint64_t version = 0;   // version of the bytes held (meaningless if new)
  uint64_t checksum = 0;  // as the tier computed it on write (lower tiers)
};
static_assert(sizeof(CopySlot) == 64, "one copy per cache line");
static_assert(offsetof(CopySlot, word) == 0, "Pin finds its slot by its word");

// A latch of one block: bit 0 held, bit 20 waiters (WaitTable's bit).
class BlockLatch {
 public:
  void Lock(WaitTable& waits);
  bool TryLock();
  void Unlock(WaitTable& waits);

 private:
  static constexpr uint64_t kHeld = 1;
  std::atomic<uint64_t> word_{0};
};

struct BlockRecord {
  BlockLatch latch;
  uint64_t version = 0;  // newest version given to the block's bytes
};

// RAII holder of a block latch.
class LatchGuard {
 public:
  LatchGuard(BlockLatch& latch, WaitTable& waits) : latch_(&latch), waits_(&waits) {
    latch_->Lock(*waits_);
  }
  ~LatchGuard() { Release(); }
  LatchGuard(const LatchGuard&) = delete;
  LatchGuard& operator=(const LatchGuard&) = delete;
  void Release() {
    if (latch_ != nullptr) latch_->Unlock(*waits_);
    latch_ = nullptr;
  }

 private:
  BlockLatch* latch_;
  WaitTable* waits_;
};

class EngineCore;

struct TensorState {
  EngineCore* core = nullptr;
  uint32_t id = 0;
  std::string name;
  TensorSpec spec;  // as created, block_bytes filled in
  uint64_t num_blocks = 0;
  uint64_t block_bytes = 0;
  uint64_t size_bytes = 0;
  int chain_size = 0;
  std::array<std::unique_ptr<CopySlot[]>, kMaxChain> columns;
  std::unique_ptr<BlockRecord[]> records;

  // Anything that takes a pin off the hot path, in one word the hot path
  // reads after its CAS: the tensor is being dropped or was, the engine
  // closed, or a step is being recorded.
  static constexpr uint32_t kGateDropped = 1, kGateClosed = 2, kGateStep = 4,
                            kGateDropping = 8;
  std::atomic<uint32_t> gate{0};
  // Sequential readahead: the last block a demand miss or a first pin of a
  // prefetched block touched, and the end of the blocks already asked for
  // (0: not reading ahead).
  std::atomic<uint64_t> last_sequential{~uint64_t{0}};
  std::atomic<uint64_t> readahead_to{0};
  // Flush and DropTensor of one tensor run one at a time.
  std::mutex flush_mu;

  // Errors of background write-backs of this tensor's blocks (evictions,
  // evict-ahead), by block: its next Flush returns them, DropTensor drops
  // them, and no other caller ever sees them.
  std::mutex errors_mu;
  absl::flat_hash_map<uint64_t, absl::Status> write_back_errors;

  bool dropped() const {
    return gate.load(std::memory_order_acquire) &
           (kGateDropped | kGateDropping);
  }
  uint64_t BlockSize(uint64_t block) const {
    return block + 1 < num_blocks ? block_bytes
                                  : size_bytes - block * block_bytes;
  }
  uint64_t Key(uint64_t block) const {
    return (static_cast<uint64_t>(id) << 32) | block;
  }
  CopySlot& copy(int pos, uint64_t block) { return columns[pos][block]; }
  BlockRecord& record(uint64_t block) { return records[block]; }

  void SetWriteBackError(uint64_t block, absl::Status status);
  // Returns (and forgets) the first parked error, or OK.
  absl::Status TakeWriteBackErrors();
};

// "tensor 'w' block 3", for messages.
std::string BlockName(const TensorState& ts, uint64_t block);

// Allocates the columns and records of a tensor of `num_blocks` blocks for a
// chain of `chain_size` tiers. False when memory runs out.
bool AllocateBlockTable(TensorState& ts);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_BLOCK_TABLE_H_
