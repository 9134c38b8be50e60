#include "engine/tier_factory.h"

#include "absl/strings/str_cat.h"
#include "tiers/nvme/io_backend.h"
#include "tiers/nvme/nvme_tier.h"
#include "util/status_macros.h"

namespace strata::internal {

absl::StatusOr<TierSet> BuildTiers(
    const EngineOptions& options,
    std::unique_ptr<tiers::IoBackend> nvme_backend) {
  TierSet set;
  STRATA_ASSIGN_OR_RETURN(
      set.host, tiers::HostTier::Create({.capacity_bytes = options.host.capacity_bytes,
                                         .numa_node = options.host.numa_node,
                                         .huge_pages = options.host.huge_pages,
                                         .log = options.log}));
  if (options.nvme.enabled) {
    tiers::NvmeConfig config;
    config.path = options.nvme.path;
    config.capacity_bytes = options.nvme.capacity_bytes;
    config.queue_depth = options.nvme.queue_depth;
    config.register_buffers = options.nvme.register_buffers;
    config.log = options.log;
    STRATA_ASSIGN_OR_RETURN(set.nvme,
                            tiers::MakeNvmeTier(config, std::move(nvme_backend)));
    if (options.nvme.register_buffers) {
      absl::Status registered = set.nvme->RegisterHostMemory(set.host->arena());
      if (!registered.ok() && options.log) {
        options.log(absl::StrCat(
            "strata: host arena not registered with io_uring (", registered.message(),
            "); NVMe I/O goes on with unregistered buffers"));
      }
    }
  }
  return set;
}

}  // namespace strata::internal
