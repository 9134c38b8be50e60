// An in-process block server: lends a region of this process's RAM to the
// remote tiers of other processes' engines over libfabric, as strata-blockd
// does from a process of its own. The MPI bootstrap (strata/mpi.h) runs one
// in every rank, so that the ranks of a job lend each other memory.
//
//   strata::BlockServerOptions o{.region_bytes = 4ull << 30, .secret = secret};
//   auto server = strata::BlockServer::Start(o);
//   // (*server)->address() is what other engines put in their
//   // RemoteTierOptions::servers (or what a Bootstrap hands them).
//
// Thread safety: address() and generation() from any thread; the server
// serves on a thread of its own from Start until it is destroyed.
#ifndef STRATA_BLOCK_SERVER_H_
#define STRATA_BLOCK_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata {

struct BlockServerOptions {
  // "IP:PORT" to serve on; port 0 picks a free one (see address()). The IP
  // must be one the clients reach this node by.
  std::string listen = "127.0.0.1:0";
  // Bytes of RAM to lend (a multiple of 4096), reserved at Start.
  uint64_t region_bytes = uint64_t{1} << 30;
  // The cluster's shared secret: only clients that present it are served.
  // Required.
  std::string secret;
  // libfabric provider: "tcp;ofi_rxm" anywhere, "verbs;ofi_rxm", "efa", ...
  std::string provider = "tcp;ofi_rxm";
  // One line per client connect and disconnect, and rare events. Empty:
  // standard error.
  std::function<void(std::string_view)> log;
};

class BlockServer {
 public:
  // Reserves and registers the region and starts serving. Errors:
  // kInvalidArgument (a bad field, named), kUnavailable (the provider or
  // the address cannot be used), kUnimplemented (Strata built without
  // libfabric).
  static absl::StatusOr<std::unique_ptr<BlockServer>> Start(
      const BlockServerOptions& options);
  // Stops serving and frees the region: the tiers that borrowed from it
  // lose what they placed here (they report it, see RemoteTierOptions).
  // Close the engines that borrow from it first where you can.
  ~BlockServer();
  BlockServer(const BlockServer&) = delete;
  BlockServer& operator=(const BlockServer&) = delete;

  // Where clients reach it, "IP:PORT" (with the port chosen when it was 0).
  const std::string& address() const;
  // Random per Start: a client reconnecting to the same address after a
  // restart sees a new generation, and its old copies stay lost.
  uint64_t generation() const;

 private:
  struct Impl;
  explicit BlockServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata

#endif  // STRATA_BLOCK_SERVER_H_
