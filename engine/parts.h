// The parts of an engine, and how they find each other. Each part has one
// job and its own header:
//
//   catalog.h     names and ids of tensors, handles, gates
//   block_table.h per tensor: a column of copy slots per tier, block records
//   block_ops.h   the block-level protocol under the latch: choosing a
//                 source, versioning, invalidating other copies
//   residency.h   per tier: frames, its policy, eviction
//   loader.h      the one load path (pins, prefetch, readahead, steps)
//   write_back.h  the one write-back path (eviction, evict-ahead, Flush)
//   copier.h      moving bytes between two tiers' frames
//   mover.h       the background thread: prefetch, readahead, step plans
//   steps.h       recording and replaying step plans, per thread
//   shared_tensors.h  tensors of the node segment (tier shm), and the source
//                 of their private copies
//   stats.h       counters and per-thread access rings
//   lifecycle.h   open/closed, calls and transfers in flight
//   engine_core.h the public API on top of them
//
// EngineCore owns every part and hands each a reference to one EngineParts;
// parts call each other through it.
#ifndef STRATA_ENGINE_PARTS_H_
#define STRATA_ENGINE_PARTS_H_

#include <memory>
#include <vector>

#include "api/strata/strata.h"

namespace strata::internal {

class Catalog;
class Lifecycle;
class Loader;
class Mover;
class Residency;
class SharedTensors;
class Stats;
class Steps;
class TierChain;
class WaitTable;
class WriteBacks;

struct EngineParts {
  const EngineOptions* options = nullptr;
  TierChain* chain = nullptr;
  WaitTable* waits = nullptr;
  Lifecycle* life = nullptr;
  Catalog* catalog = nullptr;
  Stats* stats = nullptr;
  std::vector<std::unique_ptr<Residency>>* residency = nullptr;
  Loader* loader = nullptr;
  WriteBacks* write_backs = nullptr;
  Mover* mover = nullptr;
  Steps* steps = nullptr;
  SharedTensors* shared = nullptr;  // null without the node segment

  Residency& tier(int pos) const { return *(*residency)[pos]; }
};

}  // namespace strata::internal

#endif  // STRATA_ENGINE_PARTS_H_
