// The remote tier over several strata-blockd servers: each block's copy is
// kept on `replication` of them, chosen by rendezvous (highest random
// weight) hashing of the frame, so that the copies spread evenly and a
// server's loss moves only what it held.
//
// Writes go to every replica and are done when all of them answered: OK
// when at least one holds the bytes (a replica that failed is dropped from
// the block's placement: degraded, logged), an error when none does. Reads
// try the replicas in rank order, so with replication 2 the loss of one
// server (its tier fences, remote_tier.h) loses no block. Allocation passes
// over servers that are full or lost.
//
// Threads: as the per-server tiers it is made of.
#ifndef STRATA_TIERS_REMOTE_REPLICATED_TIER_H_
#define STRATA_TIERS_REMOTE_REPLICATED_TIER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tiers/remote/remote_tier.h"
#include "tiers/tier.h"

namespace strata::tiers {

inline constexpr int kMaxReplication = 3;

// One per-server tier (MakeRemoteTier with `base`, each borrowing
// base.capacity_bytes) for every server; the tier's capacity is their sum
// divided by `replication`.
absl::StatusOr<std::unique_ptr<Tier>> MakeReplicatedRemoteTier(
    const RemoteConfig& base, const std::vector<std::string>& servers,
    int replication);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_REMOTE_REPLICATED_TIER_H_
