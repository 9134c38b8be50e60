// The one place that turns EngineOptions into concrete tiers (DESIGN.md: the
// engine sees tiers only through tiers/tier.h, except here).
#ifndef STRATA_ENGINE_TIER_FACTORY_H_
#define STRATA_ENGINE_TIER_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "engine/chain.h"
#include "engine/engine_core.h"

namespace strata::internal {

// Builds the chain `options.tiers` names, taking the tiers `overrides`
// holds instead of building those kinds, and registers the host arena with
// every other tier's DMA engine (a refusal is logged once, then the tier
// goes on unregistered). kUnimplemented for a kind this version cannot
// build.
absl::StatusOr<std::unique_ptr<TierChain>> BuildChain(
    const EngineOptions& options, TierOverrides overrides);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_TIER_FACTORY_H_
