#include "engine/shared_tensors.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/catalog.h"
#include "util/status_macros.h"
#include "util/strings.h"

namespace strata::internal {

namespace {
tiers::shm::OpenMode ModeOf(ShmTierOptions::Open open) {
  switch (open) {
    case ShmTierOptions::Open::kCreate: return tiers::shm::OpenMode::kCreate;
    case ShmTierOptions::Open::kAttach: return tiers::shm::OpenMode::kAttach;
    case ShmTierOptions::Open::kCreateOrAttach: break;
  }
  return tiers::shm::OpenMode::kCreateOrAttach;
}
}  // namespace

absl::StatusOr<std::unique_ptr<SharedTensors>> SharedTensors::Open(
    const EngineOptions& options, EngineCore* core, Catalog& catalog,
    int chain_size) {
  if (options.shm.name.empty()) {
    return absl::InvalidArgumentError(
        "EngineOptions::shm.name is empty; name the node segment (1 to 200 of "
        "[A-Za-z0-9_.-]), or leave Tier::kShm out of EngineOptions::tiers");
  }
  tiers::shm::SegmentOptions so;
  so.name = options.shm.name;
  so.mode = ModeOf(options.shm.open);
  so.capacity_bytes = options.shm.capacity_bytes;
  so.max_processes = options.shm.max_processes;
  so.max_tensors = options.shm.max_tensors;
  so.spill_dir = options.shm.spill_path;
  so.clock_max = tiers::shm::ClockMaxForPolicy(options.policy);
  so.log = options.log;
  STRATA_ASSIGN_OR_RETURN(auto segment, tiers::shm::Segment::Open(std::move(so)));
  return std::unique_ptr<SharedTensors>(
      new SharedTensors(options, core, catalog, chain_size, std::move(segment)));
}

absl::StatusOr<Tensor> SharedTensors::Handle(const tiers::shm::SharedRef& ref) {
  std::lock_guard lock(mu_);
  const std::pair<uint32_t, uint64_t> key{ref.index, ref.generation};
  if (auto it = open_.find(key); it != open_.end()) {
    if (std::shared_ptr<TensorState> ts = it->second.lock(); ts != nullptr && !ts->dropped()) {
      return Catalog::Handle(std::move(ts));
    }
  }
  std::shared_ptr<TensorState> ts = NewTensorState(arena_, ref.spec.num_blocks, chain_size_);
  if (ts == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shared tensor '", ref.name, "': no memory for the table of its ",
        ref.spec.num_blocks, " blocks' private copies"));
  }
  ts->core = core_;
  ts->num_blocks = ref.spec.num_blocks;
  ts->block_bytes = ref.spec.block_bytes;
  ts->size_bytes = ref.spec.size_bytes;
  ts->info->name = ref.name;
  ts->info->spec = {.dtype = ref.spec.dtype, .shape = ref.spec.shape,
                    .block_bytes = ref.spec.block_bytes};
  ts->info->shared = true;
  ts->info->shared_ref = std::make_shared<const tiers::shm::SharedRef>(ref);
  ts->gate.store(TensorState::kGateShared, std::memory_order_release);
  STRATA_RETURN_IF_ERROR(catalog_.AddShared(ts));
  open_[key] = ts;
  return Catalog::Handle(std::move(ts));
}

absl::StatusOr<Tensor> SharedTensors::Create(std::string_view name,
                                             const TensorSpec& spec,
                                             bool open_existing) {
  uint64_t bytes = 0, block_bytes = 0;
  STRATA_RETURN_IF_ERROR(catalog_.Validate(name, spec, &bytes, &block_bytes));
  tiers::shm::SharedSpec shared{.dtype = spec.dtype,
                                .shape = spec.shape,
                                .block_bytes = block_bytes,
                                .size_bytes = bytes,
                                .num_blocks = (bytes + block_bytes - 1) / block_bytes};
  STRATA_ASSIGN_OR_RETURN(tiers::shm::SharedRef ref,
                          segment_->CreateTensor(name, shared, open_existing));
  return Handle(ref);
}

absl::StatusOr<Tensor> SharedTensors::Open(std::string_view name) {
  STRATA_ASSIGN_OR_RETURN(tiers::shm::SharedRef ref, segment_->OpenTensor(name));
  return Handle(ref);
}

absl::Status SharedTensors::Remove(TensorState& ts) {
  STRATA_RETURN_IF_ERROR(segment_->RemoveTensor(*ts.info->shared_ref));
  std::lock_guard lock(mu_);
  open_.erase({ts.info->shared_ref->index, ts.info->shared_ref->generation});
  return absl::OkStatus();
}

void SharedTensors::FillStats(TierStats& out) const {
  out.present = true;
  out.capacity_bytes = segment_->capacity_bytes();
  if (absl::StatusOr<ShmSegmentInfo> s = segment_->Stat(); s.ok()) {
    out.used_bytes = s->used_bytes;
    out.pinned_bytes = s->pinned_bytes;
    out.evictions = s->spills;  // node-wide: every process's evictions
  }
}

}  // namespace strata::internal
