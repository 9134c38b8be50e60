// strata::Engine and its handles: the thin public face over EngineCore.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "engine/engine_core.h"
#include "engine/options.h"
#include "engine/prefetch_state.h"
#include "engine/shared_tensors.h"
#include "engine/testing.h"
#include "engine/tier_factory.h"
#include "tiers/shm/segment.h"
#include "util/status_macros.h"

namespace strata {

uint64_t Tensor::block_size(uint64_t block) const {
  if (block >= num_blocks_) return 0;
  return block + 1 < num_blocks_ ? block_bytes_
                                 : size_bytes_ - block * block_bytes_;
}

absl::Status Pin::Release() {
  if (word_ == nullptr) {
    return absl::FailedPreconditionError(
        released_ ? "pin already released; release a pin once"
                  : "pin is empty (default-constructed or moved from)");
  }
  Drop();
  return absl::OkStatus();
}

void Pin::WakeWaiters() noexcept { core_->WakeAfterUnpin(*word_); }

void Pin::DropShared() noexcept {
  core_->shared()->Unpin(word_, aux_, access_ != Access::kRead);
  Forget();
  released_ = true;
}

absl::StatusOr<std::vector<std::string>> ListShmSegments() {
  return tiers::shm::Segment::List();
}

absl::StatusOr<ShmSegmentInfo> InspectShmSegment(std::string_view name) {
  tiers::shm::SegmentOptions options;
  options.name = std::string(name);
  options.mode = tiers::shm::OpenMode::kAttach;
  options.reclaim_interval = absl::ZeroDuration();
  STRATA_ASSIGN_OR_RETURN(auto segment, tiers::shm::Segment::Open(std::move(options)));
  return segment->Stat(/*include_self=*/false);
}

absl::Status RemoveShmSegment(std::string_view name) {
  return tiers::shm::Segment::Remove(name);
}

absl::StatusOr<GpuEvent> Pin::ready_event() const {
  STRATA_ASSIGN_OR_RETURN(auto where, internal::EngineCore::DeviceFrame(*this));
  return where.first->ReadyEvent(where.second);
}

absl::Status Pin::WaitOn(GpuStream stream) const {
  STRATA_ASSIGN_OR_RETURN(auto where, internal::EngineCore::DeviceFrame(*this));
  return where.first->WaitReady(where.second, stream);
}

absl::Status Pin::Synchronize() const {
  return internal::EngineCore::Synchronize(*this);
}

absl::Status Pin::ReleaseAfter(GpuStream stream) {
  return ReleaseAfter(std::span<const GpuStream>(&stream, 1));
}

absl::Status Pin::ReleaseAfter(std::span<const GpuStream> streams) {
  STRATA_ASSIGN_OR_RETURN(auto where, internal::EngineCore::DeviceFrame(*this));
  // A fence recorded before a later one fails only keeps the frame a while
  // longer (until its stream got there): harmless, so none is undone.
  for (GpuStream stream : streams) {
    STRATA_RETURN_IF_ERROR(where.first->FenceAfter(where.second, stream));
  }
  Drop();
  return absl::OkStatus();
}

absl::Status PrefetchHandle::Wait() const {
  if (state_ == nullptr) {
    return absl::FailedPreconditionError("empty PrefetchHandle");
  }
  std::unique_lock lock(state_->mu);
  state_->cv.wait(lock, [this] { return state_->pending == 0; });
  return state_->first_error;
}

bool PrefetchHandle::done() const {
  if (state_ == nullptr) return true;
  std::unique_lock lock(state_->mu);
  return state_->pending == 0;
}

Engine::Engine(std::unique_ptr<internal::EngineCore> core)
    : core_(std::move(core)) {}
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(EngineOptions options) {
  return testing::OpenWithTiers(std::move(options), {});
}

namespace testing {

absl::StatusOr<std::unique_ptr<Engine>> OpenWithTiers(
    EngineOptions options, internal::TierOverrides overrides) {
  STRATA_ASSIGN_OR_RETURN(
      auto core,
      internal::EngineCore::Create(std::move(options), std::move(overrides)));
  return internal::EngineCore::Wrap(std::move(core));
}

bool CopyHasWaiters(const Engine& engine, const Tensor& tensor, Tier tier,
                    uint64_t block) {
  return internal::EngineCore::Of(engine).CopyHasWaiters(tensor, tier, block);
}

bool WaitForBackgroundWork(Engine& engine, absl::Duration limit) {
  return internal::EngineCore::Of(engine).WaitForBackgroundWork(
      internal::Clock::now() + absl::ToChronoNanoseconds(limit));
}

void PauseBackgroundWork(Engine& engine) {
  internal::EngineCore::Of(engine).PauseBackgroundWork();
}

void ResumeBackgroundWork(Engine& engine) {
  internal::EngineCore::Of(engine).ResumeBackgroundWork();
}

void SetEvictionHook(
    Engine& engine,
    std::function<void(std::string_view tensor, uint64_t block, Tier from)> hook) {
  internal::EngineCore::Of(engine).SetEvictionHook(std::move(hook));
}

void SetLoadSourceHook(
    Engine& engine,
    std::function<void(std::string_view tensor, uint64_t block, Tier into)> hook) {
  internal::EngineCore::Of(engine).SetLoadSourceHook(std::move(hook));
}

}  // namespace testing

absl::StatusOr<Tensor> Engine::CreateTensor(std::string_view name,
                                            const TensorSpec& spec) {
  return core_->CreateTensor(name, spec);
}
absl::StatusOr<Tensor> Engine::OpenTensor(std::string_view name) {
  return core_->OpenTensor(name);
}
absl::StatusOr<Tensor> Engine::CreateSharedTensor(std::string_view name,
                                                  const TensorSpec& spec,
                                                  bool open_existing) {
  return core_->CreateSharedTensor(name, spec, open_existing);
}
absl::StatusOr<Tensor> Engine::OpenSharedTensor(std::string_view name) {
  return core_->OpenSharedTensor(name);
}
absl::Status Engine::DropTensor(const Tensor& tensor) {
  return core_->DropTensor(tensor);
}
absl::StatusOr<strata::Pin> Engine::Pin(const Tensor& tensor, uint64_t block,
                                        Tier tier, Access access) {
  return core_->Pin(tensor, block, tier, access);
}
absl::StatusOr<strata::Pin> Engine::PinAsync(const Tensor& tensor,
                                             uint64_t block, Tier tier,
                                             Access access) {
  return core_->PinAsync(tensor, block, tier, access);
}
absl::StatusOr<std::optional<strata::Pin>> Engine::TryPin(
    const Tensor& tensor, uint64_t block, Tier tier, Access access) {
  return core_->TryPin(tensor, block, tier, access);
}
absl::StatusOr<PrefetchHandle> Engine::Prefetch(const Tensor& tensor,
                                                BlockRange range, Tier tier) {
  return core_->Prefetch(tensor, range, tier);
}
absl::StatusOr<PrefetchHandle> Engine::PrefetchBlocks(
    const Tensor& tensor, std::span<const uint64_t> blocks, Tier tier) {
  return core_->PrefetchBlocks(tensor, blocks, tier);
}
absl::Status Engine::Flush(const Tensor& tensor) { return core_->Flush(tensor); }
absl::Status Engine::FlushAll() { return core_->FlushAll(); }
absl::Status Engine::BeginStep() { return core_->BeginStep(); }
absl::Status Engine::EndStep() { return core_->EndStep(); }
EngineStats Engine::GetStats() const { return core_->GetStats(); }
absl::Status Engine::Close() { return core_->Close(); }
const EngineOptions& Engine::options() const { return core_->options(); }

namespace internal {

std::unique_ptr<Engine> EngineCore::Wrap(std::unique_ptr<EngineCore> core) {
  return std::unique_ptr<Engine>(new Engine(std::move(core)));
}

absl::StatusOr<std::unique_ptr<EngineCore>> EngineCore::Create(
    EngineOptions options, TierOverrides overrides) {
  if (!options.log) {
    options.log = [](std::string_view m) {
      std::fprintf(stderr, "%.*s\n", static_cast<int>(m.size()), m.data());
    };
  }
  STRATA_RETURN_IF_ERROR(ValidateOptions(options));
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<TierChain> chain,
                          BuildChain(options, std::move(overrides)));
  std::unique_ptr<EngineCore> core(
      new EngineCore(std::move(options), std::move(chain)));
  STRATA_RETURN_IF_ERROR(core->Build());
  return core;
}

}  // namespace internal
}  // namespace strata
