// The block server behind strata-blockd: lends one region of its RAM to
// remote tiers over libfabric.
//
// A client says hello with the cluster's shared secret and its fabric
// address, and gets a session and the server's generation (random per
// start, so a client that reconnects to a restarted server knows its old
// allocations are gone). It then allocates ranges of the region: each
// allocation is its own memory registration with its own key, so RMA
// reaches only what the client was given; bytes move by the client's
// fi_read / fi_write, the server's CPU never touches them. Bye (or the
// server's end) frees a session's allocations.
//
// Requests that are malformed, come without a valid session, or ask for
// what the server does not have get an error reply (or, when the sender
// cannot be known, are dropped with a log line); the server keeps serving.
//
// Threads: Serve runs the one thread that touches the server's state.
#ifndef STRATA_TIERS_REMOTE_BLOCK_SERVER_H_
#define STRATA_TIERS_REMOTE_BLOCK_SERVER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tiers/extent_allocator.h"
#include "tiers/remote/fabric.h"
#include "tiers/remote/protocol.h"

namespace strata::tiers::remote {

struct BlockServerConfig {
  std::string provider = "tcp;ofi_rxm";
  std::string node = "127.0.0.1";
  std::string service = "0";  // "0": a free port (see address())
  uint64_t region_bytes = uint64_t{1} << 30;
  std::string secret;         // required, at most kMaxText bytes
  std::function<void(std::string_view)> log;
};

class BlockServer {
 public:
  static constexpr uint64_t kAlign = 4096;
  static absl::StatusOr<std::unique_ptr<BlockServer>> Create(
      const BlockServerConfig& config);
  ~BlockServer();

  // Where clients reach it ("ip:port") and its generation.
  std::string address() const { return fabric_->DescribeAddress(); }
  uint64_t generation() const { return generation_; }

  // Serves until `stop` is set (checked every few milliseconds).
  void Serve(const std::atomic<bool>& stop);

 private:
  struct Allocation {
    uint64_t session;
    uint64_t offset;
    uint64_t bytes;
    Fabric::Region region;
  };
  struct Session {
    fi_addr_t peer;
    std::string name;  // for log lines
  };
  struct ServerOp;

  BlockServer(const BlockServerConfig& config, std::unique_ptr<Fabric> fabric,
              std::byte* region);
  absl::Status PostReceives();
  // One round of completions: sends are done with; receives are served
  // (when `serve`).
  void PollOnce(bool serve);
  void OnReceived(ServerOp& op);
  void Handle(const Message& m);
  Message Hello(const Message& m, fi_addr_t* peer);
  Message Allocate(const Message& m);
  Message Free(const Message& m);
  Message Stat(const Message& m);
  Message Bye(const Message& m);
  void SendReply(const Message& reply, fi_addr_t peer);
  void SendQueued();
  void EndSession(uint64_t session);
  // Counts a dropped message; true when it deserves a log line.
  bool CountDropped();
  void Log(std::string_view line) const;

  BlockServerConfig config_;
  std::unique_ptr<Fabric> fabric_;
  std::byte* region_;
  ExtentAllocator free_;
  uint64_t used_ = 0;
  uint64_t generation_ = 0;
  uint64_t next_id_ = 1;
  uint64_t next_key_;
  uint64_t malformed_ = 0;
  absl::flat_hash_map<uint64_t, Session> sessions_;
  absl::flat_hash_map<uint64_t, Allocation> allocations_;
  std::unique_ptr<ServerOp[]> receives_;
  std::deque<ServerOp*> unsent_;  // replies waiting for send-queue room
  int sends_in_flight_ = 0;
};

}  // namespace strata::tiers::remote

#endif  // STRATA_TIERS_REMOTE_BLOCK_SERVER_H_
