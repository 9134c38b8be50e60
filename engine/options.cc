#include "engine/options.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/strings.h"
#include "absl/strings/str_join.h"
#include "engine/policy/policy.h"

namespace strata::internal {
namespace {

template <typename... Parts>
absl::Status Bad(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("EngineOptions::", parts...));
}

absl::Status ValidateChain(const std::vector<Tier>& tiers) {
  if (tiers.empty()) {
    return Bad("tiers is empty; name the tier chain, e.g. "
               "{Tier::kHost, Tier::kNvme}");
  }
  for (size_t i = 0; i < tiers.size(); ++i) {
    if (static_cast<uint8_t>(tiers[i]) >= kNumTiers) {
      return Bad("tiers[", i, "] is ", static_cast<int>(tiers[i]),
                 ", not a strata::Tier");
    }
    if (i > 0 && tiers[i] <= tiers[i - 1]) {
      return Bad("tiers lists ", Sv(TierName(tiers[i])), " after ",
                 Sv(TierName(tiers[i - 1])),
                 "; name each tier once, fastest first (gpu, host, shm, "
                 "remote, nvme)");
    }
  }
  if (std::find(tiers.begin(), tiers.end(), Tier::kHost) == tiers.end()) {
    return Bad("tiers lacks Tier::kHost; host memory is where copies between "
               "other tiers stage, add it");
  }
  return absl::OkStatus();
}

absl::Status ValidateGpu(const GpuTierOptions& gpu) {
  if (gpu.capacity_bytes % 4096 != 0) {
    return Bad("gpu.capacity_bytes ", gpu.capacity_bytes,
               " is not a multiple of 4096");
  }
  if (gpu.capacity_bytes == 0 &&
      !(gpu.capacity_fraction > 0 && gpu.capacity_fraction <= 1)) {
    return Bad("gpu.capacity_fraction ", gpu.capacity_fraction,
               " must be in (0, 1] when gpu.capacity_bytes is 0; set one of "
               "them to size the GPU tier's pool");
  }
  if (gpu.device < 0) {
    return Bad("gpu.device ", gpu.device, " is invalid; use a CUDA device index (0, 1, ...)");
  }
  return absl::OkStatus();
}

absl::Status ValidateTiers(const EngineOptions& o) {
  if (o.host.capacity_bytes == 0) {
    return Bad("host.capacity_bytes is 0; give the host tier room for at "
               "least one block (default 256 MiB)");
  }
  if (o.host.capacity_bytes % 4096 != 0) {
    return Bad("host.capacity_bytes ", o.host.capacity_bytes,
               " is not a multiple of 4096");
  }
  if (o.host.numa_node < -1) {
    return Bad("host.numa_node ", o.host.numa_node,
               " is invalid; use -1 (caller's node) or a node number");
  }
  if (HasTier(o, Tier::kNvme)) {
    if (o.nvme.path.empty()) {
      return Bad("nvme.path is empty; name a writable directory, or leave "
                 "Tier::kNvme out of tiers");
    }
    if (o.nvme.capacity_bytes == 0) {
      return Bad("nvme.capacity_bytes is 0; give the NVMe tier room, or "
                 "leave Tier::kNvme out of tiers");
    }
    if (o.nvme.queue_depth == 0 || o.nvme.queue_depth > 4096) {
      return Bad("nvme.queue_depth ", o.nvme.queue_depth, " must be in 1..4096");
    }
  }
  if (HasTier(o, Tier::kGpu)) {
    if (absl::Status s = ValidateGpu(o.gpu); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ValidatePolicy(const std::string& policy) {
  std::vector<std::string> names;
  for (std::string_view name : policy::EnginePolicyNames()) {
    if (name == policy) return absl::OkStatus();
    names.emplace_back(name);
  }
  return Bad("policy '", policy, "' is unknown; use one of: ",
             absl::StrJoin(names, ", "));
}

}  // namespace

bool HasTier(const EngineOptions& options, Tier kind) {
  return std::find(options.tiers.begin(), options.tiers.end(), kind) !=
         options.tiers.end();
}

absl::Status ValidateOptions(const EngineOptions& o) {
  if (absl::Status s = ValidateChain(o.tiers); !s.ok()) return s;
  if (absl::Status s = ValidateTiers(o); !s.ok()) return s;
  if (o.default_block_bytes == 0 || o.default_block_bytes % 4096 != 0 ||
      o.default_block_bytes > (uint64_t{1} << 30)) {
    return Bad("default_block_bytes ", o.default_block_bytes,
               " must be a non-zero multiple of 4096 of at most 1 GiB");
  }
  if (o.default_block_bytes > o.host.capacity_bytes) {
    return Bad("default_block_bytes ", o.default_block_bytes,
               " exceeds host.capacity_bytes ", o.host.capacity_bytes,
               "; the host tier must hold at least one block");
  }
  if (absl::Status s = ValidatePolicy(o.policy); !s.ok()) return s;
  if (o.readahead_blocks < -1) {
    return Bad("readahead_blocks ", o.readahead_blocks,
               " is invalid; use -1 (automatic), 0 (off) or a block count");
  }
  if (o.pin_wait_timeout <= absl::ZeroDuration()) {
    return Bad("pin_wait_timeout must be positive");
  }
  if (o.io_timeout <= absl::ZeroDuration()) {
    return Bad("io_timeout must be positive");
  }
  return absl::OkStatus();
}

}  // namespace strata::internal
