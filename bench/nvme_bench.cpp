// NVMe tier throughput through the engine, beside raw io_uring O_DIRECT on a
// file of the same size in the same directory, same block size and depth.
//
//   BM_NvmeStreamRead/strata      a sequential read pass over a tensor 4x the
//                                 host tier, prefetching a window ahead
//   BM_NvmeStreamRead/baseline    RawSequentialRead, 2 MiB I/Os
//   BM_NvmeWriteBack/strata       overwrite every block of such a tensor and
//                                 flush: every byte is written back to NVMe
//   BM_NvmeWriteBack/baseline     RawSequentialWrite, 2 MiB I/Os
//   BM_NvmeRandomRead64K/strata   batches of 32 random 64 KiB blocks of a
//                                 tensor 32x its own (smaller) host tier,
//                                 readahead off: prefetch the batch, then
//                                 pin each; nvme_read_fraction says how many
//                                 of the bytes pinned came from NVMe
//   BM_NvmeRandomRead64K/baseline RawRandomReader: the same batches of
//                                 64 KiB reads at the engine's queue depth,
//                                 through one ring kept for the whole run
//
//   build/bench/nvme_bench [--nvme_dir=DIR] [benchmark flags]
// DIR (default ./strata-bench, created) should be on the device to measure.
// The baselines stream through as much memory as the engine's host tier
// (bench/nvme_baseline.h says why). Stream and write-back: a 64 MiB host
// tier, a 256 MiB tensor; random reads: a 16 MiB host tier, a 512 MiB
// tensor.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/nvme_baseline.h"
#include "strata/strata.h"

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kHostBytes = 64 * kMiB;
constexpr uint64_t kWorkingSet = 4 * kHostBytes;  // 4x the host tier
constexpr uint64_t kStreamBlock = 2 * kMiB;
constexpr uint32_t kQueueDepth = 16;   // I/Os in flight, both sides
// The random reads: a host tier of 256 blocks over a tensor of 8192, so
// that about 31 of 32 random pins miss and read NVMe (nvme_read_fraction).
constexpr uint64_t kRandomBlock = 64 << 10;
constexpr uint64_t kRandomHostBytes = 16 * kMiB;
constexpr uint64_t kRandomWorkingSet = 32 * kRandomHostBytes;
constexpr uint64_t kRandomBatch = 32;  // random reads per iteration

std::string nvme_dir = "./strata-bench";

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "nvme_bench: %s: %s\n", what,
                 std::string(status.message()).c_str());
    std::exit(1);
  }
}

// readahead_blocks: -1 (automatic) or 0 (off).
std::unique_ptr<strata::Engine> OpenEngine(uint64_t block_bytes,
                                           const std::string& sub,
                                           uint64_t host_bytes = kHostBytes,
                                           int readahead_blocks = -1) {
  strata::EngineOptions options;
  options.host.capacity_bytes = host_bytes;
  options.default_block_bytes = block_bytes;
  options.readahead_blocks = readahead_blocks;
  options.nvme.path = nvme_dir + "/" + sub;
  options.nvme.queue_depth = kQueueDepth;
  options.policy = "lru";
  auto engine = strata::Engine::Open(options);
  Check(engine.status(), "opening the engine");
  return std::move(*engine);
}

// Writes every block of a new tensor of `bytes` (so that it lives on NVMe)
// and flushes.
strata::Tensor Populate(strata::Engine& engine, uint64_t block_bytes,
                        uint64_t bytes = kWorkingSet) {
  auto t = engine.CreateTensor(
      "data", {.dtype = strata::DType::kU8,
               .shape = {static_cast<int64_t>(bytes)},
               .block_bytes = block_bytes});
  Check(t.status(), "creating the tensor");
  for (uint64_t b = 0; b < t->num_blocks(); ++b) {
    auto pin = engine.Pin(*t, b, strata::Tier::kHost, strata::Access::kOverwrite);
    Check(pin.status(), "populating");
    // Pseudo-random bytes, as in the baseline, so that a device that
    // compresses or skips zeros flatters neither side.
    uint64_t x = 0x9e3779b97f4a7c15ull * (b + 1);
    for (uint64_t& word : pin->as<uint64_t>()) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      word = x;
    }
  }
  Check(engine.Flush(*t), "flushing");
  return *t;
}

void BM_StreamReadStrata(benchmark::State& state) {
  auto engine = OpenEngine(kStreamBlock, "stream");
  strata::Tensor t = Populate(*engine, kStreamBlock);
  const uint64_t blocks = t.num_blocks();
  const uint64_t window = kQueueDepth;
  const uint64_t read_before =
      engine->GetStats().tier(strata::Tier::kNvme).bytes_out;
  for (auto _ : state) {
    // Keep `window` blocks in flight: the first window at once, then one
    // more block each time the reader takes one.
    Check(engine->Prefetch(t, {0, window}, strata::Tier::kHost).status(), "prefetch");
    for (uint64_t b = 0; b < blocks; ++b) {
      if (b + window < blocks) {
        Check(engine->Prefetch(t, strata::BlockRange::One(b + window),
                               strata::Tier::kHost).status(),
              "prefetch");
      }
      auto pin = engine->Pin(t, b, strata::Tier::kHost, strata::Access::kRead);
      Check(pin.status(), "pin");
      benchmark::DoNotOptimize(pin->bytes()[0]);
    }
  }
  state.SetBytesProcessed(state.iterations() * kWorkingSet);
  // Proof that the pass really read from NVMe: 1.0 means every byte.
  state.counters["nvme_read_fraction"] =
      static_cast<double>(engine->GetStats().tier(strata::Tier::kNvme).bytes_out -
                          read_before) /
      static_cast<double>(state.iterations() * kWorkingSet);
}

void BM_StreamReadBaseline(benchmark::State& state) {
  const std::string path = nvme_dir + "/raw-stream.bin";
  Check(strata::bench::RawSequentialWrite(path, kStreamBlock, kQueueDepth, kWorkingSet)
            .status(), "raw write");
  for (auto _ : state) {
    auto r = strata::bench::RawSequentialRead(path, kStreamBlock, kQueueDepth, kWorkingSet,
                                                     kHostBytes);
    Check(r.status(), "raw read");
    state.SetIterationTime(r->seconds);
  }
  state.SetBytesProcessed(state.iterations() * kWorkingSet);
  std::remove(path.c_str());
}

void BM_WriteBackStrata(benchmark::State& state) {
  auto engine = OpenEngine(kStreamBlock, "writeback");
  strata::Tensor t = Populate(*engine, kStreamBlock);
  // Where the time goes: the pins (which wait for the write-backs that
  // evictions start) and the final Flush (the blocks still dirty).
  using Clock = std::chrono::steady_clock;
  Clock::duration pins{}, flush{};
  for (auto _ : state) {
    const Clock::time_point start = Clock::now();
    for (uint64_t b = 0; b < t.num_blocks(); ++b) {
      auto pin = engine->Pin(t, b, strata::Tier::kHost, strata::Access::kOverwrite);
      Check(pin.status(), "pin");
      // A real writer fills the block; we stamp it, which costs no bandwidth.
      std::memcpy(pin->bytes().data(), &b, sizeof(b));
    }
    const Clock::time_point pinned = Clock::now();
    Check(engine->Flush(t), "flush");
    pins += pinned - start;
    flush += Clock::now() - pinned;
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["pins_ms"] = std::chrono::duration<double, std::milli>(pins).count() / n;
  state.counters["flush_ms"] = std::chrono::duration<double, std::milli>(flush).count() / n;
  state.SetBytesProcessed(state.iterations() * kWorkingSet);
}

void BM_WriteBackBaseline(benchmark::State& state) {
  const std::string path = nvme_dir + "/raw-write.bin";
  // Untimed first pass: the engine's side rewrites extents it wrote while
  // populating, so the baseline rewrites a written file too.
  Check(strata::bench::RawSequentialWrite(path, kStreamBlock, kQueueDepth, kWorkingSet)
            .status(), "raw write");
  for (auto _ : state) {
    auto r = strata::bench::RawSequentialWrite(path, kStreamBlock, kQueueDepth,
                                               kWorkingSet, kHostBytes);
    Check(r.status(), "raw write");
    state.SetIterationTime(r->seconds);
  }
  state.SetBytesProcessed(state.iterations() * kWorkingSet);
  std::remove(path.c_str());
}

void BM_RandomReadStrata(benchmark::State& state) {
  auto engine = OpenEngine(kRandomBlock, "random", kRandomHostBytes,
                           /*readahead_blocks=*/0);
  strata::Tensor t = Populate(*engine, kRandomBlock, kRandomWorkingSet);
  std::mt19937_64 rng(1);  // the baseline's offsets, block for block
  std::uniform_int_distribution<uint64_t> pick(0, t.num_blocks() - 1);
  std::vector<uint64_t> batch(kRandomBatch);
  const uint64_t read_before =
      engine->GetStats().tier(strata::Tier::kNvme).bytes_out;
  for (auto _ : state) {
    for (uint64_t& b : batch) b = pick(rng);
    for (uint64_t b : batch) {
      Check(engine->Prefetch(t, strata::BlockRange::One(b), strata::Tier::kHost).status(),
            "prefetch");
    }
    for (uint64_t b : batch) {
      auto pin = engine->Pin(t, b, strata::Tier::kHost, strata::Access::kRead);
      Check(pin.status(), "pin");
      benchmark::DoNotOptimize(pin->bytes()[0]);
    }
  }
  state.SetItemsProcessed(state.iterations() * kRandomBatch);
  // The bytes NVMe served over the bytes the pins asked for: the rest were
  // host hits (a block still resident from an earlier batch, or drawn twice).
  state.counters["nvme_read_fraction"] =
      static_cast<double>(engine->GetStats().tier(strata::Tier::kNvme).bytes_out -
                          read_before) /
      static_cast<double>(state.iterations() * kRandomBatch * kRandomBlock);
}

void BM_RandomReadBaseline(benchmark::State& state) {
  const std::string path = nvme_dir + "/raw-random.bin";
  Check(strata::bench::RawSequentialWrite(path, kStreamBlock, kQueueDepth,
                                          kRandomWorkingSet)
            .status(), "raw write");
  auto reader = strata::bench::RawRandomReader::Open(
      path, kRandomBlock, kQueueDepth, /*seed=*/1, kRandomHostBytes);
  Check(reader.status(), "raw random reader");
  for (auto _ : state) {
    auto r = (*reader)->Read(kRandomBatch);
    Check(r.status(), "raw random read");
    state.SetIterationTime(r->seconds);
  }
  state.SetItemsProcessed(state.iterations() * kRandomBatch);
  reader->reset();
  std::remove(path.c_str());
}

BENCHMARK(BM_StreamReadStrata)->Name("BM_NvmeStreamRead/strata")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_StreamReadBaseline)->Name("BM_NvmeStreamRead/baseline")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WriteBackStrata)->Name("BM_NvmeWriteBack/strata")->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WriteBackBaseline)->Name("BM_NvmeWriteBack/baseline")->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RandomReadStrata)->Name("BM_NvmeRandomRead64K/strata")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RandomReadBaseline)->Name("BM_NvmeRandomRead64K/baseline")->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--nvme_dir=", 11) == 0) {
      nvme_dir = argv[i] + 11;
    } else {
      std::fprintf(stderr, "nvme_bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (mkdir(nvme_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "nvme_bench: cannot create %s: %s\n", nvme_dir.c_str(),
                 std::strerror(errno));
    return 2;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
