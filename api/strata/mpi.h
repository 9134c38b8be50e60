// The MPI bootstrap of the remote tier: the ranks of a job started by
// `mpirun` lend each other memory. Each rank runs a strata::BlockServer
// (strata/block_server.h); MpiBootstrap::Exchange gathers the servers'
// addresses over the caller's communicator (MPI_Allgather), and the rank's
// engine borrows from every other rank's server.
//
// Header-only and optional: include it where you use MPI and link MPI as
// you already do; libstrata itself never links MPI, never calls MPI_Init and
// reads no environment variable. Call MPI_Init before Exchange and
// MPI_Finalize after the engines and servers are gone.
//
//   MPI_Init(&argc, &argv);
//   auto server = strata::BlockServer::Start({.listen = "10.0.0.7:0",
//                                             .region_bytes = 8ull << 30,
//                                             .secret = secret});
//   auto peers = strata::MpiBootstrap::Exchange(MPI_COMM_WORLD,
//                                               (*server)->address());
//   strata::EngineOptions o;
//   o.tiers = {strata::Tier::kHost, strata::Tier::kRemote, strata::Tier::kNvme};
//   o.remote.bootstrap = *peers;
//   o.remote.secret = secret;
//   auto engine = strata::Engine::Open(o);
//   ... train ...
//   (*engine)->Close();
//   MPI_Barrier(MPI_COMM_WORLD);  // no rank stops lending while others borrow
//   server->reset();
//   MPI_Finalize();
//
// examples/mpi_lend.cpp is this, runnable.
#ifndef STRATA_MPI_H_
#define STRATA_MPI_H_

#include <mpi.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "strata/strata.h"

namespace strata {

class MpiBootstrap final : public Bootstrap {
 public:
  // Longest address a rank may give.
  static constexpr int kMaxAddress = 1024;

  // Collective over `comm`: every rank calls it, with the address of the
  // server it lends memory through. Returns the same error on every rank
  // when one rank's address is empty or longer than kMaxAddress
  // (kInvalidArgument); kUnavailable when an MPI call fails (under MPI's
  // default error handler the job aborts first).
  static absl::StatusOr<std::shared_ptr<const MpiBootstrap>> Exchange(
      MPI_Comm comm, std::string_view own_address) {
    int rank = 0, size = 0;
    if (int rc = MPI_Comm_rank(comm, &rank); rc != MPI_SUCCESS) return Failed("MPI_Comm_rank", rc);
    if (int rc = MPI_Comm_size(comm, &size); rc != MPI_SUCCESS) return Failed("MPI_Comm_size", rc);
    const int length = own_address.size() > static_cast<size_t>(kMaxAddress)
                           ? kMaxAddress + 1
                           : static_cast<int>(own_address.size());
    std::vector<int> lengths(static_cast<size_t>(size));
    if (int rc = MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm);
        rc != MPI_SUCCESS) {
      return Failed("MPI_Allgather", rc);
    }
    std::vector<int> offsets(static_cast<size_t>(size));
    int total = 0;
    for (int r = 0; r < size; ++r) {
      if (lengths[r] < 1 || lengths[r] > kMaxAddress) {
        return absl::InvalidArgumentError(absl::StrCat(
            "MpiBootstrap: rank ", r, " gave an address of ", lengths[r],
            " bytes; give each rank's BlockServer::address() (1..", kMaxAddress, " bytes)"));
      }
      offsets[r] = total;
      total += lengths[r];
    }
    std::string all(static_cast<size_t>(total), '\0');
    if (int rc = MPI_Allgatherv(own_address.data(), length, MPI_CHAR, all.data(),
                                lengths.data(), offsets.data(), MPI_CHAR, comm);
        rc != MPI_SUCCESS) {
      return Failed("MPI_Allgatherv", rc);
    }
    std::vector<std::string> addresses;
    for (int r = 0; r < size; ++r) addresses.push_back(all.substr(offsets[r], lengths[r]));
    return std::shared_ptr<const MpiBootstrap>(
        new MpiBootstrap(rank, std::move(addresses)));
  }

  // Every other rank's server, in rank order. kFailedPrecondition in a job
  // of one rank (no peer to borrow from).
  absl::StatusOr<std::vector<std::string>> Servers() const override {
    if (addresses_.size() < 2) {
      return absl::FailedPreconditionError(
          "MpiBootstrap: the job has one rank, so no peer lends memory; start "
          "two or more (mpirun -np N) or leave Tier::kRemote out of tiers");
    }
    std::vector<std::string> peers;
    for (size_t r = 0; r < addresses_.size(); ++r) {
      if (static_cast<int>(r) != rank_) peers.push_back(addresses_[r]);
    }
    return peers;
  }

  int rank() const { return rank_; }
  // Every rank's server, by rank (this one's too).
  const std::vector<std::string>& addresses() const { return addresses_; }

 private:
  MpiBootstrap(int rank, std::vector<std::string> addresses)
      : rank_(rank), addresses_(std::move(addresses)) {}

  static absl::Status Failed(const char* call, int rc) {
    char text[MPI_MAX_ERROR_STRING] = {};
    int n = 0;
    MPI_Error_string(rc, text, &n);
    return absl::UnavailableError(absl::StrCat("MpiBootstrap: ", call, " failed: ",
                                               std::string(text, static_cast<size_t>(n))));
  }

  int rank_;
  std::vector<std::string> addresses_;
};

}  // namespace strata

#endif  // STRATA_MPI_H_
