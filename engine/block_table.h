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

namespace strata::tiers::shm {
struct SharedRef;
}

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

// What a tensor is, and the state of its slow paths: read when it is
// created, looked up or named in a message, by readahead, Flush and
// DropTensor; never by a pin of a resident block. Kept out of TensorState
// so that tensors lie in short strides (see there).
struct TensorInfo {
  std::string name;
  TensorSpec spec;  // as created, block_bytes filled in

  // Sequential readahead: the last block a demand miss or a first pin of a
  // prefetched block touched; reading upwards, the end of the blocks
  // already asked for (0: not reading ahead upwards); reading downwards (a
  // backward pass), the first of them (kNoReadahead: not reading downwards).
  static constexpr uint64_t kNoReadahead = ~uint64_t{0};
  std::atomic<uint64_t> last_sequential{kNoReadahead};
  std::atomic<uint64_t> readahead_to{0};
  std::atomic<uint64_t> readahead_from{kNoReadahead};
  // Flush and DropTensor of one tensor run one at a time.
  std::mutex flush_mu;

  // Errors of background write-backs of this tensor's blocks (evictions,
  // evict-ahead), by block: its next Flush returns them, DropTensor drops
  // them, and no other caller ever sees them.
  std::mutex errors_mu;
  absl::flat_hash_map<uint64_t, absl::Status> write_back_errors;

  // A shared tensor (engine/shared_tensors.h): which tensor of the node
  // segment, and its directory slot's generation when it was opened.
  bool shared = false;
  std::shared_ptr<const tiers::shm::SharedRef> shared_ref;
};

// What a pin reads of one tensor: one cache line. Made by NewTensorState,
// with its block table in the same allocation, right after it: the copy
// slots (column by column), then the block records; the rest of what the
// engine knows of the tensor is in `info`. Tensors created one after
// another lie one after another (StateArena): a pin of a one-block tensor
// of a two-tier chain reads two neighbouring lines of a 256-byte stride,
// and pins that go round many small tensors stream through memory instead
// of chasing pointers (catalog_bench BM_PinRoundRobin; with the info inline
// the stride was 448 bytes and such pins ran at half the speed).
struct alignas(64) TensorState {
  EngineCore* core = nullptr;
  CopySlot* slots = nullptr;  // chain_size columns of num_blocks slots
  uint64_t num_blocks = 0;
  uint64_t block_bytes = 0;
  uint64_t size_bytes = 0;
  // Anything that takes a pin off the hot path, in one word the hot path
  // reads after its CAS: the tensor is being dropped or was, the engine
  // closed, or a step being recorded.
  static constexpr uint32_t kGateDropped = 1, kGateClosed = 2, kGateStep = 4,
                            kGateDropping = 8, kGateShared = 16;
  std::atomic<uint32_t> gate{0};
  uint32_t id = 0;
  int chain_size = 0;
  std::unique_ptr<TensorInfo> info;

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
  CopySlot& copy(int pos, uint64_t block) {
    return slots[static_cast<uint64_t>(pos) * num_blocks + block];
  }
  // The records follow the slots.
  BlockRecord& record(uint64_t block) {
    return reinterpret_cast<BlockRecord*>(
        slots + static_cast<uint64_t>(chain_size) * num_blocks)[block];
  }

  void SetWriteBackError(uint64_t block, absl::Status status);
  // Returns (and forgets) the first parked error, or OK.
  absl::Status TakeWriteBackErrors();
};

// "tensor 'w' block 3", for messages.
std::string BlockName(const TensorState& ts, uint64_t block);

// Memory for tensor states with their block tables. Small ones (up to
// kMaxSlabObject bytes: tensors of a few blocks) come from slabs of one size
// class each (multiples of 64 bytes), carved in order, so that tensors
// created one after another lie one after another, with no per-object
// header or alignment waste; freed ones are reused (last freed, first used),
// and slabs go back to the system with the arena. Larger ones come from the
// heap. The arena lives until the engine and every handle of its tensors are
// gone (each state holds a reference).
//
// Threads: thread-safe (one mutex; taken when a tensor is created or its
// last handle goes).
class StateArena {
 public:
  static constexpr uint64_t kMaxSlabObject = 4096;
  StateArena() = default;
  ~StateArena();
  StateArena(const StateArena&) = delete;
  StateArena& operator=(const StateArena&) = delete;

  // 64-byte aligned memory of at least `bytes`; null when memory runs out.
  void* Allocate(uint64_t bytes);
  // Gives back memory from Allocate(bytes).
  void Free(void* p, uint64_t bytes);

 private:
  static constexpr uint64_t kClass = 64;
  static constexpr uint64_t kSlabBytes = uint64_t{256} << 10;
  static constexpr uint64_t kHugeSlabBytes = uint64_t{2} << 20;
  static constexpr size_t kSmallSlabs = 8;
  struct Slab {
    std::byte* bytes;
    bool huge;
  };
  struct SizeClass {
    std::byte* next = nullptr;  // the rest of this class's newest slab
    std::byte* end = nullptr;
    void* free = nullptr;       // freed objects, linked through their bytes
  };
  std::mutex mu_;
  std::array<SizeClass, kMaxSlabObject / kClass> classes_;
  std::vector<Slab> slabs_;
};

// A tensor's state with its block table (`num_blocks` blocks, a chain of
// `chain_size` tiers) in one allocation from `arena`; every slot absent,
// every record zero. Null when memory runs out.
std::shared_ptr<TensorState> NewTensorState(std::shared_ptr<StateArena> arena,
                                            uint64_t num_blocks, int chain_size);
// Bytes NewTensorState allocates for such a tensor.
uint64_t TensorStateBytes(uint64_t num_blocks, int chain_size);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_BLOCK_TABLE_H_
