// Validation of EngineOptions: every bad field gets kInvalidArgument naming
// it and saying what to do.
#ifndef STRATA_ENGINE_OPTIONS_H_
#define STRATA_ENGINE_OPTIONS_H_

#include "absl/status/status.h"
#include "api/strata/strata.h"

namespace strata::internal {

absl::Status ValidateOptions(const EngineOptions& options);

// Whether `options.tiers` names `kind`.
bool HasTier(const EngineOptions& options, Tier kind);

}  // namespace strata::internal

#endif  // STRATA_ENGINE_OPTIONS_H_
