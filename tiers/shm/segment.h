// The node segment: a POSIX shared-memory object /strata-<name> that the
// processes of one node attach to, holding a directory of shared tensors,
// their blocks' states and their bytes (the shm tier; tiers/shm/layout.h
// has the bytes).
//
// Invariants:
// - A reader never sees a torn block: a write pin writes into a shadow
//   frame, which replaces the sealed frame only when the pin is released;
//   a writer that dies leaves the last sealed bytes in place.
// - A write pin is exclusive: granted once no process pins the block, and
//   no pin is granted while it lives.
// - Pins are counted per process (its own row of counts), so a dead
//   process's pins are known exactly and dropped by whoever notices the
//   death: a waiter whose wait times out, the watchdog thread of every
//   attached process (every `reclaim_interval`), or a lock taker that meets
//   EOWNERDEAD. A dead process is told from a live one by its pid *and* its
//   start time, so a reused pid is not mistaken for it.
// - Locks a dead process may hold are robust process-shared mutexes; after
//   EOWNERDEAD the allocator is rebuilt from the frames the directory
//   references, never trusted.
//
// Threads: every method is thread-safe. Waits use shared futexes with
// deadlines; nothing spins.
#ifndef STRATA_TIERS_SHM_SEGMENT_H_
#define STRATA_TIERS_SHM_SEGMENT_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "api/strata/strata.h"
#include "tiers/shm/layout.h"
#include "tiers/shm/spill_file.h"

namespace strata::tiers::shm {

enum class OpenMode : uint8_t { kCreate, kAttach, kCreateOrAttach };

struct SegmentOptions {
  // [A-Za-z0-9_.-], 1..200 characters; the object is /strata-<name>.
  std::string name;
  OpenMode mode = OpenMode::kCreateOrAttach;
  // When creating: bytes of the arena (frames and tensor tables), a
  // multiple of 4096; and the most processes and tensors it serves.
  uint64_t capacity_bytes = uint64_t{1} << 30;
  uint32_t max_processes = 32;
  uint32_t max_tensors = 1024;
  // When creating: how eviction weighs use, 1..15 (the clock's counter
  // limit: 1 is CLOCK, an LRU approximation; 3 or more is GCLOCK, which
  // keeps often pinned blocks longer). ClockMaxForPolicy maps the engine's
  // policy names.
  uint32_t clock_max = 3;
  // When creating: a directory for the spill file (created if missing),
  // where unpinned blocks go when the segment is full; empty: no spill
  // file, and a full segment refuses new frames. Attaching processes use
  // the creator's.
  std::string spill_dir;
  // How long an attach waits for a segment's creator to finish it, and a
  // lock taker for the lock.
  absl::Duration lock_timeout = absl::Seconds(10);
  // How often the watchdog looks for dead processes; zero: no watchdog
  // (waiters still reclaim when their waits time out).
  absl::Duration reclaim_interval = absl::Milliseconds(200);
  // Rare events (a dead process reclaimed, a lock repaired). Empty: stderr.
  std::function<void(std::string_view)> log;
  // Tests only: called at named points inside critical sections
  // ("create:table", with the lock held), so that a test can kill the
  // process there.
  std::function<void(std::string_view)> test_hook;
};

// What a shared tensor is, as the directory holds it.
struct SharedSpec {
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t block_bytes = 0;
  uint64_t size_bytes = 0;
  uint64_t num_blocks = 0;
};

// A tensor of the segment, as one process holds it: the directory slot and
// the generation it had when opened (a removed and re-created tensor has
// another).
//
// It also holds where the tensor lies in the mapping of the Segment that
// made it (the directory entry, the block records, this process's row of
// counts): a table never moves while its generation lives, so a pin finds
// them without arithmetic. A SharedRef is only good with that Segment.
struct SharedRef {
  uint32_t index = 0;
  uint64_t generation = 0;
  SharedSpec spec;
  std::string name;
  std::byte* base = nullptr;  // the mapping
  const DirEntry* entry = nullptr;
  BlockRecord* records = nullptr;
  std::atomic<uint32_t>* my_counts = nullptr;
  uint32_t clock_max = 1;
};

// The clock limit that stands for an EngineOptions::policy name: "lru" 1,
// "lfu" 7, anything else ("default", "hinted": hints do not cross
// processes) 3.
uint32_t ClockMaxForPolicy(std::string_view policy);

// What a pin of a shared block hands out.
struct SharedPin {
  std::byte* data = nullptr;
  uint64_t size = 0;
  BlockRecord* record = nullptr;
  std::atomic<uint32_t>* count = nullptr;  // this process's count of the block
  uint64_t version = 0;  // seals of the block so far (read pins)
};

class Segment {
 public:
  // Creates and/or attaches the segment, and takes a process slot in it.
  // Errors: kInvalidArgument (name, sizes), kAlreadyExists (kCreate of an
  // existing one), kNotFound (kAttach of a missing one), kFailedPrecondition
  // (another layout version, a corrupt header or directory, a creator that
  // never finished), kResourceExhausted (no free process slot; /dev/shm
  // full), kPermissionDenied.
  static absl::StatusOr<std::unique_ptr<Segment>> Open(SegmentOptions options);
  // shm_unlink of /strata-<name>: processes attached keep their mapping.
  // kNotFound if there is none.
  static absl::Status Remove(std::string_view name);
  // Names (without the "strata-" prefix) of the segments in /dev/shm.
  static absl::StatusOr<std::vector<std::string>> List();
  // "/strata-<name>".
  static std::string ObjectName(std::string_view name);

  // Gives the process slot back (pins still held are dropped, as if the
  // process had died) and unmaps.
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  // Creates a shared tensor; with `open_existing`, an existing one of the
  // same spec is opened instead of kAlreadyExists (another spec:
  // kAlreadyExists naming both). kResourceExhausted: the directory or the
  // arena is full.
  absl::StatusOr<SharedRef> CreateTensor(std::string_view name,
                                         const SharedSpec& spec,
                                         bool open_existing);
  // kNotFound if the segment has no such tensor.
  absl::StatusOr<SharedRef> OpenTensor(std::string_view name);
  // Removes it for every process: kFailedPrecondition while a process pins
  // one of its blocks; kNotFound if it is gone already.
  absl::Status RemoveTensor(const SharedRef& ref);

  // Pins `block` of `ref` zero-copy; blocks until granted or `deadline`.
  // A read pin of a block never written sees zeros. Errors: kNotFound (the
  // tensor was removed), kOutOfRange, kDeadlineExceeded (a conflicting pin
  // held past the deadline), kResourceExhausted (no frame free: names the
  // segment, its capacity and its pinned bytes), kUnavailable (the lock).
  // A pin of a resident block is an atomic add on this process's count, a
  // few loads, and no clock read (the deadline is computed when it waits).
  absl::StatusOr<SharedPin> Pin(const SharedRef& ref, uint64_t block,
                                Access access, absl::Duration timeout);
  // Pin's first step for a read pin, inline: true and `*pin` filled when
  // block `block` (in range) of a live tensor is resident; false (nothing
  // held) when Pin must do the rest.
  static bool TryPinRead(const SharedRef& ref, uint64_t block, SharedPin* pin) {
    // A handle whose tensor was removed (by this process or another) must
    // not touch its count row: the row went back to the allocator with the
    // table, and may be another tensor's table or a frame now. Only a
    // removal concurrent with this call can still slip between this look
    // and the announce (DESIGN-NOTES, Known limits).
    if (ABSL_PREDICT_FALSE(ref.entry->generation.load(std::memory_order_acquire) !=
                           ref.generation)) {
      return false;
    }
    std::atomic<uint32_t>& mine = ref.my_counts[block];
    BlockRecord& r = ref.records[block];
    // Announce, then look (a writer or remover claims, then counts).
    mine.fetch_add(1, std::memory_order_seq_cst);
    if (ABSL_PREDICT_TRUE(
            ref.entry->generation.load(std::memory_order_seq_cst) == ref.generation &&
            ref.entry->state.load(std::memory_order_seq_cst) == DirEntry::kLive &&
            BlockWord::KindOf(r.state.load(std::memory_order_seq_cst)) ==
                BlockWord::kResident)) {
      const uint32_t used = r.ref.load(std::memory_order_relaxed);
      if (used < ref.clock_max) r.ref.store(used + 1, std::memory_order_relaxed);
      const uint64_t size = block + 1 < ref.spec.num_blocks
                                ? ref.spec.block_bytes
                                : ref.spec.size_bytes - block * ref.spec.block_bytes;
      *pin = {ref.base + r.frame.load(std::memory_order_acquire), size, &r, &mine,
              r.version.load(std::memory_order_acquire)};
      return true;
    }
    ReadUnpin(&r, &mine);
    return false;
  }
  // Ends a pin of Pin(); a write pin seals its bytes (readers see them
  // from now on).
  void Unpin(BlockRecord* record, std::atomic<uint32_t>* count, bool write) {
    if (write) return Seal(*record, *count);
    ReadUnpin(record, count);
  }
  static void ReadUnpin(BlockRecord* record, std::atomic<uint32_t>* count) {
    count->fetch_sub(1, std::memory_order_seq_cst);
    // A writer or evicter may be waiting for the readers to go (busy).
    if (BlockWord::KindOf(record->state.load(std::memory_order_seq_cst)) == BlockWord::kBusy) {
      Wake(*record);
    }
  }
  // How many times block `block` was sealed (private copies compare it
  // with the version they were loaded at). kNotFound if removed.
  absl::StatusOr<uint64_t> SealedVersion(const SharedRef& ref, uint64_t block) const;
  // Takes back a pin its caller will not hand out: a read pin is unpinned;
  // a write pin is discarded unsealed (the sealed bytes stay).
  void Cancel(const SharedPin& pin, bool write);
  // Pins this process holds now, over every tensor (O(blocks); read with
  // the same ordering as Pin's announcement).
  uint64_t PinsHeld() const;

  // Looks for dead processes now and reclaims their pins, locks and
  // half-made tensors. Returns how many processes it reclaimed.
  absl::StatusOr<int> ReclaimDead();

  // What `strata shm stat` prints; `include_self`: this process among the
  // processes listed.
  absl::StatusOr<ShmSegmentInfo> Stat(bool include_self = true);

  // A frame of `bytes` from the arena (segment offset), stored into
  // `record_into` under the lock. Pins use these; a benchmark may too, but
  // an allocator rebuild (after a process died) keeps only frames that a
  // BlockRecord in the segment references.
  absl::StatusOr<uint64_t> AllocateFrame(uint64_t bytes,
                                         std::atomic<uint64_t>& record_into);
  void FreeFrame(uint64_t offset);

  const std::string& name() const { return name_; }
  uint32_t slot() const { return slot_; }
  // The mapping (for cudaHostRegister).
  std::byte* base() const { return base_; }
  uint64_t mapped_bytes() const { return size_; }
  uint64_t capacity_bytes() const;

 private:
  class Locked;
  void Seal(BlockRecord& r, std::atomic<uint32_t>& count);
  // Unreferences and frees a block's shadow frame in one step under the
  // lock (an allocator rebuild in between would otherwise see it free).
  void DropShadow(BlockRecord& r);
  void FreeLocked(uint64_t offset);
  Segment(SegmentOptions options, std::byte* base, uint64_t size, int fd);

  absl::Status TakeSlot();
  void StartWatchdog();
  // Takes the lock (with lock_timeout); when its holder died, repairs and
  // adds the processes it reclaimed to `*reclaimed`.
  absl::StatusOr<Locked> Lock(int* reclaimed = nullptr);
  // Under the lock: every repair a dead process may need. `lock_was_dead`:
  // the lock came back EOWNERDEAD (the allocator is rebuilt then).
  int RepairLocked(bool lock_was_dead);
  void RebuildAllocatorLocked();
  void Log(std::string_view message) const;

  absl::StatusOr<uint64_t> AllocateLocked(uint64_t bytes);
  uint64_t PinnedBytesLocked() const;

  // Layout accessors.
  Header& header() const { return *reinterpret_cast<Header*>(base_); }
  ProcessSlot& process(uint32_t i) const;
  DirEntry& entry(uint32_t i) const;
  BlockRecord* records(const DirEntry& e) const;
  std::atomic<uint32_t>* counts(const DirEntry& e, uint32_t slot) const;
  uint64_t CountRowStride(const DirEntry& e) const;
  std::byte* at(uint64_t offset) const { return base_ + offset; }
  Buddy buddy() const;

  // Eviction to the spill file: the clock picks an unpinned resident block
  // and claims it (busy, evicting); Evict writes it out unless the file
  // holds its bytes already, then frees its frame.
  struct Victim {
    uint32_t index;
    uint64_t block;
  };
  std::optional<Victim> ClaimVictimLocked();
  absl::Status Evict(const Victim& victim);
  // Reads block `block` of `e` from the spill file into `into` and checks it.
  absl::Status LoadSpilled(const DirEntry& e, uint64_t block, BlockRecord& r,
                           std::byte* into);
  uint64_t SpillOffset(const DirEntry& e, uint64_t block) const;
  // The state a block settles in when its busy owner is gone.
  static uint64_t SettledWord(const BlockRecord& r);

  absl::StatusOr<const DirEntry*> CheckRef(const SharedRef& ref) const;
  // What CreateTensor and OpenTensor hand out for entry `index`.
  SharedRef RefOf(const DirEntry& e, uint32_t index) const;
  bool SlotAlive(uint32_t slot) const;
  uint64_t CountPins(const DirEntry& e, uint64_t block) const;
  void WaitForChange(BlockRecord& r, uint32_t seen, absl::Time deadline);
 public:
  // Bumps the block's futex word and wakes every process waiting on it.
  static void Wake(BlockRecord& r);

 private:

  const SegmentOptions options_;
  const std::string name_;
  std::byte* const base_;
  const uint64_t size_;
  const int fd_;
  uint32_t slot_ = ~0u;
  std::unique_ptr<SpillFile> spill_;  // null: the segment has none

  std::mutex watchdog_mu_;
  std::condition_variable watchdog_cv_;
  bool stopping_ = false;
  std::thread watchdog_;
};

}  // namespace strata::tiers::shm

#endif  // STRATA_TIERS_SHM_SEGMENT_H_
