// The public face of the remote tier's peers (strata/block_server.h, the
// Bootstrap of strata/strata.h): an in-process block server and the
// static list of servers. The MPI bootstrap is header-only (strata/mpi.h),
// so that libstrata itself never links MPI.
#include <atomic>
#include <fstream>
#include <iostream>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "api/strata/block_server.h"
#include "api/strata/strata.h"
#include "strata_config.h"
#if STRATA_HAVE_FABRIC
#include "tiers/remote/block_server.h"
#endif

namespace strata {
namespace {

class StaticList final : public Bootstrap {
 public:
  explicit StaticList(std::vector<std::string> servers) : servers_(std::move(servers)) {}
  absl::StatusOr<std::vector<std::string>> Servers() const override { return servers_; }

 private:
  std::vector<std::string> servers_;
};

bool IsHostPort(absl::string_view s) {
  const size_t colon = s.rfind(':');
  uint32_t port = 0;
  return colon != absl::string_view::npos && colon != 0 &&
         absl::SimpleAtoi(s.substr(colon + 1), &port) && port != 0 && port <= 65535;
}

}  // namespace

std::shared_ptr<const Bootstrap> StaticBootstrap(std::vector<std::string> servers) {
  return std::make_shared<StaticList>(std::move(servers));
}

absl::StatusOr<std::shared_ptr<const Bootstrap>> StaticBootstrapFromFile(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        "remote bootstrap: cannot read the server list ", path,
        "; give a readable file of host:port lines"));
  }
  std::vector<std::string> servers;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const absl::string_view entry = absl::StripAsciiWhitespace(line);
    if (entry.empty() || entry[0] == '#') continue;
    if (!IsHostPort(entry)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "remote bootstrap: ", path, " line ", n, ": '", entry,
          "' is not host:port"));
    }
    servers.emplace_back(entry);
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("remote bootstrap: reading ", path, " failed"));
  }
  if (servers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "remote bootstrap: ", path, " lists no server; write one host:port a line"));
  }
  return StaticBootstrap(std::move(servers));
}

#if STRATA_HAVE_FABRIC

struct BlockServer::Impl {
  std::unique_ptr<tiers::remote::BlockServer> server;
  std::string address;
  std::atomic<bool> stop{false};
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<BlockServer>> BlockServer::Start(
    const BlockServerOptions& options) {
  const size_t colon = options.listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BlockServerOptions::listen '", options.listen, "' is not IP:PORT (port 0: any free one)"));
  }
  std::function<void(std::string_view)> log = options.log;
  if (!log) log = [](std::string_view line) { std::cerr << line << "\n"; };
  absl::StatusOr<std::unique_ptr<tiers::remote::BlockServer>> server =
      tiers::remote::BlockServer::Create({.provider = options.provider,
                                          .node = options.listen.substr(0, colon),
                                          .service = options.listen.substr(colon + 1),
                                          .region_bytes = options.region_bytes,
                                          .secret = options.secret,
                                          .log = std::move(log)});
  if (!server.ok()) return server.status();
  auto impl = std::make_unique<Impl>();
  impl->server = std::move(server).value();
  impl->address = impl->server->address();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->server->Serve(raw->stop); });
  return std::unique_ptr<BlockServer>(new BlockServer(std::move(impl)));
}

BlockServer::~BlockServer() {
  impl_->stop.store(true);
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint64_t BlockServer::generation() const { return impl_->server->generation(); }

#else  // !STRATA_HAVE_FABRIC

struct BlockServer::Impl {
  std::string address;
};

absl::StatusOr<std::unique_ptr<BlockServer>> BlockServer::Start(
    const BlockServerOptions& options) {
  (void)options;
  return absl::UnimplementedError(
      "BlockServer: this Strata was built without libfabric; install "
      "libfabric-dev and rebuild with -Dfabric=enabled");
}

BlockServer::~BlockServer() = default;

uint64_t BlockServer::generation() const { return 0; }

#endif  // STRATA_HAVE_FABRIC

BlockServer::BlockServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

const std::string& BlockServer::address() const { return impl_->address; }

}  // namespace strata
