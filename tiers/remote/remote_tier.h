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
// A lost server (a transfer failed or timed out, its queue stayed full)
// fences the connection: what was in flight fails, reads of its copies are
// kDataLoss, allocations kResourceExhausted (demotion goes on below). After
// `reconnect_backoff` (doubling while it stays away, up to 32x) a
// reconnect thread says hello again: a server answering there gets a new
// connection, a new session and a new allocation, and new blocks go there
// again. Its generation says whether it restarted; either way the copies
// placed before the loss stay lost (a frame carries the epoch of the
// connection it was allocated on, and a frame of an older epoch is never
// read from the new one).
//
// Threads: Allocate/Free/Submit from any thread; on_done runs on the
// progress thread (writes, failures), the verifier thread (reads), or the
// submitting thread (transfers to frames of a lost epoch).
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
  // First wait before saying hello again to a lost server.
  absl::Duration reconnect_backoff = absl::Seconds(1);
  std::function<void(std::string_view)> log;
  // Called (on a thread of the tier, which it must not block) each time
  // the server is found lost.
  std::function<void()> on_lost;
};

// Tests only: faults injected into the tier's use of the fabric (the
// fabric itself has no seam; a real one fails these posts only when the
// provider is in trouble).
struct RemoteFaults {
  // Called before each post of a receive buffer; a non-OK result stands for
  // the post's result and the buffer is not posted.
  std::function<absl::Status()> post_receive;
};

// What the server says of itself (strata-blockd's stat).
struct RemoteServerStat {
  uint64_t capacity = 0, used = 0, clients = 0, allocations = 0;
  uint64_t generation = 0;
};

// The tier of one server, with what the replicated tier asks of it.
class RemoteServerTier : public Tier {
 public:
  // Whether `frame`'s copy is still there: false once the server it was
  // placed on was lost, also after a reconnect (a new epoch).
  virtual bool Holds(const Frame& frame) const = 0;
  // Asks the server (its current connection).
  virtual absl::StatusOr<RemoteServerStat> Stat() = 0;

 protected:
  using Tier::Tier;
};

// Connects, says hello and allocates. kPermissionDenied for a wrong secret,
// kResourceExhausted when the server has not that much to lend,
// kUnavailable or kDeadlineExceeded when it cannot be reached.
absl::StatusOr<std::unique_ptr<RemoteServerTier>> MakeRemoteServerTier(
    const RemoteConfig& config, RemoteFaults faults = {});
absl::StatusOr<std::unique_ptr<Tier>> MakeRemoteTier(const RemoteConfig& config,
                                                     RemoteFaults faults = {});

// Asks the server behind `tier` (a tier from MakeRemoteTier).
absl::StatusOr<RemoteServerStat> StatRemoteServer(Tier& tier);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_REMOTE_REMOTE_TIER_H_
