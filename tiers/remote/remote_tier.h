// The remote tier: block copies in another node's RAM, lent by strata-blockd
// (block_server.h) and reached over libfabric.
//
// At creation the tier says hello to its server with the shared secret and
// allocates its whole capacity there as one allocation (one key); frames
// are ranges of it, handed out here best fit (ExtentAllocator) without asking
// the server. Writes are fi_write from host memory, reads fi_read into it;
// like the NVMe tier it checksums what it stores (XXH3 seeded by the block's
// identity) and a read whose bytes do not match is kDataLoss. Frames have
// no host data: the engine stages through host memory.
//
// A progress thread polls the completion queue: it completes writes
// (calling on_done), passes reads to a verifier thread that checks their
// checksums (so that progress never waits for a checksum), and hands
// control replies to the caller waiting for them. Every control call has a deadline; a transfer that never completes
// is the engine's io_timeout to catch.
//
// Threads: Allocate/Free/Submit from any thread; on_done runs on the
// progress thread (writes, failures) or the verifier thread (reads).
#ifndef STRATA_TIERS_REMOTE_REMOTE_TIER_H_
#define STRATA_TIERS_REMOTE_REMOTE_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tiers/tier.h"

namespace strata::tiers {

struct RemoteConfig {
  std::string provider = "tcp;ofi_rxm";
  std::string server;  // "host:port" of a strata-blockd
  std::string secret;
  uint64_t capacity_bytes = 0;  // borrowed from the server at creation
  absl::Duration timeout = absl::Seconds(5);  // control calls
  std::function<void(std::string_view)> log;
};

// Tests only: faults injected into the tier's use of the fabric (the
// fabric itself has no seam; a real one fails these posts only when the
// provider is in trouble).
struct RemoteFaults {
  // Called before each post of a receive buffer; a non-OK result stands for
  // the post's result and the buffer is not posted.
  std::function<absl::Status()> post_receive;
};

// Connects, says hello and allocates. kPermissionDenied for a wrong secret,
// kResourceExhausted when the server has not that much to lend,
// kUnavailable or kDeadlineExceeded when it cannot be reached.
absl::StatusOr<std::unique_ptr<Tier>> MakeRemoteTier(const RemoteConfig& config,
                                                     RemoteFaults faults = {});

// What the server says of itself (strata-blockd's stat).
struct RemoteServerStat {
  uint64_t capacity = 0, used = 0, clients = 0, allocations = 0;
  uint64_t generation = 0;
};
// Asks the server behind `tier` (a tier from MakeRemoteTier).
absl::StatusOr<RemoteServerStat> StatRemoteServer(Tier& tier);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_REMOTE_REMOTE_TIER_H_
