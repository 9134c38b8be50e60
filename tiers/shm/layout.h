// The bytes of a node segment (/dev/shm/strata-<name>), as every attached
// process sees them. Offsets, never pointers: each process maps the segment
// at its own address.
//
//   [0, 4096)            Header: immutable part (checksummed), then the
//                        lock, the counters and the allocator's state
//   procs_offset         max_processes x ProcessSlot (64 B each)
//   dir_offset           max_tensors x DirEntry (256 B each)
//   map_offset           the allocator's order map, one byte per unit
//   links_offset         the allocator's links, 8 bytes per unit
//   arena_offset         frames and tensor tables, 4 KiB units
//
// A tensor's table (allocated from the arena) holds its BlockRecords, then
// one row of pin counts per process slot, each row padded to 64 bytes so
// that two processes never write one cache line.
//
// Who writes what:
// - The immutable header: the creator, before `ready` is set; never again.
// - Directory entries, process slots, the allocator: under `lock`.
// - A block's state word, frame and shadow: the owner of its busy state
//   (by CAS), published by the release store that ends it.
// - A pin count: only its own process (atomically), and the reclaimer once
//   the process is dead.
#ifndef STRATA_TIERS_SHM_LAYOUT_H_
#define STRATA_TIERS_SHM_LAYOUT_H_

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "tiers/shm/buddy.h"

namespace strata::tiers::shm {

inline constexpr char kMagic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'S', 'M'};
inline constexpr uint32_t kLayoutVersion = 1;
inline constexpr uint32_t kReady = 0x52454459;  // "REDY"
inline constexpr uint64_t kHeaderBytes = 4096;
inline constexpr size_t kMaxNameBytes = 128;   // tensor names, NUL included
inline constexpr int kMaxDims = 8;
inline constexpr uint32_t kMaxProcesses = 256;
inline constexpr uint32_t kMaxTensors = 1 << 20;

struct ImmutableHeader {
  char magic[8];
  uint32_t layout_version;
  uint32_t max_processes;
  uint32_t max_tensors;
  // Eviction's clock: a pin raises a block's `ref` up to this, the hand
  // lowers it by one per pass and takes a block at 0 (1: CLOCK, LRU-like;
  // more: GCLOCK, frequency-aware).
  uint32_t clock_max;
  uint64_t total_bytes;   // the segment's size
  uint64_t procs_offset;
  uint64_t dir_offset;
  uint64_t map_offset;
  uint64_t links_offset;
  uint64_t arena_offset;
  uint64_t arena_units;   // of Buddy::kUnit bytes
  int64_t created_unix_ns;
  // The spill file every process opens (NUL-terminated; empty: none, and
  // a full segment refuses new frames).
  char spill_path[1024];
  uint64_t checksum;      // XXH3 of the fields above
};

struct alignas(64) Header {
  ImmutableHeader fixed;
  // Set to kReady by the creator once everything else is in place.
  std::atomic<uint32_t> ready;
  alignas(64) pthread_mutex_t lock;  // robust, process-shared
  // Counters, under `lock`.
  uint64_t next_generation;     // of directory entries
  uint64_t dead_reclaimed;      // processes found dead and cleaned up
  uint64_t pins_reclaimed;      // pins those processes held
  uint64_t lock_repairs;        // EOWNERDEAD recoveries
  uint64_t spill_next;          // first byte of the spill file not handed out
  uint64_t spills;              // blocks evicted to the spill file
  uint64_t spill_loads;         // blocks read back from it
  uint32_t clock_entry;         // eviction's clock hand: directory entry,
  uint64_t clock_block;         // and block
  alignas(64) Buddy::State buddy;
};
static_assert(sizeof(Header) <= kHeaderBytes);

// One attached process. `pid` and `start_ticks` (field 22 of
// /proc/<pid>/stat) tell a live process from a dead one whose pid was
// reused.
struct alignas(64) ProcessSlot {
  enum : uint32_t { kFree = 0, kLive = 1 };
  std::atomic<uint32_t> state;
  int32_t pid;
  uint64_t start_ticks;
  int64_t attached_unix_ns;
};
static_assert(sizeof(ProcessSlot) == 64);

struct alignas(64) DirEntry {
  // kFree: unused. kCreating: `owner` builds it under the lock (never seen
  // outside the lock unless the owner died). kLive: open to all.
  // kRemoving: RemoveTensor checks for pins under the lock.
  enum : uint32_t { kFree = 0, kCreating = 1, kLive = 2, kRemoving = 3 };
  std::atomic<uint32_t> state;
  uint32_t owner;           // slot of the creator
  std::atomic<uint64_t> generation;  // changes whenever the entry is reused
  char name[kMaxNameBytes];
  uint8_t dtype;
  uint8_t ndims;
  uint16_t reserved0;
  uint32_t reserved1;
  int64_t shape[kMaxDims];
  uint64_t block_bytes;
  uint64_t size_bytes;
  uint64_t num_blocks;
  uint64_t table_offset;    // segment offset of the tensor's table
  uint64_t table_units;     // as allocated
  uint64_t spill_offset;    // of block 0 in the spill file (blocks follow,
                            // each a whole number of 4 KiB units)
};
static_assert(sizeof(DirEntry) == 320);

// The shared state of one block, one cache line. `state` packs (segment.cc,
// BlockWord): the kind (absent, resident, spilled, busy) and, while busy,
// its owner's slot and purpose.
struct alignas(64) BlockRecord {
  std::atomic<uint64_t> state;
  std::atomic<uint32_t> seq;    // futex word: bumped on every change waiters await
  std::atomic<uint32_t> ref;    // raised by pins, for eviction's clock
  std::atomic<uint64_t> frame;  // segment offset of the sealed bytes, 0: none
  std::atomic<uint64_t> shadow; // frame being written or loaded, 0: none
  // Seals of the block so far (64 bits: out of reach of wrapping).
  std::atomic<uint64_t> version;
  // The spill file's copy: `version` + 1 of the bytes it holds (0: none),
  // and their checksum (util/checksum.h, keyed by the tensor's generation).
  std::atomic<uint64_t> spill_version;
  std::atomic<uint64_t> spill_checksum;
};
static_assert(sizeof(BlockRecord) == 64);

// A block's state word: the kind in bits 0-1; while busy, the purpose in
// bits 2-3 and the owner's process slot in bits 8-15.
//   absent    never written: reads as zeros, no frame
//   resident  its sealed bytes are in `frame`
//   spilled   its sealed bytes are in the spill file only, no frame
//   busy      its owner loads it, writes it (into `shadow`) or evicts it
class BlockWord {
 public:
  enum Kind : uint64_t { kAbsent = 0, kResident = 1, kBusy = 2, kSpilled = 3 };
  enum Purpose : uint64_t { kLoading = 0, kWriting = 1, kEvicting = 2 };

  static uint64_t Absent() { return kAbsent; }
  static uint64_t Resident() { return kResident; }
  static uint64_t Spilled() { return kSpilled; }
  static uint64_t Busy(Purpose purpose, uint32_t owner) {
    return kBusy | (purpose << 2) | (uint64_t{owner} << 8);
  }
  static Kind KindOf(uint64_t w) { return static_cast<Kind>(w & 3); }
  static uint32_t Owner(uint64_t w) { return static_cast<uint32_t>((w >> 8) & 0xFF); }
  static bool Valid(uint64_t w) {
    if (KindOf(w) != kBusy) return w == KindOf(w);
    return ((w >> 2) & 3) <= kEvicting && (w >> 16) == 0 && ((w >> 4) & 0xF) == 0;
  }
};

// A write pin's share of its process's count of the block: above any number
// of read pins (count / kWritePin write pins, count % kWritePin read pins).
inline constexpr uint32_t kWritePin = uint32_t{1} << 24;

}  // namespace strata::tiers::shm

#endif  // STRATA_TIERS_SHM_LAYOUT_H_
