// The buffer manager behind strata::Engine: catalog, block table, pin/unpin,
// eviction, write-back and the mover thread.
//
// Block state (DESIGN.md, "the part that must be right"): every block has one
// 64-bit state word for its host copy, in a per-tensor array of cache-line
// sized slots:
//
//   bits  0..15  pin count              bit 16  exclusive (a write pin)
//   bit  17      dirty                  bits 18..19  absent/loading/resident/evicting
//   bit  20      someone waits on this word
//   bit  21      prefetched and not pinned yet
//   bits 32..63  version (bumped by every write pin)
//
// A resident pin is one load and one CAS on that word. Whoever moves the word
// to "loading" or "evicting" owns the slot's other fields until it moves the
// word on; readers of those fields hold a pin (acquire) or the ownership.
// The NVMe copy's record (extent, checksum, version) is written only by the
// owner of an eviction, or by Flush while it holds a read pin and the
// tensor's flush mutex.
#ifndef STRATA_ENGINE_ENGINE_CORE_H_
#define STRATA_ENGINE_ENGINE_CORE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "engine/access_log.h"
#include "engine/policy/policy.h"
#include "tiers/host/host_tier.h"
#include "tiers/tier.h"

namespace strata::tiers {
class IoBackend;
}

namespace strata::internal {

namespace word {
inline constexpr uint64_t kPinMask = 0xFFFF;
inline constexpr uint64_t kExclusive = uint64_t{1} << 16;
inline constexpr uint64_t kDirty = uint64_t{1} << 17;
inline constexpr int kStateShift = 18;
inline constexpr uint64_t kStateMask = uint64_t{3} << kStateShift;
inline constexpr uint64_t kWaiters = uint64_t{1} << 20;
// Loaded by a prefetch and not pinned since: eviction passes it over while
// it has another choice. The first pin clears it in its CAS.
inline constexpr uint64_t kPrefetched = uint64_t{1} << 21;
inline constexpr int kVersionShift = 32;
inline constexpr uint64_t kVersionOne = uint64_t{1} << kVersionShift;

enum State : uint64_t { kAbsent = 0, kLoading = 1, kResident = 2, kEvicting = 3 };

inline State StateOf(uint64_t w) {
  return static_cast<State>((w & kStateMask) >> kStateShift);
}
inline uint64_t WithState(uint64_t w, State s) {
  return (w & ~kStateMask) | (static_cast<uint64_t>(s) << kStateShift);
}
inline uint64_t Pins(uint64_t w) { return w & kPinMask; }
inline uint64_t VersionOf(uint64_t w) { return w >> kVersionShift; }
}  // namespace word

struct alignas(64) BlockSlot {
  std::atomic<uint64_t> word{0};
  std::byte* data = nullptr;   // host frame, valid while resident/evicting
  uint64_t host_offset = 0;    // host frame offset in the arena
  tiers::Frame nvme;           // extent in the NVMe tier (bytes 0: none yet)
  uint64_t nvme_checksum = 0;  // of the bytes at `nvme`
  uint64_t nvme_version = 0;   // version those bytes hold (0: none)
};
static_assert(sizeof(BlockSlot) == 64, "one slot per cache line");
static_assert(offsetof(BlockSlot, word) == 0, "Pin finds the slot by its word");
static_assert(kUnpinRead == 1 && kUnpinWrite == word::kExclusive + 1 &&
                  kWaitersBit == word::kWaiters,
              "Pin's inline unpin must match the state word layout");

struct TensorState {
  EngineCore* core = nullptr;
  uint32_t id = 0;
  std::string name;
  TensorSpec spec;  // as created, block_bytes filled in
  uint64_t num_blocks = 0;
  uint64_t block_bytes = 0;
  uint64_t size_bytes = 0;
  uint64_t frame_bytes = 0;  // block_bytes rounded up to the frame alignment
  std::unique_ptr<BlockSlot[]> slots;
  // Anything that takes a pin off the hot path, in one word the hot path
  // reads: the tensor was dropped, the engine closed, or a step is traced.
  static constexpr uint32_t kGateDropped = 1, kGateClosed = 2, kGateStep = 4;
  std::atomic<uint32_t> gate{0};
  // Sequential readahead: the last block a demand miss or a first pin of a
  // prefetched block touched, and the end of the blocks already asked for
  // (0: not reading ahead).
  std::atomic<uint64_t> last_sequential{~uint64_t{0}};
  std::atomic<uint64_t> readahead_to{0};
  std::mutex flush_mu;

  bool dropped() const {
    return gate.load(std::memory_order_acquire) & kGateDropped;
  }
  uint64_t BlockSize(uint64_t block) const {
    return block + 1 < num_blocks ? block_bytes
                                  : size_bytes - block * block_bytes;
  }
  uint64_t Key(uint64_t block) const {
    return (static_cast<uint64_t>(id) << 32) | block;
  }
};

inline std::string BlockName(const TensorState* ts, uint64_t block) {
  return "tensor '" + ts->name + "' block " + std::to_string(block);
}

struct PrefetchState {
  std::mutex mu;
  uint64_t pending ABSL_GUARDED_BY(mu) = 0;
  absl::Status first_error ABSL_GUARDED_BY(mu);
  std::condition_variable cv;
  void Done(const absl::Status& status);
};

// What tests may swap in (engine/testing.h).
struct TierOverrides {
  std::unique_ptr<tiers::IoBackend> nvme_backend;
};

class EngineCore {
 public:
  static absl::StatusOr<std::unique_ptr<EngineCore>> Create(
      EngineOptions options, TierOverrides overrides);
  static std::unique_ptr<Engine> Wrap(std::unique_ptr<EngineCore> core);
  ~EngineCore();

  absl::StatusOr<Tensor> CreateTensor(std::string_view name,
                                      const TensorSpec& spec);
  absl::StatusOr<Tensor> OpenTensor(std::string_view name);
  absl::Status DropTensor(const Tensor& tensor);
  absl::StatusOr<strata::Pin> Pin(const Tensor& tensor, uint64_t block,
                                  Tier tier, Access access);
  absl::StatusOr<PrefetchHandle> Prefetch(const Tensor& tensor,
                                          BlockRange range, Tier tier);
  absl::Status Flush(const Tensor& tensor);
  absl::Status FlushAll();
  absl::Status BeginStep();
  absl::Status EndStep();
  EngineStats GetStats() const;
  absl::Status Close();
  const EngineOptions& options() const { return options_; }

  // Unpins without a Pin (Flush's own read pins).
  void Unpin(BlockSlot* slot, Access access);
  // Called by a Pin whose unpin found waiters.
  void WakeAfterUnpin(BlockSlot* slot) { Wake(slot); }

 private:
  struct Victim {
    TensorState* tensor;
    uint64_t block;
    BlockSlot* slot;
    uint64_t word;  // the word as claimed (state evicting)
    std::shared_ptr<TensorState> owner = nullptr;  // keeps `tensor` alive
  };
  // What one round of eviction did.
  struct EvictResult {
    size_t freed = 0;    // frames free now (clean victims)
    size_t started = 0;  // dirty victims whose write-back is under way
    absl::Status error;  // why nothing could be freed or started
  };
  struct AsyncWriteBack;
  struct MoverJob {
    std::vector<std::pair<std::shared_ptr<TensorState>, uint64_t>> blocks;
    std::shared_ptr<PrefetchState> prefetch;  // may be null
  };
  struct AsyncLoad;

  EngineCore(EngineOptions options, std::unique_ptr<tiers::HostTier> host,
             std::unique_ptr<tiers::Tier> nvme,
             std::unique_ptr<policy::EvictionPolicy> policy);

  void Log(std::string_view message) const;
  absl::Status CheckOpen() const;
  absl::StatusOr<TensorState*> CheckTensor(const Tensor& tensor) const;
  absl::Status PinError(const Tensor& tensor, uint64_t block, Tier tier) const;
  strata::Pin MakePin(TensorState* ts, uint64_t block, BlockSlot* slot,
                      Access access);
  absl::StatusOr<strata::Pin> PinGated(const Tensor& tensor, uint64_t block,
                                       Tier tier, Access access);
  // Sets or clears `bit` in the gate of every tensor (and of later ones).
  void SetGate(uint32_t bit, bool on);
  absl::StatusOr<strata::Pin> PinSlow(TensorState* ts, uint64_t block,
                                      Access access, ThreadRing* ring,
                                      int64_t start_ns);

  ThreadRing* LocalRing();  // inline in core.cc: the hot path
  ThreadRing* RegisterThread();
  void DrainLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(policy_mu_);

  // Waiting on a state word without spinning: returns false at the deadline.
  // (std::mutex, not absl::Mutex, throughout: Debian's Abseil is not built
  // for ThreadSanitizer, which then misses absl::Mutex's ordering.)
  using Deadline = std::chrono::steady_clock::time_point;
  Deadline WaitDeadline() const;
  bool WaitForChange(BlockSlot* slot, uint64_t seen, Deadline deadline);
  void Wake(BlockSlot* slot);
  // Moves the word to `desired`, keeping no waiter bit, and wakes waiters.
  void Publish(BlockSlot* slot, uint64_t desired);

  // Loading and eviction.
  absl::StatusOr<tiers::Frame> AllocateFrame(uint64_t bytes);
  // Claims up to `count` victims: clean ones are dropped at once, dirty ones
  // start their write-back, and their frames come back when the lower tier
  // acknowledges (OnWriteBackDone). Many write-backs stay in flight, so the
  // NVMe queue stays deep while the caller goes on.
  EvictResult EvictSome(size_t count);
  // After an allocation: starts write-backs early when free frames run low.
  void EvictAhead();
  void DropVictim(const Victim& v);
  void RestoreVictim(const Victim& v);
  size_t StartWriteBack(std::vector<Victim>& dirty, absl::Status* error);
  static void OnWriteBackDone(tiers::Transfer* t);
  // A failed asynchronous write-back's error waits here, by block, for the
  // next caller that needs space (invariant 4: the error reaches who needed
  // the space). A later acknowledged write of that block withdraws it.
  void SetWriteBackError(uint64_t key, const absl::Status& status);
  void ClearWriteBackError(uint64_t key);
  absl::Status TakeWriteBackError();
  // `clean_only`: refuse dirty blocks (the lower tier cannot take them).
  std::vector<Victim> ClaimVictims(size_t count, bool clean_only);
  bool TryClaim(uint64_t key, bool take_prefetched, bool clean_only,
                Victim* out);
  // Frames held by a block in transit (a load that has its frame, or an
  // eviction that has claimed one) come back soon: a thread that found
  // nothing to evict waits for them instead of failing.
  void TransitBegin() { frames_in_transit_.fetch_add(1); }
  void TransitEnd();
  bool WaitForSpace(uint64_t seen_epoch, Deadline deadline);
  // Flush's synchronous path: writes the blocks' host bytes to the NVMe tier
  // (one batch), waits, and records each acknowledged copy; statuses[i] says
  // how item i fared. (Eviction writes back asynchronously: StartWriteBack.)
  void WriteBack(std::span<const Victim> items,
                 std::vector<absl::Status>& statuses);
  absl::Status FillFrame(TensorState* ts, uint64_t block, BlockSlot* slot,
                         uint64_t version, std::byte* data);
  void ForgetBlock(TensorState* ts, uint64_t block, BlockSlot* slot);

  // The mover thread: prefetches along Prefetch requests and step plans.
  void MoverLoop();
  // Stops the mover and waits for every asynchronous load and write-back.
  void StopMover();
  void RunMoverJob(MoverJob& job);
  void Enqueue(MoverJob job);
  static void OnAsyncLoadDone(tiers::Transfer* t);
  void FinishAsyncLoad(AsyncLoad* load, absl::Status status);

  void OnStepPin(TensorState* ts, uint64_t block);
  // Sequential readahead, like a file system's: a demand miss right after
  // the previous one starts a window of `readahead_window_` blocks on the
  // mover; the first pin of a block it brought slides the window on.
  void OnDemandMiss(TensorState* ts, uint64_t block);
  void OnPrefetchedHit(TensorState* ts, uint64_t block);
  void ExtendReadahead(TensorState* ts, uint64_t from, uint64_t expected_to,
                       uint64_t count);
  std::shared_ptr<TensorState> TensorById(uint32_t id) const;

  const EngineOptions options_;
  const uint64_t uid_;  // tells this engine's thread rings from others'
  std::unique_ptr<tiers::HostTier> host_;
  std::unique_ptr<tiers::Tier> nvme_;
  std::atomic<bool> closed_{false};

  mutable std::mutex catalog_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<TensorState>> by_name_
      ABSL_GUARDED_BY(catalog_mu_);
  std::vector<std::shared_ptr<TensorState>> by_id_ ABSL_GUARDED_BY(catalog_mu_);

  std::mutex policy_mu_;
  std::unique_ptr<policy::EvictionPolicy> policy_ ABSL_GUARDED_BY(policy_mu_);

  mutable std::mutex rings_mu_;
  std::vector<std::unique_ptr<ThreadRing>> rings_ ABSL_GUARDED_BY(rings_mu_);
  absl::flat_hash_map<std::thread::id, ThreadRing*> ring_of_thread_
      ABSL_GUARDED_BY(rings_mu_);

  struct WaitStripe {
    std::mutex mu;
    std::condition_variable cv;
  };
  static constexpr size_t kWaitStripes = 64;
  std::unique_ptr<WaitStripe[]> stripes_;

  std::atomic<int64_t> frames_in_transit_{0};
  std::atomic<int64_t> writebacks_in_flight_{0};
  size_t max_writebacks_ = 8;
  uint64_t reserve_bytes_ = 0;  // free host bytes EvictAhead keeps
  absl::flat_hash_map<uint64_t, absl::Status> writeback_errors_
      ABSL_GUARDED_BY(space_mu_);
  std::atomic<bool> has_writeback_errors_{false};
  std::mutex space_mu_;
  std::condition_variable space_cv_;
  std::atomic<uint64_t> space_epoch_{0};

  // Engine-wide counters of the slow paths.
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> nvme_errors_{0};
  std::atomic<uint64_t> write_backs_{0};
  std::atomic<uint64_t> host_bytes_in_{0};
  std::atomic<uint64_t> host_bytes_out_{0};

  // Mover.
  std::mutex mover_mu_;
  std::condition_variable mover_cv_;  // jobs, stop, async_in_flight_ == 0
  std::deque<MoverJob> jobs_ ABSL_GUARDED_BY(mover_mu_);
  bool stop_mover_ ABSL_GUARDED_BY(mover_mu_) = false;
  uint64_t async_in_flight_ ABSL_GUARDED_BY(mover_mu_) = 0;
  std::thread mover_;

  uint32_t gate_ ABSL_GUARDED_BY(catalog_mu_) = 0;  // for new tensors

  // Step hints.
  std::mutex step_mu_;
  bool in_step_ ABSL_GUARDED_BY(step_mu_) = false;
  bool recording_ ABSL_GUARDED_BY(step_mu_) = false;
  std::vector<std::pair<std::shared_ptr<TensorState>, uint64_t>> plan_
      ABSL_GUARDED_BY(step_mu_);
  uint64_t step_pos_ ABSL_GUARDED_BY(step_mu_) = 0;
  uint64_t prefetched_to_ ABSL_GUARDED_BY(step_mu_) = 0;
  size_t lookahead_ = 16;
  size_t readahead_window_ = 8;
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_ENGINE_CORE_H_
