// Shared tensors: the engine's face of the node segment (tiers/shm). A
// shared tensor's blocks and their states live in the segment, so every
// attached process sees one truth; this part turns the engine's handles
// and pins into the segment's, and counts this engine's live shm pins (so
// that Close refuses while one lives).
//
// A shared tensor's TensorState has no columns (chain_size 0) and carries
// TensorState::kGateShared, which sends every pin of it off the hot path to
// EngineCore::PinShared.
//
// The shm tier is not a column of the chain: it holds shared tensors only,
// and private tensors' blocks move between the other tiers.
//
// Threads: thread-safe (the segment is).
#ifndef STRATA_ENGINE_SHARED_TENSORS_H_
#define STRATA_ENGINE_SHARED_TENSORS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "engine/block_table.h"
#include "tiers/shm/segment.h"

namespace strata::internal {

class Catalog;

class SharedTensors {
 public:
  // Attaches to (or creates) the segment EngineOptions::shm names.
  static absl::StatusOr<std::unique_ptr<SharedTensors>> Open(
      const EngineOptions& options, EngineCore* core, const Catalog& catalog);

  absl::StatusOr<Tensor> Create(std::string_view name, const TensorSpec& spec,
                                bool open_existing);
  absl::StatusOr<Tensor> Open(std::string_view name);
  absl::Status Drop(TensorState& ts);
  absl::StatusOr<tiers::shm::SharedPin> Pin(const TensorState& ts, uint64_t block,
                                            Access access) {
    return segment_->Pin(*ts.info->shared_ref, block, access, options_.pin_wait_timeout);
  }
  void Unpin(void* record, void* count, bool write) {
    segment_->Unpin(static_cast<tiers::shm::BlockRecord*>(record),
                    static_cast<std::atomic<uint32_t>*>(count), write);
  }

  void Cancel(const tiers::shm::SharedPin& pin, bool write) { segment_->Cancel(pin, write); }
  // Pins of shared tensors this process holds (O(blocks): for Close).
  uint64_t live_pins() const { return segment_->PinsHeld(); }
  void FillStats(TierStats& out) const;
  tiers::shm::Segment& segment() { return *segment_; }

 private:
  SharedTensors(const EngineOptions& options, EngineCore* core,
                const Catalog& catalog,
                std::unique_ptr<tiers::shm::Segment> segment)
      : options_(options), core_(core), catalog_(catalog),
        segment_(std::move(segment)) {}
  absl::StatusOr<Tensor> Handle(const tiers::shm::SharedRef& ref);

  const EngineOptions& options_;
  EngineCore* const core_;
  const Catalog& catalog_;
  std::unique_ptr<tiers::shm::Segment> segment_;
  const std::shared_ptr<StateArena> arena_ = std::make_shared<StateArena>();
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_SHARED_TENSORS_H_
