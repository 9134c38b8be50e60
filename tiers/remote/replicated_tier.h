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
// Repair: when a server is lost (or a write reached fewer replicas than
// asked), a repair thread copies every written block that is short of
// copies from a replica that holds it (checksummed) to the next servers in
// its rank that hold none and have room (a lost server that came back
// counts: it is a new one), so that a second loss later loses nothing. A
// repair is installed only if the block was neither freed nor written
// meanwhile; otherwise it is dropped and looked at again.
//
// Threads: as the per-server tiers it is made of, and the repair thread.
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
// How many copies the blocks of a replicated tier have.
struct ReplicationHealth {
  uint64_t blocks = 0;            // written blocks
  uint64_t under_replicated = 0;  // with fewer live copies than asked
  uint64_t lost = 0;              // with none
  uint64_t repaired = 0;          // copied again since creation
  uint64_t repair_rounds = 0;     // rounds of the repair thread so far
};
// Of a tier from MakeReplicatedRemoteTier (kInvalidArgument for another).
absl::StatusOr<ReplicationHealth> GetReplicationHealth(Tier& tier);

absl::StatusOr<std::unique_ptr<Tier>> MakeReplicatedRemoteTier(
    const RemoteConfig& base, const std::vector<std::string>& servers,
    int replication);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_REMOTE_REPLICATED_TIER_H_
