// The one place that turns EngineOptions into concrete tiers (DESIGN.md: the
// engine sees tiers only through tiers/tier.h, except here).
#ifndef STRATA_ENGINE_TIER_FACTORY_H_
#define STRATA_ENGINE_TIER_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "tiers/host/host_tier.h"
#include "tiers/tier.h"

namespace strata::tiers {
class IoBackend;
}

namespace strata::internal {

struct TierSet {
  std::unique_ptr<tiers::HostTier> host;
  std::unique_ptr<tiers::Tier> nvme;  // null when disabled
};

// `nvme_backend` null: the real io_uring backend.
absl::StatusOr<TierSet> BuildTiers(const EngineOptions& options,
                                   std::unique_ptr<tiers::IoBackend> nvme_backend);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_TIER_FACTORY_H_
