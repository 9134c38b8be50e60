// strata-blockd: lends this node's RAM to the remote tiers of other nodes'
// engines over libfabric (tiers/remote/block_server.h says how).
//
//   strata-blockd --listen=10.0.0.7:7400 --region_bytes=68719476736
//                 --secret_file=/etc/strata/secret [--provider=verbs;ofi_rxm]
//
// Prints "strata-blockd: listening on IP:PORT ..." once it serves (with
// --listen=IP:0 the port is the one the system chose), one line per client
// connect and disconnect, and stops cleanly on SIGTERM or SIGINT.
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "tiers/remote/block_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "IP:PORT to serve on; port 0 picks a free one");
ABSL_FLAG(uint64_t, region_bytes, uint64_t{1} << 30,
          "bytes of RAM to lend (a multiple of 4096)");
ABSL_FLAG(std::string, secret_file, "",
          "file holding the cluster's shared secret (or set STRATA_SECRET)");
ABSL_FLAG(std::string, provider, "tcp;ofi_rxm",
          "libfabric provider (fi_info -l lists them)");

namespace {

std::atomic<bool> g_stop{false};
extern "C" void OnSignal(int) { g_stop.store(true); }

int Fail(const std::string& why, int code = 2) {
  std::cerr << "strata-blockd: " << why << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "lends RAM to Strata remote tiers over libfabric.\n"
      "  strata-blockd --listen=IP:PORT --region_bytes=N --secret_file=F");
  absl::ParseCommandLine(argc, argv);
  std::string secret;
  if (const std::string file = absl::GetFlag(FLAGS_secret_file); !file.empty()) {
    std::ifstream in(file);
    if (!in) return Fail(absl::StrCat("cannot read the secret file ", file));
    std::getline(in, secret);
  } else if (const char* env = std::getenv("STRATA_SECRET"); env != nullptr) {
    secret = env;
  }
  if (secret.empty()) {
    return Fail("no shared secret: give --secret_file=FILE or set STRATA_SECRET");
  }
  const std::string listen = absl::GetFlag(FLAGS_listen);
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Fail(absl::StrCat("--listen=", listen, " is not IP:PORT"));
  }
  strata::tiers::remote::BlockServerConfig config{
      .provider = absl::GetFlag(FLAGS_provider),
      .node = listen.substr(0, colon),
      .service = listen.substr(colon + 1),
      .region_bytes = absl::GetFlag(FLAGS_region_bytes),
      .secret = secret,
      .log = [](std::string_view line) { std::cout << line << std::endl; }};
  auto server = strata::tiers::remote::BlockServer::Create(config);
  if (!server.ok()) return Fail(std::string(server.status().ToString()), 1);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::cout << "strata-blockd: listening on " << (*server)->address()
            << " (provider " << config.provider << ", region "
            << config.region_bytes << " bytes, generation "
            << (*server)->generation() << ")" << std::endl;
  (*server)->Serve(g_stop);
  std::cout << "strata-blockd: stopped" << std::endl;
  return 0;
}
