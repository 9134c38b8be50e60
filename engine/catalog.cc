#include "engine/catalog.h"

#include <limits>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "engine/chain.h"
#include "util/status_macros.h"

namespace strata::internal {

absl::Status Catalog::Validate(std::string_view name, const TensorSpec& spec,
                               uint64_t* bytes, uint64_t* block_bytes) const {
  constexpr size_t kMaxName = 255;
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", Sv(name), "': ", parts...));
  };
  if (name.empty()) {
    return absl::InvalidArgumentError("tensor name is empty; name it");
  }
  if (name.size() > kMaxName) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor name is ", name.size(), " bytes long; the limit is ", kMaxName));
  }
  if (spec.shape.empty()) return bad("shape is empty; a scalar has shape {1}");
  const uint64_t elem = DTypeSize(spec.dtype);
  if (elem == 0) {
    return bad("unknown dtype ", static_cast<int>(spec.dtype),
               "; use a strata::DType enumerator");
  }
  *bytes = elem;
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    const int64_t d = spec.shape[i];
    if (d <= 0) {
      return bad("dimension ", i, " is ", d, "; every dimension must be positive");
    }
    if (*bytes > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      return bad("shape overflows 64-bit byte count");
    }
    *bytes *= static_cast<uint64_t>(d);
  }
  *block_bytes = spec.block_bytes == 0 ? parts_.options->default_block_bytes
                                       : spec.block_bytes;
  if (*block_bytes % 4096 != 0 || *block_bytes % elem != 0) {
    return bad("block_bytes ", *block_bytes,
               " must be a multiple of 4096 and of the element size");
  }
  const uint64_t host = parts_.chain->tier(parts_.chain->host()).capacity();
  if (*block_bytes > host) {
    return bad("block_bytes ", *block_bytes, " exceeds the host tier (", host,
               " bytes); use smaller blocks or raise "
               "EngineOptions::host.capacity_bytes");
  }
  const uint64_t blocks = (*bytes + *block_bytes - 1) / *block_bytes;
  if (blocks > 0xFFFFFFFFu) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", Sv(name), "' would have ", blocks,
        " blocks; the limit is 2^32-1: use larger block_bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Catalog::Create(std::string_view name,
                                       const TensorSpec& spec) {
  uint64_t bytes = 0, block_bytes = 0;
  STRATA_RETURN_IF_ERROR(Validate(name, spec, &bytes, &block_bytes));
  const uint64_t num_blocks = (bytes + block_bytes - 1) / block_bytes;
  const int chain_size = parts_.chain->size();
  // Allocated before the catalog lock: a big table must not stall lookups.
  std::shared_ptr<TensorState> ts = NewTensorState(arena_, num_blocks, chain_size);
  if (ts == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tensor '", Sv(name), "': no memory for the table of its ", num_blocks,
        " blocks (", TensorStateBytes(num_blocks, chain_size),
        " bytes); use larger block_bytes"));
  }
  ts->core = core_;
  ts->info->name = std::string(name);
  ts->info->spec = spec;
  ts->info->spec.block_bytes = block_bytes;
  ts->block_bytes = block_bytes;
  ts->size_bytes = bytes;
  std::unique_lock lock(mu_);
  if (by_name_.contains(ts->info->name)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "tensor '", Sv(name), "' already exists; open it with OpenTensor or drop it"));
  }
  if (next_id_ == std::numeric_limits<uint32_t>::max()) {
    return absl::ResourceExhaustedError(
        "2^32-1 tensors were created in this engine, the most it can name; "
        "open a new engine");
  }
  ts->id = next_id_++;
  ts->gate.store(gate_, std::memory_order_release);
  by_id_.emplace(ts->id, ts);
  by_name_.emplace(ts->info->name, ts);
  return Handle(std::move(ts));
}

absl::StatusOr<Tensor> Catalog::Open(std::string_view name) const {
  std::shared_lock lock(mu_);
  auto it = by_name_.find(std::string(name));
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "no tensor named '", Sv(name), "'; create it with CreateTensor"));
  }
  return Handle(it->second);
}

Tensor Catalog::Handle(std::shared_ptr<TensorState> ts) {
  Tensor t;
  t.name_ = ts->info->name;
  t.spec_ = ts->info->spec;
  t.num_blocks_ = ts->num_blocks;
  t.block_bytes_ = ts->block_bytes;
  t.size_bytes_ = ts->size_bytes;
  t.state_ = std::move(ts);
  return t;
}

absl::StatusOr<TensorState*> Catalog::Check(const Tensor& tensor) const {
  TensorState* ts = tensor.state_.get();
  if (ts == nullptr) {
    return absl::InvalidArgumentError(
        "empty Tensor handle; get one from CreateTensor or OpenTensor");
  }
  if (ts->core != core_) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", ts->info->name, "' belongs to another engine"));
  }
  if (ts->dropped()) {
    return absl::NotFoundError(absl::StrCat(
        "tensor '", ts->info->name, "' was dropped; create it again"));
  }
  return ts;
}

absl::Status Catalog::AddShared(const std::shared_ptr<TensorState>& ts) {
  std::unique_lock lock(mu_);
  if (next_id_ == std::numeric_limits<uint32_t>::max()) {
    return absl::ResourceExhaustedError(
        "2^32-1 tensors were created or opened in this engine, the most it can "
        "name; open a new engine");
  }
  ts->id = next_id_++;
  ts->gate.fetch_or(gate_, std::memory_order_release);
  by_id_.emplace(ts->id, ts);
  return absl::OkStatus();
}

std::shared_ptr<TensorState> Catalog::Find(uint32_t id) const {
  std::shared_lock lock(mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<TensorState>> Catalog::All() const {
  std::shared_lock lock(mu_);
  std::vector<std::shared_ptr<TensorState>> all;
  all.reserve(by_id_.size());
  for (const auto& [id, ts] : by_id_) all.push_back(ts);
  return all;
}

void Catalog::Forget(const TensorState& ts) {
  std::unique_lock lock(mu_);
  auto it = by_name_.find(ts.info->name);
  if (it != by_name_.end() && it->second.get() == &ts) by_name_.erase(it);
  by_id_.erase(ts.id);
}

void Catalog::SetGate(uint32_t bit, bool on) {
  std::unique_lock lock(mu_);
  gate_ = on ? (gate_ | bit) : (gate_ & ~bit);
  for (const auto& [id, ts] : by_id_) {
    if (on) {
      ts->gate.fetch_or(bit, std::memory_order_seq_cst);
    } else {
      ts->gate.fetch_and(~bit, std::memory_order_seq_cst);
    }
  }
}

size_t Catalog::size() const {
  std::shared_lock lock(mu_);
  return by_id_.size();
}

}  // namespace strata::internal
