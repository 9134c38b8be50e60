// Hooks for tests and benchmarks that must inject faults below the engine.
// Not part of the public API.
#ifndef STRATA_ENGINE_TESTING_H_
#define STRATA_ENGINE_TESTING_H_

#include <memory>

#include "absl/status/statusor.h"
#include "api/strata/strata.h"

namespace strata::tiers {
class IoBackend;
}

namespace strata::testing {

// Engine::Open, with the NVMe tier's I/O going through `nvme_backend`
// (for example a fault-injecting wrapper of the io_uring backend).
absl::StatusOr<std::unique_ptr<Engine>> OpenWithBackend(
    EngineOptions options, std::unique_ptr<tiers::IoBackend> nvme_backend);

}  // namespace strata::testing

#endif  // STRATA_ENGINE_TESTING_H_
