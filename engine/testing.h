// Hooks for tests and benchmarks that must inject faults below the engine or
// run it over tiers of their own. Not part of the public API.
#ifndef STRATA_ENGINE_TESTING_H_
#define STRATA_ENGINE_TESTING_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "api/strata/strata.h"
#include "engine/engine_core.h"

namespace strata::testing {

// Engine::Open, with the NVMe tier's I/O going through `nvme_backend`
// (for example a fault-injecting wrapper of the io_uring backend).
absl::StatusOr<std::unique_ptr<Engine>> OpenWithBackend(
    EngineOptions options, std::unique_ptr<tiers::IoBackend> nvme_backend);

// Engine::Open, with the tiers in `overrides.tiers` used for their kinds
// (which `options.tiers` must name) instead of the ones the engine builds:
// a test tier in the shm slot is a pinnable tier, in the remote slot a tier
// that holds copies only. The host tier cannot be replaced.
absl::StatusOr<std::unique_ptr<Engine>> OpenWithTiers(
    EngineOptions options, internal::TierOverrides overrides);

// Whether some thread waits for the copy of `block` in `tier` to change:
// lets a test know, without sleeping, that a call it started in another
// thread is parked on that copy.
bool CopyHasWaiters(const Engine& engine, const Tensor& tensor, Tier tier,
                    uint64_t block);

// Waits (up to `limit`) until the engine's background work is done: no
// mover job queued or running (readahead, prefetch, step plans) and no
// transfer in flight. For checks of counts that background loads move
// (a load holds its source pinned until its copy is published). False at
// the limit.
bool WaitForBackgroundWork(Engine& engine, absl::Duration limit);

// Holds the mover's queued jobs (readahead, prefetch, step plans) until
// ResumeBackgroundWork: lets a test make them lag behind a reader, as a
// loaded machine can. Do not call WaitForBackgroundWork in between.
void PauseBackgroundWork(Engine& engine);
void ResumeBackgroundWork(Engine& engine);

// Calls `hook` on the evicting thread each time a dirty copy's eviction is
// about to write it down: the copy is claimed (evicting), no copy below is
// claimed yet. Lets a test act in that window from another thread (the
// hook may wait for it; the evicting thread holds no block latch there).
// An empty hook ends it; set and end it while no eviction runs.
void SetEvictionHook(
    Engine& engine,
    std::function<void(std::string_view tensor, uint64_t block, Tier from)> hook);

// Calls `hook` on the loading thread each time a load is about to choose
// its source: the tensor was found neither dropped nor closed, and the
// block's latch is not taken yet. Lets a test act in that window from
// another thread (the hook may wait for it). An empty hook ends it; set and
// end it while no load runs.
void SetLoadSourceHook(
    Engine& engine,
    std::function<void(std::string_view tensor, uint64_t block, Tier into)> hook);

}  // namespace strata::testing

#endif  // STRATA_ENGINE_TESTING_H_
