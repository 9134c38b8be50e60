// Shared tensors: the engine's face of the node segment (tiers/shm). A
// shared tensor's blocks and their states live in the segment, so every
// attached process sees one truth; this part turns the engine's handles
// and pins into the segment's, and counts this engine's live shm pins (so
// that Close refuses while one lives).
//
// A shared tensor's TensorState (one per tensor and process, however often
// it is opened) is registered with the catalog by id, has the chain's
// columns for its private copies, and carries TensorState::kGateShared,
// which sends every pin of it to EngineCore::PinShared. Its private copies
// (host, gpu) are read-only snapshots of the segment's block: the loader
// copies them from there (Source::kShared), and a pin that finds the block
// sealed again since drops the copy and loads it anew.
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
#include <mutex>
#include <utility>
#include <string_view>

#include "absl/container/flat_hash_map.h"
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
      const EngineOptions& options, EngineCore* core, Catalog& catalog,
      int chain_size);

  absl::StatusOr<Tensor> Create(std::string_view name, const TensorSpec& spec,
                                bool open_existing);
  absl::StatusOr<Tensor> Open(std::string_view name);
  // Removes the tensor from the segment (DropTensor, with the private
  // copies claimed): kFailedPrecondition while a process pins it there.
  absl::Status Remove(TensorState& ts);
  // The segment's version of a block (see Segment::SealedVersion).
  absl::StatusOr<uint64_t> SealedVersion(const TensorState& ts, uint64_t block) const {
    return segment_->SealedVersion(*ts.info->shared_ref, block);
  }
  // A resident block's read pin without leaving the header (see
  // Segment::TryPinRead); false: call Pin.
  static bool TryPinRead(const TensorState& ts, uint64_t block,
                         tiers::shm::SharedPin* pin) {
    return tiers::shm::Segment::TryPinRead(*ts.info->shared_ref, block, pin);
  }
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
                Catalog& catalog, int chain_size,
                std::unique_ptr<tiers::shm::Segment> segment)
      : options_(options), core_(core), catalog_(catalog),
        chain_size_(chain_size), segment_(std::move(segment)) {}
  absl::StatusOr<Tensor> Handle(const tiers::shm::SharedRef& ref);

  const EngineOptions& options_;
  EngineCore* const core_;
  Catalog& catalog_;
  const int chain_size_;
  std::unique_ptr<tiers::shm::Segment> segment_;
  const std::shared_ptr<StateArena> arena_ = std::make_shared<StateArena>();
  // Handles opened so far, by directory slot and generation.
  std::mutex mu_;
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, std::weak_ptr<TensorState>>
      open_;
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_SHARED_TENSORS_H_
