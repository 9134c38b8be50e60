// strata::Engine and its handles: option validation, the catalog, statistics
// and shutdown. The block paths live in core.cc.
#include <cstdio>
#include <new>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/engine_core.h"
#include "engine/testing.h"
#include "engine/tier_factory.h"
#include "tiers/nvme/io_backend.h"
#include "util/status_macros.h"

namespace strata {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kGpu: return "gpu";
    case Tier::kHost: return "host";
    case Tier::kShm: return "shm";
    case Tier::kRemote: return "remote";
    case Tier::kNvme: return "nvme";
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kU8:
    case DType::kI8: return 1;
    case DType::kF16:
    case DType::kBF16: return 2;
    case DType::kI32:
    case DType::kF32: return 4;
    case DType::kI64:
    case DType::kF64: return 8;
  }
  return 0;
}

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

void Pin::WakeWaiters() noexcept {
  // The word is the first member of its slot.
  core_->WakeAfterUnpin(reinterpret_cast<internal::BlockSlot*>(word_));
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

namespace {

absl::Status ValidateOptions(const EngineOptions& o) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("EngineOptions::", parts...));
  };
  if (o.host.capacity_bytes == 0) {
    return bad("host.capacity_bytes is 0; give the host tier room for at "
               "least one block (default 256 MiB)");
  }
  if (o.host.capacity_bytes % 4096 != 0) {
    return bad("host.capacity_bytes ", o.host.capacity_bytes,
               " is not a multiple of 4096");
  }
  if (o.host.numa_node < -1) {
    return bad("host.numa_node ", o.host.numa_node,
               " is invalid; use -1 (caller's node) or a node number");
  }
  if (o.default_block_bytes == 0 || o.default_block_bytes % 4096 != 0 ||
      o.default_block_bytes > (uint64_t{1} << 30)) {
    return bad("default_block_bytes ", o.default_block_bytes,
               " must be a non-zero multiple of 4096 of at most 1 GiB");
  }
  if (o.default_block_bytes > o.host.capacity_bytes) {
    return bad("default_block_bytes ", o.default_block_bytes,
               " exceeds host.capacity_bytes ", o.host.capacity_bytes,
               "; the host tier must hold at least one block");
  }
  if (o.nvme.enabled) {
    if (o.nvme.path.empty()) {
      return bad("nvme.path is empty; name a writable directory, or set "
                 "nvme.enabled = false");
    }
    if (o.nvme.capacity_bytes == 0) {
      return bad("nvme.capacity_bytes is 0; give the NVMe tier room, or set "
                 "nvme.enabled = false");
    }
    if (o.nvme.queue_depth == 0 || o.nvme.queue_depth > 4096) {
      return bad("nvme.queue_depth ", o.nvme.queue_depth,
                 " must be in 1..4096");
    }
  }
  bool known = false;
  for (std::string_view name : policy::EnginePolicyNames()) {
    known = known || name == o.policy;
  }
  if (!known) {
    std::vector<std::string> names;
    for (std::string_view n : policy::EnginePolicyNames()) names.emplace_back(n);
    return bad("policy '", o.policy, "' is unknown; use one of: ",
               absl::StrJoin(names, ", "));
  }
  if (o.readahead_blocks < -1) {
    return bad("readahead_blocks ", o.readahead_blocks,
               " is invalid; use -1 (automatic), 0 (off) or a block count");
  }
  if (o.pin_wait_timeout <= absl::ZeroDuration()) {
    return bad("pin_wait_timeout must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

Engine::Engine(std::unique_ptr<internal::EngineCore> core)
    : core_(std::move(core)) {}
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(EngineOptions options) {
  return testing::OpenWithBackend(std::move(options), nullptr);
}

namespace testing {
absl::StatusOr<std::unique_ptr<Engine>> OpenWithBackend(
    EngineOptions options, std::unique_ptr<tiers::IoBackend> nvme_backend) {
  internal::TierOverrides overrides;
  overrides.nvme_backend = std::move(nvme_backend);
  STRATA_ASSIGN_OR_RETURN(
      auto core,
      internal::EngineCore::Create(std::move(options), std::move(overrides)));
  return internal::EngineCore::Wrap(std::move(core));
}
}  // namespace testing

absl::StatusOr<Tensor> Engine::CreateTensor(std::string_view name,
                                            const TensorSpec& spec) {
  return core_->CreateTensor(name, spec);
}
absl::StatusOr<Tensor> Engine::OpenTensor(std::string_view name) {
  return core_->OpenTensor(name);
}
absl::Status Engine::DropTensor(const Tensor& tensor) {
  return core_->DropTensor(tensor);
}
absl::StatusOr<strata::Pin> Engine::Pin(const Tensor& tensor, uint64_t block,
                                        Tier tier, Access access) {
  return core_->Pin(tensor, block, tier, access);
}
absl::StatusOr<PrefetchHandle> Engine::Prefetch(const Tensor& tensor,
                                                BlockRange range, Tier tier) {
  return core_->Prefetch(tensor, range, tier);
}
absl::Status Engine::Flush(const Tensor& tensor) { return core_->Flush(tensor); }
absl::Status Engine::FlushAll() { return core_->FlushAll(); }
absl::Status Engine::BeginStep() { return core_->BeginStep(); }
absl::Status Engine::EndStep() { return core_->EndStep(); }
EngineStats Engine::GetStats() const { return core_->GetStats(); }
absl::Status Engine::Close() { return core_->Close(); }
const EngineOptions& Engine::options() const { return core_->options(); }

namespace internal {

using namespace word;  // NOLINT: the state word's vocabulary

namespace {
// Engine ids only tell one engine's thread rings from another's; they are
// never reused, so a stale thread-local cache can never match a new engine.
std::atomic<uint64_t> engine_uids{1};
}  // namespace

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
  STRATA_ASSIGN_OR_RETURN(TierSet tiers,
                          BuildTiers(options, std::move(overrides.nvme_backend)));
  const size_t frames = options.host.capacity_bytes / options.default_block_bytes;
  STRATA_ASSIGN_OR_RETURN(auto policy,
                          policy::MakePolicy(options.policy, std::max<size_t>(frames, 1)));
  return std::unique_ptr<EngineCore>(new EngineCore(
      std::move(options), std::move(tiers.host), std::move(tiers.nvme),
      std::move(policy)));
}

EngineCore::EngineCore(EngineOptions options,
                       std::unique_ptr<tiers::HostTier> host,
                       std::unique_ptr<tiers::Tier> nvme,
                       std::unique_ptr<policy::EvictionPolicy> policy)
    : options_(std::move(options)),
      uid_(engine_uids.fetch_add(1)),
      host_(std::move(host)),
      nvme_(std::move(nvme)),
      policy_(std::move(policy)),
      stripes_(new WaitStripe[kWaitStripes]) {
  const size_t frames = options_.host.capacity_bytes / options_.default_block_bytes;
  lookahead_ = std::clamp<size_t>(frames / 4, 1, 64);
  // Write-backs in flight at once: deep enough to keep the NVMe queue busy,
  // shallow enough not to evict a big share of the cache early.
  max_writebacks_ = std::clamp<size_t>(frames / 8, 1, options_.nvme.queue_depth);
  reserve_bytes_ = nvme_ == nullptr ? 0 : max_writebacks_ * options_.default_block_bytes;
  readahead_window_ =
      options_.readahead_blocks >= 0
          ? std::min<size_t>(options_.readahead_blocks, frames / 2)
          : std::clamp<size_t>(frames / 8, 1, 32);
  mover_ = std::thread([this] { MoverLoop(); });
}

EngineCore::~EngineCore() {
  absl::Status closed = Close();
  ABSL_ASSERT(closed.ok() && "an engine was destroyed with live pins");
  if (!closed.ok()) {
    // Release builds: shut down anyway; the live pins now dangle.
    closed_.store(true);
    StopMover();
  }
}

void EngineCore::StopMover() {
  {
    std::unique_lock lock(mover_mu_);
    stop_mover_ = true;
    mover_cv_.notify_all();
  }
  if (mover_.joinable()) mover_.join();
  // Loads and write-backs still in flight call back into the engine.
  std::unique_lock lock(mover_mu_);
  mover_cv_.wait(lock, [this] { return async_in_flight_ == 0; });
}

void EngineCore::Log(std::string_view message) const { options_.log(message); }

absl::Status EngineCore::CheckOpen() const {
  if (closed_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        "engine is closed; open a new one with Engine::Open");
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorState*> EngineCore::CheckTensor(const Tensor& tensor) const {
  STRATA_RETURN_IF_ERROR(CheckOpen());
  TensorState* ts = tensor.state_.get();
  if (ts == nullptr) {
    return absl::InvalidArgumentError(
        "empty Tensor handle; get one from CreateTensor or OpenTensor");
  }
  if (ts->core != this) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", ts->name, "' belongs to another engine"));
  }
  if (ts->dropped()) {
    return absl::NotFoundError(absl::StrCat(
        "tensor '", ts->name, "' was dropped; create it again"));
  }
  return ts;
}

absl::Status EngineCore::PinError(const Tensor& tensor, uint64_t block,
                                  Tier tier) const {
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, CheckTensor(tensor));
  if (block >= ts->num_blocks) {
    return absl::OutOfRangeError(absl::StrCat(
        "block ", block, " is out of range: tensor '", ts->name, "' has ",
        ts->num_blocks, " blocks"));
  }
  if (tier == Tier::kNvme) {
    return absl::InvalidArgumentError(
        "tier nvme is not addressable; pin in Tier::kHost (the engine loads "
        "from NVMe)");
  }
  if (tier != Tier::kHost) {
    return absl::UnimplementedError(absl::StrCat(
        "tier ", std::string(TierName(tier)), " is not built in this version of Strata; "
        "pin in Tier::kHost"));
  }
  return absl::InternalError("pin refused for no known reason");
}

absl::StatusOr<Tensor> EngineCore::CreateTensor(std::string_view name_view,
                                                const TensorSpec& spec) {
  STRATA_RETURN_IF_ERROR(CheckOpen());
  const std::string name(name_view);
  constexpr size_t kMaxName = 255;
  if (name.empty()) {
    return absl::InvalidArgumentError("tensor name is empty; name it");
  }
  if (name.size() > kMaxName) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor name is ", name.size(), " bytes long; the limit is ", kMaxName));
  }
  if (spec.shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': shape is empty; a scalar has shape {1}"));
  }
  const uint64_t elem = DTypeSize(spec.dtype);
  if (elem == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': unknown dtype ", static_cast<int>(spec.dtype)));
  }
  uint64_t bytes = elem;
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    const int64_t d = spec.shape[i];
    if (d <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "': dimension ", i, " is ", d,
          "; every dimension must be positive"));
    }
    if (bytes > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "': shape overflows 64-bit byte count"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  const uint64_t block_bytes =
      spec.block_bytes == 0 ? options_.default_block_bytes : spec.block_bytes;
  if (block_bytes % 4096 != 0 || block_bytes % elem != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': block_bytes ", block_bytes,
        " must be a multiple of 4096 and of the element size"));
  }
  if (block_bytes > host_->capacity()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': block_bytes ", block_bytes,
        " exceeds the host tier (", host_->capacity(),
        " bytes); use smaller blocks or raise EngineOptions::host.capacity_bytes"));
  }
  const uint64_t blocks = (bytes + block_bytes - 1) / block_bytes;
  if (blocks > 0xFFFFFFFFu) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' would have ", blocks,
        " blocks; the limit is 2^32-1: use larger block_bytes"));
  }
  std::unique_lock lock(catalog_mu_);
  if (by_name_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "tensor '", name, "' already exists; open it with OpenTensor or drop it"));
  }
  if (by_id_.size() >= 0xFFFFFFFFu) {
    return absl::ResourceExhaustedError("too many tensors created in this engine");
  }
  auto ts = std::make_shared<TensorState>();
  ts->core = this;
  ts->id = static_cast<uint32_t>(by_id_.size());
  ts->name = name;
  ts->num_blocks = blocks;
  ts->block_bytes = block_bytes;
  ts->size_bytes = bytes;
  ts->frame_bytes = block_bytes;  // a multiple of 4096 already
  ts->slots.reset(new (std::nothrow) BlockSlot[blocks]);
  if (ts->slots == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tensor '", name, "': no memory for the table of its ", blocks,
        " blocks (", blocks * sizeof(BlockSlot),
        " bytes); use larger block_bytes"));
  }
  ts->spec = spec;
  ts->spec.block_bytes = block_bytes;
  ts->gate.store(gate_, std::memory_order_release);
  by_id_.push_back(ts);
  by_name_.emplace(ts->name, ts);
  Tensor t;
  t.state_ = ts;
  t.name_ = ts->name;
  t.spec_ = spec;
  t.spec_.block_bytes = block_bytes;
  t.num_blocks_ = blocks;
  t.block_bytes_ = block_bytes;
  t.size_bytes_ = bytes;
  return t;
}

absl::StatusOr<Tensor> EngineCore::OpenTensor(std::string_view name_view) {
  STRATA_RETURN_IF_ERROR(CheckOpen());
  const std::string name(name_view);
  std::unique_lock lock(catalog_mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "no tensor named '", name, "'; create it with CreateTensor"));
  }
  const TensorState& ts = *it->second;
  Tensor t;
  t.state_ = it->second;
  t.name_ = ts.name;
  t.num_blocks_ = ts.num_blocks;
  t.block_bytes_ = ts.block_bytes;
  t.size_bytes_ = ts.size_bytes;
  t.spec_ = ts.spec;
  return t;
}

std::shared_ptr<TensorState> EngineCore::TensorById(uint32_t id) const {
  std::unique_lock lock(catalog_mu_);
  if (id >= by_id_.size()) return nullptr;
  return by_id_[id];
}

absl::Status EngineCore::DropTensor(const Tensor& tensor) {
  STRATA_ASSIGN_OR_RETURN(TensorState * ts, CheckTensor(tensor));
  std::unique_lock flush_lock(ts->flush_mu);
  const Deadline deadline = WaitDeadline();
  // Claim every block (absent or resident and unpinned -> evicting) so that
  // nothing loads or pins it while its frames are given back.
  uint64_t claimed = 0;
  absl::Status refused;
  for (; claimed < ts->num_blocks; ++claimed) {
    BlockSlot* slot = &ts->slots[claimed];
    for (;;) {
      uint64_t w = slot->word.load(std::memory_order_acquire);
      const State s = StateOf(w);
      if (s == kAbsent || (s == kResident && Pins(w) == 0)) {
        if (slot->word.compare_exchange_weak(w, WithState(w, kEvicting),
                                             std::memory_order_acquire)) {
          break;
        }
        continue;
      }
      if (s == kResident) {
        refused = absl::FailedPreconditionError(absl::StrCat(
            BlockName(ts, claimed), " is pinned; release its pins before DropTensor"));
        break;
      }
      if (!WaitForChange(slot, w, deadline)) {
        refused = absl::DeadlineExceededError(absl::StrCat(
            BlockName(ts, claimed), " stayed in transit during DropTensor"));
        break;
      }
    }
    if (!refused.ok()) break;
  }
  if (!refused.ok()) {
    for (uint64_t b = 0; b < claimed; ++b) {
      BlockSlot* slot = &ts->slots[b];
      const State was = slot->data != nullptr ? kResident : kAbsent;
      Publish(slot, WithState(slot->word.load(), was));
    }
    return refused;
  }
  ts->gate.fetch_or(TensorState::kGateDropped, std::memory_order_acq_rel);
  {
    std::unique_lock lock(policy_mu_);
    DrainLocked();
    for (uint64_t b = 0; b < ts->num_blocks; ++b) {
      if (ts->slots[b].data != nullptr) policy_->Erase(ts->Key(b));
    }
  }
  for (uint64_t b = 0; b < ts->num_blocks; ++b) {
    BlockSlot* slot = &ts->slots[b];
    if (slot->data != nullptr) {
      host_->Free({.offset = slot->host_offset, .bytes = ts->frame_bytes,
                   .data = slot->data});
      slot->data = nullptr;
    }
    if (slot->nvme.valid()) {
      nvme_->Free(slot->nvme);
      slot->nvme = {};
    }
    Publish(slot, slot->word.load());  // wake anyone still waiting
  }
  std::unique_lock lock(catalog_mu_);
  by_name_.erase(ts->name);
  // The state lives on while handles or mover jobs hold it; the engine
  // forgets it (its id is never reused).
  by_id_[ts->id].reset();
  return absl::OkStatus();
}

EngineStats EngineCore::GetStats() const {
  EngineStats stats;
  for (int i = 0; i < kNumTiers; ++i) stats.tiers[i].tier = static_cast<Tier>(i);
  TierStats& host = stats.tiers[static_cast<int>(Tier::kHost)];
  host.present = true;
  host.write_backs_in_flight = static_cast<uint64_t>(std::max<int64_t>(
      writebacks_in_flight_.load(std::memory_order_acquire), 0));
  host.capacity_bytes = host_->capacity();
  host.used_bytes = host_->used();
  host.bytes_in = host_bytes_in_.load(std::memory_order_relaxed);
  host.bytes_out = host_bytes_out_.load(std::memory_order_relaxed);
  host.evictions = evictions_.load(std::memory_order_relaxed);
  host.write_backs = write_backs_.load(std::memory_order_relaxed);
  std::array<uint64_t, LatencyHistogram::kBuckets> hit_counts{}, miss_counts{};
  {
    std::unique_lock lock(rings_mu_);
    for (const auto& ring : rings_) {
      host.hits += ring->head.load(std::memory_order_relaxed);
      host.misses += ring->misses.load(std::memory_order_relaxed);
      ring->hit_latency.AddTo(hit_counts);
      ring->miss_latency.AddTo(miss_counts);
    }
  }
  stats.pin_hit_latency = LatencyHistogram::Summarize(hit_counts);
  stats.pin_miss_latency = LatencyHistogram::Summarize(miss_counts);
  {
    std::unique_lock lock(catalog_mu_);
    for (const auto& ts : by_id_) {
      if (ts == nullptr || ts->dropped()) continue;
      for (uint64_t b = 0; b < ts->num_blocks; ++b) {
        if (word::Pins(ts->slots[b].word.load(std::memory_order_relaxed)) != 0) {
          host.pinned_bytes += ts->frame_bytes;
        }
      }
    }
  }
  if (nvme_ != nullptr) {
    TierStats& nvme = stats.tiers[static_cast<int>(Tier::kNvme)];
    nvme.present = true;
    nvme.capacity_bytes = nvme_->capacity();
    nvme.used_bytes = nvme_->used();
    nvme.bytes_in = nvme_->bytes_in();
    nvme.bytes_out = nvme_->bytes_out();
    nvme.errors = nvme_errors_.load(std::memory_order_relaxed);
  }
  return stats;
}

absl::Status EngineCore::Close() {
  if (closed_.exchange(true)) {
    std::unique_lock lock(mover_mu_);
    if (stop_mover_) return absl::OkStatus();  // closed before
  }
  // Gate new pins first, then look for live ones, so none slips between.
  SetGate(TensorState::kGateClosed, true);
  absl::Status pinned;
  {
    std::unique_lock lock(catalog_mu_);
    for (const auto& ts : by_id_) {
      if (ts == nullptr || ts->dropped() || !pinned.ok()) continue;
      for (uint64_t b = 0; b < ts->num_blocks; ++b) {
        if (word::Pins(ts->slots[b].word.load()) != 0) {
          pinned = absl::FailedPreconditionError(absl::StrCat(
              BlockName(ts.get(), b),
              " is still pinned; release every Pin before Close"));
          break;
        }
      }
    }
  }
  if (!pinned.ok()) {
    SetGate(TensorState::kGateClosed, false);
    closed_.store(false);
    return pinned;
  }
  StopMover();
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace strata
