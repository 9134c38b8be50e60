// Ranks of an MPI job lend each other memory (the remote tier's MPI
// bootstrap, strata/mpi.h).
//
// Each rank lends --lend_mib of its RAM through a strata::BlockServer,
// learns the other ranks' servers with MpiBootstrap::Exchange
// (MPI_Allgather), and opens an engine whose host tier holds --host_blocks
// blocks over a remote tier borrowing from every other rank. It writes
// --blocks blocks of 1 MiB (most of them are evicted into the other ranks'
// RAM), reads them back, checks every byte, and rank 0 prints what the job
// moved. Exit status 1 when any rank saw a wrong byte or an error.
//
//   mpirun -np 3 build/examples/mpi_lend                 # one node
//   mpirun -np 3 build/examples/mpi_lend --listen_ip=10.0.0.7
//   (as root add --allow-run-as-root; more ranks than cores: --oversubscribe)
//
// On a cluster, give --listen_ip the address of each node's fabric
// interface (a per-node wrapper script can pick it) and the provider of
// the fabric (--provider=verbs;ofi_rxm, efa, cxi).
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "strata/block_server.h"
#include "strata/mpi.h"
#include "strata/strata.h"

ABSL_FLAG(std::string, listen_ip, "127.0.0.1", "IP this rank's block server listens on");
ABSL_FLAG(std::string, provider, "tcp;ofi_rxm", "libfabric provider");
ABSL_FLAG(uint64_t, lend_mib, 64, "MiB of RAM each rank lends");
ABSL_FLAG(uint64_t, blocks, 48, "blocks of 1 MiB each rank writes");
ABSL_FLAG(uint64_t, host_blocks, 8, "blocks the host tier holds");

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// The bytes of word `i` of block `b` in run `run`.
uint64_t Word(uint64_t run, uint64_t b, uint64_t i) {
  uint64_t x = run ^ (b * 0x9E3779B97F4A7C15ull) ^ (i * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 29);
}

// What this rank does; false on any error or wrong byte (printed).
bool Run(int rank, int size) {
  // A secret all ranks share: drawn by rank 0 and broadcast. (A cluster
  // would read the one its block servers were started with.)
  uint64_t draw[2] = {std::random_device{}(), std::random_device{}()};
  MPI_Bcast(draw, 2, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  const std::string secret = "mpi_lend-" + std::to_string(draw[0]) + std::to_string(draw[1]);

  auto server = strata::BlockServer::Start(
      {.listen = absl::GetFlag(FLAGS_listen_ip) + ":0",
       .region_bytes = absl::GetFlag(FLAGS_lend_mib) * kMiB,
       .secret = secret,
       .provider = absl::GetFlag(FLAGS_provider),
       .log = [](std::string_view) {}});
  // Every rank takes part in the exchange, also one whose server failed
  // (its empty address fails the exchange on every rank alike).
  auto peers = strata::MpiBootstrap::Exchange(
      MPI_COMM_WORLD, server.ok() ? (*server)->address() : std::string());
  if (!server.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, server.status().ToString().c_str());
    return false;
  }
  if (!peers.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, peers.status().ToString().c_str());
    return false;
  }
  bool ok = true;
  {
    const uint64_t blocks = absl::GetFlag(FLAGS_blocks);
    strata::EngineOptions o;
    o.tiers = {strata::Tier::kHost, strata::Tier::kRemote};
    o.host.capacity_bytes = absl::GetFlag(FLAGS_host_blocks) * kMiB;
    o.default_block_bytes = kMiB;
    o.remote.bootstrap = *peers;
    o.remote.secret = secret;
    o.remote.provider = absl::GetFlag(FLAGS_provider);
    // Each peer lends its share of what does not fit in host memory.
    o.remote.capacity_bytes = (blocks / (size - 1) + 1) * kMiB;
    auto engine = strata::Engine::Open(o);
    if (!engine.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, engine.status().ToString().c_str());
      ok = false;
    } else {
      strata::Engine& e = **engine;
      const uint64_t run = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
      auto t = e.CreateTensor("weights", {.dtype = strata::DType::kU8,
                                          .shape = {static_cast<int64_t>(blocks * kMiB)}});
      for (uint64_t b = 0; ok && t.ok() && b < blocks; ++b) {
        auto pin = e.Pin(*t, b, strata::Tier::kHost, strata::Access::kOverwrite);
        if (!pin.ok()) {
          std::fprintf(stderr, "rank %d: write block %lu: %s\n", rank,
                       static_cast<unsigned long>(b), pin.status().ToString().c_str());
          ok = false;
          break;
        }
        std::span<uint64_t> words = pin->as<uint64_t>();
        for (uint64_t i = 0; i < words.size(); ++i) words[i] = Word(run, b, i);
      }
      for (uint64_t b = 0; ok && t.ok() && b < blocks; ++b) {
        auto pin = e.Pin(*t, b, strata::Tier::kHost, strata::Access::kRead);
        if (!pin.ok()) {
          std::fprintf(stderr, "rank %d: read block %lu: %s\n", rank,
                       static_cast<unsigned long>(b), pin.status().ToString().c_str());
          ok = false;
          break;
        }
        std::span<const uint64_t> words = pin->as<uint64_t>();
        for (uint64_t i = 0; i < words.size(); ++i) {
          if (words[i] != Word(run, b, i)) {
            std::fprintf(stderr, "rank %d: block %lu word %lu is wrong\n", rank,
                         static_cast<unsigned long>(b), static_cast<unsigned long>(i));
            ok = false;
            break;
          }
        }
      }
      if (!t.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, t.status().ToString().c_str());
        ok = false;
      }
      const strata::EngineStats stats = e.GetStats();
      uint64_t moved[2] = {stats.tier(strata::Tier::kRemote).bytes_in,
                           stats.tier(strata::Tier::kRemote).bytes_out};
      uint64_t total[2] = {};
      MPI_Reduce(moved, total, 2, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
      if (rank == 0) {
        std::printf("mpi_lend: %d ranks lent each other memory: %.1f MiB evicted to "
                    "peers, %.1f MiB read back from them\n",
                    size, total[0] / double(kMiB), total[1] / double(kMiB));
      }
      if (absl::Status closed = e.Close(); !closed.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, closed.ToString().c_str());
        ok = false;
      }
    }
  }
  // No rank stops lending while another still borrows.
  MPI_Barrier(MPI_COMM_WORLD);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  absl::ParseCommandLine(argc, argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int failed = 0;
  if (size < 2) {
    if (rank == 0) std::fprintf(stderr, "mpi_lend: start 2 or more ranks (mpirun -np 3 ...)\n");
    failed = 1;
  } else {
    failed = Run(rank, size) ? 0 : 1;
  }
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
