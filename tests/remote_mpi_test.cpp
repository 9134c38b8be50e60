// The MPI bootstrap of the remote tier (strata/mpi.h), run as an MPI job:
// tests/mpirun.sh starts this program as 3 ranks (meson test: suite
// remote). Each rank lends RAM through a BlockServer, the ranks exchange
// the servers' addresses with MPI_Allgather, and each rank's engine
// (host -> remote, no NVMe) evicts fresh random blocks to the other ranks'
// memory and reads them back bit for bit.
//
// Every rank runs every test in the same order (they are collective); the
// job fails when any rank fails.
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "api/strata/block_server.h"
#include "api/strata/mpi.h"
#include "api/strata/strata.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace strata {
namespace {

using test::FillPattern;
using test::FirstPatternMismatch;
using test::Seed;

constexpr uint64_t kKiB = 1024, kMiB = 1024 * kKiB;

int Rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int Size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// A secret drawn by rank 0 and shared with the others.
std::string SharedSecret() {
  uint64_t words[2] = {std::random_device{}(), std::random_device{}()};
  MPI_Bcast(words, 2, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return "mpi-test-" + std::to_string(words[0]) + "-" + std::to_string(words[1]);
}

TEST(MpiBootstrapTest, RanksLendEachOtherMemory) {
  const int rank = Rank(), size = Size();
  ASSERT_GE(size, 2) << "run as an MPI job of 2 or more ranks (tests/mpirun.sh)";
  const std::string secret = SharedSecret();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlockServer> server,
                       BlockServer::Start({.listen = "127.0.0.1:0",
                                           .region_bytes = 16 * kMiB,
                                           .secret = secret,
                                           .log = test::QuietLog}));
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<const MpiBootstrap> peers,
                       MpiBootstrap::Exchange(MPI_COMM_WORLD, server->address()));
  ASSERT_EQ(peers->addresses().size(), static_cast<size_t>(size));
  EXPECT_EQ(peers->addresses()[rank], server->address());
  EXPECT_EQ(peers->rank(), rank);
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> servers, peers->Servers());
  ASSERT_EQ(servers.size(), static_cast<size_t>(size - 1));
  for (const std::string& s : servers) {
    EXPECT_NE(s, server->address()) << "a rank borrows from itself";
  }

  // Host holds 8 blocks of 64; the rest can live only in the peers' RAM.
  constexpr uint64_t kBlock = 64 * kKiB, kBlocks = 64, kHostBlocks = 8;
  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  EngineOptions o = test::SmallOptions(dir.Sub("nvme"), kHostBlocks * kBlock, kBlock);
  o.tiers = {Tier::kHost, Tier::kRemote};
  o.remote.bootstrap = peers;
  o.remote.secret = secret;
  o.remote.capacity_bytes = 4 * kMiB;  // from each peer: 2 x 4 MiB for 4 MiB
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> e, Engine::Open(o));
    ASSERT_OK_AND_ASSIGN(Tensor t, e->CreateTensor(
                                       "t", {.dtype = DType::kU8,
                                             .shape = {static_cast<int64_t>(kBlocks * kBlock)},
                                             .block_bytes = kBlock}));
    const uint64_t run = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    for (uint64_t b = 0; b < kBlocks; ++b) {
      auto pin = e->Pin(t, b, Tier::kHost, Access::kOverwrite);
      ASSERT_TRUE(pin.ok()) << "rank " << rank << " block " << b << ": " << pin.status();
      FillPattern(pin->bytes(), Seed(run, b, 1));
    }
    for (uint64_t b = 0; b < kBlocks; ++b) {
      auto pin = e->Pin(t, b, Tier::kHost, Access::kRead);
      ASSERT_TRUE(pin.ok()) << "rank " << rank << " block " << b << ": " << pin.status();
      EXPECT_EQ(FirstPatternMismatch(pin->bytes(), Seed(run, b, 1)), -1)
          << "rank " << rank << " block " << b << " came back with other bytes";
    }
    const EngineStats stats = e->GetStats();
    EXPECT_GE(stats.tier(Tier::kRemote).bytes_in, (kBlocks - kHostBlocks) * kBlock)
        << "victims did not go to the other ranks' memory";
    EXPECT_GT(stats.tier(Tier::kRemote).bytes_out, 0u)
        << "no block was read back from another rank";
    EXPECT_OK(e->Close());
  }
  // No rank stops lending while another still borrows.
  MPI_Barrier(MPI_COMM_WORLD);
}

// One rank's bad address fails the exchange on every rank alike (no rank
// is left waiting in a collective the others skipped).
TEST(MpiBootstrapTest, ABadAddressFailsEveryRank) {
  const std::string mine = Rank() == 1 ? "" : "127.0.0.1:7400";
  EXPECT_EQ(MpiBootstrap::Exchange(MPI_COMM_WORLD, mine).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string too_long(MpiBootstrap::kMaxAddress + 1, 'x');
  EXPECT_EQ(MpiBootstrap::Exchange(MPI_COMM_WORLD, Rank() == 0 ? too_long : mine)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
