// The engine behind strata::Engine: owns the parts (engine/parts.h lists
// them) and implements the public calls on top of them — the pin protocol
// (hot path and slow path), Prefetch, Flush, DropTensor, Close and GetStats.
//
// The hot path of a pin: the tensor handle leads to the tensor's column of
// copy slots for the tier; one load of the tensor's gate word (dropped,
// closing, or a step sends the pin to PinGated), then a resident copy is
// pinned by one load and one CAS of its state word. Everything
// else is the slow path, where the pin may wait — for a conflicting pin, a
// load, or space — always with a deadline.
//
// Threads: every public method is thread-safe.
#ifndef STRATA_ENGINE_ENGINE_CORE_H_
#define STRATA_ENGINE_ENGINE_CORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "engine/block_hook.h"
#include "engine/block_table.h"
#include "engine/lifecycle.h"
#include "engine/parts.h"
#include "engine/wait_table.h"
#include "tiers/tier.h"

namespace strata::tiers {
class IoBackend;
class GpuDevice;
}

namespace strata::internal {

struct ThreadRing;
struct ThreadState;
class SharedTensors;
class TierChain;

// What tests may put in place of the tiers the engine would build
// (engine/testing.h).
struct TierOverrides {
  // Out of line (tier_factory.cc): only the factory sees the tier types.
  TierOverrides();
  ~TierOverrides();
  TierOverrides(TierOverrides&&) noexcept;
  TierOverrides& operator=(TierOverrides&&) noexcept;

  std::unique_ptr<tiers::IoBackend> nvme_backend;
  // The device the GPU tier is built over (from EngineOptions::gpu) instead
  // of CUDA's: a device double gives an engine with a GPU tier on a machine
  // without a GPU, in builds without CUDA too.
  std::shared_ptr<tiers::GpuDevice> gpu_device;
  // Tiers to use for these kinds instead of building them.
  std::map<Tier, std::unique_ptr<tiers::Tier>> tiers;
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
  absl::StatusOr<Tensor> CreateSharedTensor(std::string_view name,
                                            const TensorSpec& spec,
                                            bool open_existing);
  absl::StatusOr<Tensor> OpenSharedTensor(std::string_view name);
  absl::Status DropTensor(const Tensor& tensor);
  absl::StatusOr<strata::Pin> Pin(const Tensor& tensor, uint64_t block,
                                  Tier tier, Access access);
  absl::StatusOr<std::optional<strata::Pin>> TryPin(const Tensor& tensor,
                                                    uint64_t block, Tier tier,
                                                    Access access);
  absl::StatusOr<strata::Pin> PinAsync(const Tensor& tensor, uint64_t block,
                                       Tier tier, Access access);
  absl::StatusOr<PrefetchHandle> Prefetch(const Tensor& tensor,
                                          BlockRange range, Tier tier);
  absl::StatusOr<PrefetchHandle> PrefetchBlocks(const Tensor& tensor,
                                                std::span<const uint64_t> blocks,
                                                Tier tier);
  absl::Status Flush(const Tensor& tensor);
  absl::Status FlushAll();
  absl::Status BeginStep();
  absl::Status EndStep();
  EngineStats GetStats() const;
  absl::Status Close();
  const EngineOptions& options() const { return options_; }

  // The tier and frame of a live GPU pin, for its stream-ordering calls.
  // kFailedPrecondition for an empty pin or a pin of another tier.
  static absl::StatusOr<std::pair<tiers::Tier*, tiers::Frame>> DeviceFrame(
      const strata::Pin& pin);

  // Pin::Synchronize: waits until the copy of a live GPU pin is no longer
  // in flight, then returns the copy's error.
  static absl::Status Synchronize(const strata::Pin& pin);

  // Called by a Pin whose unpin found waiters.
  void WakeAfterUnpin(std::atomic<uint64_t>& word) { waits_.Wake(word); }
  // The node segment, or null when kShm is not in EngineOptions::tiers.
  SharedTensors* shared() const { return shared_.get(); }

  // For tests and benchmarks that look inside (not part of the API): the
  // core behind `engine`, its chain, and the bytes of the blocks whose copy
  // in `tier` is resident (block sizes, not frame sizes; O(blocks)).
  static EngineCore& Of(const Engine& engine) { return *engine.core_; }
  const TierChain& chain() const { return *chain_; }
  uint64_t ResidentBytes(Tier tier) const;
  // Whether a thread waits for the copy of `block` in `tier` to change (a
  // test's way to know that a call it started is parked on that copy).
  bool CopyHasWaiters(const Tensor& tensor, Tier tier, uint64_t block) const;
  bool WaitForBackgroundWork(Deadline deadline);
  void PauseBackgroundWork();
  void ResumeBackgroundWork();
  void SetEvictionHook(BlockHook::Fn hook);
  void SetLoadSourceHook(BlockHook::Fn hook);

 private:
  using MaybePin = absl::StatusOr<std::optional<strata::Pin>>;

  EngineCore(EngineOptions options, std::unique_ptr<TierChain> chain);
  absl::Status Build();

  // Pin paths. Pin's and TryPin's shared hot path: whether a pin may take
  // it, the resident pin's CAS (seen 0: a miss; start 0: not timed), and
  // counting a hit.
  struct Hit {
    ThreadRing* ring;
    CopySlot* slot;
    ThreadState* thread;
    uint64_t seen;
    int64_t start;
  };
  bool OnHotPath(const TensorState* ts, int pos, uint64_t block, Access access) const;
  Hit TryHit(TensorState& ts, uint64_t block, int pos, Access access);
  strata::Pin CountHit(TensorState& ts, uint64_t block, int pos, Tier tier,
                       Access access, const Hit& hit);
  // Prefetch's checks of `tier`; the tier's position in the chain.
  absl::StatusOr<int> PrefetchTier(const Tensor& tensor, TensorState& ts,
                                   Tier tier) const;
  static PrefetchHandle MakeHandle(std::shared_ptr<PrefetchState> state,
                                   uint64_t pending);
  absl::StatusOr<strata::Pin> PinRefused(const Tensor& tensor, uint64_t block,
                                         Tier tier, Access access) const;
  absl::StatusOr<strata::Pin> PinShared(const Tensor& tensor, TensorState& ts,
                                        uint64_t block, Tier tier, Access access);
  // A pin of a shared tensor's private copy (host, gpu).
  absl::StatusOr<strata::Pin> PinSharedCopy(const Tensor& tensor, TensorState& ts,
                                            uint64_t block, Tier tier, Access access);
  absl::Status NeedShared() const;
  absl::StatusOr<strata::Pin> PinGated(const Tensor& tensor, uint64_t block,
                                       Tier tier, Access access);
  absl::StatusOr<std::optional<strata::Pin>> TryPinGated(
      const Tensor& tensor, uint64_t block, Tier tier, Access access);
  absl::StatusOr<strata::Pin> PinSlow(const Tensor& tensor, uint64_t block,
                                      int pos, Access access,
                                      ThreadState& thread, int64_t start_ns,
                                      bool async = false);
  // A pin whose copy kept changing until its deadline.
  absl::Status PinTimedOut(const TensorState& ts, uint64_t block, int pos,
                           uint64_t rounds) const;
  // `async`: PinAsync's read pin of a GPU copy, granted while the copy is in
  // flight.
  MaybePin PinResident(TensorState& ts, uint64_t block, int pos, Access access,
                       uint64_t seen, Deadline deadline, ThreadState& thread,
                       int64_t start_ns, bool async);
  MaybePin PinInTransit(TensorState& ts, uint64_t block, int pos,
                        uint64_t seen, Deadline deadline);
  MaybePin PinAbsent(const Tensor& tensor, uint64_t block, int pos,
                     Access access, uint64_t seen, Deadline deadline,
                     ThreadState& thread, int64_t start_ns, bool async);
  // Counts a granted pin (hit or miss) and builds the handle.
  strata::Pin Grant(TensorState& ts, uint64_t block, int pos, Access access,
                    ThreadState& thread, bool hit, uint64_t seen,
                    int64_t start_ns);
  strata::Pin MakePin(TensorState& ts, uint64_t block, int pos,
                      Access access);
  strata::Pin MakePin(const TensorState& ts, uint64_t block, CopySlot& slot,
                      Tier tier, Access access);

  // DropTensor's steps.
  absl::Status ClaimEveryCopy(TensorState& ts, std::vector<uint64_t>& claimed,
                              std::string_view caller);
  // Whether copy `pos` of block `b`, seen as `w` (resident, pinned), is
  // still so and pinned by a caller rather than held by a load as its source.
  bool CallersPin(TensorState& ts, uint64_t b, int pos, uint64_t w);
  void RollBackClaims(TensorState& ts, const std::vector<uint64_t>& claimed);
  // Ends the transit that claiming resident copies began.
  void EndClaims(const TensorState& ts, const std::vector<uint64_t>& claimed);
  void ForgetEveryCopy(TensorState& ts);

  absl::Status ClaimForClose();
  void Interrupt();
  void FillTierStats(int pos, TierStats& out) const;

  const EngineOptions options_;
  const uint64_t uid_;
  WaitTable waits_;
  Lifecycle life_;
  std::unique_ptr<TierChain> chain_;
  EngineParts parts_;
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<Stats> stats_;
  std::vector<std::unique_ptr<Residency>> residency_;
  std::unique_ptr<WriteBacks> write_backs_;
  std::unique_ptr<Loader> loader_;
  std::unique_ptr<Steps> steps_;
  std::unique_ptr<Mover> mover_;
  std::unique_ptr<SharedTensors> shared_;  // null without kShm
  // Chain position of each pinnable tier by the Tier's byte, -1 otherwise
  // (a Tier cast from a bad integer included).
  std::array<int8_t, 256> pin_pos_;
  std::array<Tier, kMaxChain> kind_of_{};  // chain position -> kind
  std::mutex close_mu_;
  bool closed_ = false;  // Close succeeded (under close_mu_)
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_ENGINE_CORE_H_
