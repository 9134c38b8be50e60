// The GPU tier beside raw CUDA, each workload and its baseline in the same
// run (built with -Dcuda; exits 77, "skipped", where there is no GPU):
//
//   BM_GpuPromote/strata/<MiB>        Prefetch of --total_mib of blocks of
//                                     <MiB> held on host into the GPU (the
//                                     previous such range is evicted: clean)
//   BM_GpuPromote/baseline/<MiB>      cudaMemcpyAsync H2D of the same blocks
//                                     from cudaHostRegister'ed memory, one
//                                     non-blocking stream
//   BM_GpuDemote/strata/<MiB>         Flush of --total_mib of dirty GPU
//                                     blocks down to host
//   BM_GpuDemote/baseline/<MiB>       cudaMemcpyAsync D2H of the same blocks
//   BM_GpuPromoteDemote/strata/<MiB>  a Prefetch of one range while a Flush
//                                     demotes another, both at once
//   BM_GpuPromoteDemote/baseline/<MiB> H2D and D2H on two streams at once
//   BM_GpuPinAsync/strata/<MiB>       demand read pins of every block of a
//                                     range held on host (evicting the
//                                     other range), each PinAsync +
//                                     WaitOn + ReleaseAfter on a caller's
//                                     stream, then one stream sync; also
//                                     `vs_pin`: its speed over the same
//                                     loop with Pin, which waits for each
//                                     copy
//   BM_GpuPinResident/strata          Pin(kGpu) + unpin of a resident block
//   BM_PinUnpinResident/strata        Pin(kHost) + unpin of a resident block
//
// Each strata workload also times its baseline for the same bytes (or pin
// count) right after and reports `vs_baseline` (strata speed / baseline
// speed): the targets are >= 0.9 (promote, demote), >= 0.85 (both),
// and for the resident pin gpu/host time <= 2.
//
//   build-cuda/bench/gpu_bench [--total_mib=1024] [benchmark flags]
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "strata/strata.h"

namespace {

using strata::Access;
using strata::Tier;
using Clock = std::chrono::steady_clock;

uint64_t total_bytes = uint64_t{1024} << 20;

[[noreturn]] void Die(const std::string& what, const std::string& why) {
  std::fprintf(stderr, "gpu_bench: %s: %s\n", what.c_str(), why.c_str());
  std::exit(1);
}
void Check(const absl::Status& s, const std::string& what) {
  if (!s.ok()) Die(what, std::string(s.message()));
}
void Check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) Die(what, cudaGetErrorString(e));
}
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ---------------------------------------------------------------------------
// Raw CUDA: the baselines

struct Raw {
  std::byte* host = nullptr;  // 2 * total, registered
  std::byte* device = nullptr;  // 2 * total
  cudaStream_t h2d = nullptr, d2h = nullptr;

  Raw() {
    const uint64_t bytes = 2 * total_bytes;
    host = static_cast<std::byte*>(std::aligned_alloc(4096, bytes));
    if (host == nullptr) Die("baseline", "no host memory");
    std::memset(host, 1, bytes);
    Check(cudaHostRegister(host, bytes, cudaHostRegisterDefault), "cudaHostRegister");
    Check(cudaMalloc(reinterpret_cast<void**>(&device), bytes), "cudaMalloc");
    Check(cudaStreamCreateWithFlags(&h2d, cudaStreamNonBlocking), "stream");
    Check(cudaStreamCreateWithFlags(&d2h, cudaStreamNonBlocking), "stream");
  }
  // One copy a block of `block` bytes over `total_bytes`, in each asked
  // direction (the two on two streams), then waits.
  double Copy(uint64_t block, bool up, bool down) {
    const auto t0 = Clock::now();
    for (uint64_t off = 0; off < total_bytes; off += block) {
      if (up) {
        Check(cudaMemcpyAsync(device + off, host + off, block, cudaMemcpyHostToDevice, h2d),
              "H2D");
      }
      if (down) {
        Check(cudaMemcpyAsync(host + total_bytes + off, device + total_bytes + off, block,
                              cudaMemcpyDeviceToHost, d2h),
              "D2H");
      }
    }
    Check(cudaStreamSynchronize(h2d), "sync");
    Check(cudaStreamSynchronize(d2h), "sync");
    return Seconds(Clock::now() - t0);
  }
};

Raw& TheRaw() {
  static Raw* raw = new Raw();
  return *raw;
}

// ---------------------------------------------------------------------------
// The engine: gpu over host, two tensors of total_bytes each

struct Fixture {
  std::unique_ptr<strata::Engine> engine;
  strata::Tensor a, b;
  uint64_t block = 0;
};

Fixture& TheFixture(uint64_t block) {
  static Fixture* f = nullptr;
  if (f != nullptr && f->block == block) return *f;
  if (f != nullptr) {
    f->engine.reset();
    delete f;
  }
  f = new Fixture();
  f->block = block;
  strata::EngineOptions o;
  o.tiers = {Tier::kGpu, Tier::kHost};
  o.host.capacity_bytes = 2 * total_bytes + 4 * block;
  o.gpu.capacity_bytes = total_bytes + 4 * block;  // one tensor and a little
  o.default_block_bytes = block;
  o.readahead_blocks = 0;
  o.policy = "lru";
  auto e = strata::Engine::Open(o);
  Check(e.status(), "Engine::Open");
  f->engine = std::move(*e);
  const strata::TensorSpec spec{.dtype = strata::DType::kU8,
                                .shape = {static_cast<int64_t>(total_bytes)},
                                .block_bytes = block};
  auto a = f->engine->CreateTensor("a", spec);
  auto b = f->engine->CreateTensor("b", spec);
  Check(a.status(), "CreateTensor");
  Check(b.status(), "CreateTensor");
  f->a = *a;
  f->b = *b;
  for (const strata::Tensor* t : {&f->a, &f->b}) {
    for (uint64_t i = 0; i < t->num_blocks(); ++i) {
      auto pin = f->engine->Pin(*t, i, Tier::kHost, Access::kOverwrite);
      Check(pin.status(), "host pin");
      std::memset(pin->bytes().data(), static_cast<int>(i + 1), pin->size());
    }
  }
  return *f;
}

void Promote(Fixture& f, const strata::Tensor& t) {
  auto h = f.engine->Prefetch(t, strata::BlockRange::All(), Tier::kGpu);
  Check(h.status(), "Prefetch");
  Check(h->Wait(), "Prefetch");
}

// Makes every GPU copy of `t` dirty (a write pin drops its host copy).
void Dirty(Fixture& f, const strata::Tensor& t) {
  for (uint64_t i = 0; i < t.num_blocks(); ++i) {
    auto pin = f.engine->Pin(t, i, Tier::kGpu, Access::kWrite);
    Check(pin.status(), "GPU write pin");
  }
}

uint64_t GpuBytes(Fixture& f, bool in) {
  const strata::TierStats s = f.engine->GetStats().tier(Tier::kGpu);
  return in ? s.bytes_in : s.bytes_out;
}

// `moved`: the bytes the engine copied in the timed part (its own count:
// evict-ahead may have dropped some of a range early, and those come up
// again). The baseline copies total_bytes an iteration.
void Report(benchmark::State& state, uint64_t moved, double strata_s,
            double baseline_s) {
  state.SetBytesProcessed(static_cast<int64_t>(moved));
  const double base_rate = static_cast<double>(state.iterations() * total_bytes) / baseline_s;
  state.counters["vs_baseline"] = static_cast<double>(moved) / strata_s / base_rate;
}

void BM_GpuPromote_strata(benchmark::State& state) {
  Fixture& f = TheFixture(static_cast<uint64_t>(state.range(0)) << 20);
  Promote(f, f.a);
  double s = 0;
  bool flip = false;
  const uint64_t in0 = GpuBytes(f, true);
  for (auto _ : state) {
    const auto t0 = Clock::now();
    Promote(f, flip ? f.a : f.b);  // evicts the other (clean)
    s += Seconds(Clock::now() - t0);
    flip = !flip;
  }
  double base = 0;
  for (benchmark::IterationCount i = 0; i < state.iterations(); ++i) {
    base += TheRaw().Copy(f.block, true, false);
  }
  Report(state, GpuBytes(f, true) - in0, s, base);
}

void BM_GpuPromote_baseline(benchmark::State& state) {
  const uint64_t block = static_cast<uint64_t>(state.range(0)) << 20;
  for (auto _ : state) TheRaw().Copy(block, true, false);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * total_bytes));
}

void BM_GpuDemote_strata(benchmark::State& state) {
  Fixture& f = TheFixture(static_cast<uint64_t>(state.range(0)) << 20);
  Promote(f, f.a);
  double s = 0;
  uint64_t moved = 0;
  for (auto _ : state) {
    state.PauseTiming();
    Dirty(f, f.a);
    const uint64_t out0 = GpuBytes(f, false);
    state.ResumeTiming();
    const auto t0 = Clock::now();
    Check(f.engine->Flush(f.a), "Flush");
    s += Seconds(Clock::now() - t0);
    const uint64_t flushed = GpuBytes(f, false) - out0;
    if (flushed == 0) {
      // Nothing to time (and the baseline below would copy for ever).
      state.SkipWithError("Flush moved no bytes out of the GPU: its copies were not dirty");
      return;
    }
    moved += flushed;
  }
  double base = 0;
  for (benchmark::IterationCount i = 0; i < state.iterations(); ++i) {
    base += TheRaw().Copy(f.block, false, true);
  }
  Report(state, moved, s, base);
}

void BM_GpuDemote_baseline(benchmark::State& state) {
  const uint64_t block = static_cast<uint64_t>(state.range(0)) << 20;
  for (auto _ : state) TheRaw().Copy(block, false, true);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * total_bytes));
}

void BM_GpuPromoteDemote_strata(benchmark::State& state) {
  Fixture& f = TheFixture(static_cast<uint64_t>(state.range(0)) << 20);
  double s = 0;
  uint64_t moved = 0;
  for (auto _ : state) {
    // a dirty on the GPU; b's GPU copies gone: demote a while b comes up.
    state.PauseTiming();
    Promote(f, f.a);
    Dirty(f, f.a);
    const uint64_t in0 = GpuBytes(f, true), out0 = GpuBytes(f, false);
    state.ResumeTiming();
    const auto t0 = Clock::now();
    auto up = f.engine->Prefetch(f.b, strata::BlockRange::All(), Tier::kGpu);
    Check(up.status(), "Prefetch");
    Check(f.engine->Flush(f.a), "Flush");
    Check(up->Wait(), "Prefetch");
    s += Seconds(Clock::now() - t0);
    // Counted one way, as the baseline's total_bytes: half of both.
    moved += (GpuBytes(f, true) - in0 + GpuBytes(f, false) - out0) / 2;
  }
  double base = 0;
  for (benchmark::IterationCount i = 0; i < state.iterations(); ++i) {
    base += TheRaw().Copy(f.block, true, true);
  }
  Report(state, moved, s, base);
}

void BM_GpuPromoteDemote_baseline(benchmark::State& state) {
  const uint64_t block = static_cast<uint64_t>(state.range(0)) << 20;
  for (auto _ : state) TheRaw().Copy(block, true, true);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * total_bytes));
}

// Demand read pins of every block of `t` into the GPU, each ordered on
// `stream` (WaitOn, ReleaseAfter); PinAsync lets the CPU go on while the
// copies run, Pin waits for each. Returns the seconds until the stream
// finished.
double PinRange(Fixture& f, const strata::Tensor& t, bool async, cudaStream_t stream) {
  const auto t0 = Clock::now();
  for (uint64_t i = 0; i < t.num_blocks(); ++i) {
    auto pin = async ? f.engine->PinAsync(t, i, Tier::kGpu, Access::kRead)
                     : f.engine->Pin(t, i, Tier::kGpu, Access::kRead);
    Check(pin.status(), async ? "PinAsync" : "Pin");
    Check(pin->WaitOn(stream), "WaitOn");
    Check(pin->ReleaseAfter(stream), "ReleaseAfter");
  }
  Check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return Seconds(Clock::now() - t0);
}

void BM_GpuPinAsync_strata(benchmark::State& state) {
  Fixture& f = TheFixture(static_cast<uint64_t>(state.range(0)) << 20);
  static cudaStream_t stream = [] {
    cudaStream_t s = nullptr;
    Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
    return s;
  }();
  Promote(f, f.a);
  bool flip = false;
  double s = 0;
  const uint64_t in0 = GpuBytes(f, true);
  for (auto _ : state) {
    s += PinRange(f, flip ? f.a : f.b, /*async=*/true, stream);  // evicts the other
    flip = !flip;
  }
  const uint64_t moved = GpuBytes(f, true) - in0;
  double sync_s = 0;
  const uint64_t sync_in0 = GpuBytes(f, true);
  for (benchmark::IterationCount i = 0; i < state.iterations(); ++i) {
    sync_s += PinRange(f, flip ? f.a : f.b, /*async=*/false, stream);
    flip = !flip;
  }
  const uint64_t sync_moved = GpuBytes(f, true) - sync_in0;
  double base = 0;
  for (benchmark::IterationCount i = 0; i < state.iterations(); ++i) {
    base += TheRaw().Copy(f.block, true, false);
  }
  Report(state, moved, s, base);
  state.counters["vs_pin"] = (static_cast<double>(moved) / s) /
                             (static_cast<double>(sync_moved) / sync_s);
}

double PinLoop(Fixture& f, Tier tier, benchmark::IterationCount n) {
  const auto t0 = Clock::now();
  for (benchmark::IterationCount i = 0; i < n; ++i) {
    auto pin = f.engine->Pin(f.a, 0, tier, Access::kRead);
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  return Seconds(Clock::now() - t0);
}

void BM_GpuPinResident_strata(benchmark::State& state) {
  Fixture& f = TheFixture(uint64_t{2} << 20);
  Check(f.engine->Pin(f.a, 0, Tier::kGpu, Access::kRead).status(), "GPU pin");
  Check(f.engine->Pin(f.a, 0, Tier::kHost, Access::kRead).status(), "host pin");
  const auto t0 = Clock::now();
  for (auto _ : state) {
    auto pin = f.engine->Pin(f.a, 0, Tier::kGpu, Access::kRead);
    benchmark::DoNotOptimize(pin->device_ptr());
  }
  const double s = Seconds(Clock::now() - t0);
  const double host = PinLoop(f, Tier::kHost, state.iterations());
  state.SetItemsProcessed(state.iterations());
  state.counters["gpu_over_host_time"] = s / host;
}

void BM_PinUnpinResident_strata(benchmark::State& state) {
  Fixture& f = TheFixture(uint64_t{2} << 20);
  Check(f.engine->Pin(f.a, 0, Tier::kHost, Access::kRead).status(), "host pin");
  for (auto _ : state) {
    auto pin = f.engine->Pin(f.a, 0, Tier::kHost, Access::kRead);
    benchmark::DoNotOptimize(pin->bytes().data());
  }
  state.SetItemsProcessed(state.iterations());
}

void Sizes(benchmark::internal::Benchmark* b) {
  b->Arg(1)->Arg(2)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_GpuPromote_strata)->Name("BM_GpuPromote/strata")->Apply(Sizes);
BENCHMARK(BM_GpuPromote_baseline)->Name("BM_GpuPromote/baseline")->Apply(Sizes);
BENCHMARK(BM_GpuDemote_strata)->Name("BM_GpuDemote/strata")->Apply(Sizes);
BENCHMARK(BM_GpuDemote_baseline)->Name("BM_GpuDemote/baseline")->Apply(Sizes);
BENCHMARK(BM_GpuPromoteDemote_strata)->Name("BM_GpuPromoteDemote/strata")->Apply(Sizes);
BENCHMARK(BM_GpuPromoteDemote_baseline)->Name("BM_GpuPromoteDemote/baseline")->Apply(Sizes);
BENCHMARK(BM_GpuPinAsync_strata)->Name("BM_GpuPinAsync/strata")->Apply(Sizes);
BENCHMARK(BM_GpuPinResident_strata)->Name("BM_GpuPinResident/strata");
BENCHMARK(BM_PinUnpinResident_strata)->Name("BM_PinUnpinResident/strata");

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--total_mib=", 0) == 0) {
      const long mib = std::strtol(arg.c_str() + 12, nullptr, 10);
      if (mib < 8 || mib % 8 != 0) {
        std::fprintf(stderr, "gpu_bench: --total_mib must be a multiple of 8, at least 8\n");
        return 2;
      }
      total_bytes = static_cast<uint64_t>(mib) << 20;
    } else {
      std::fprintf(stderr, "gpu_bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::fprintf(stderr, "gpu_bench: no usable GPU (%s); skipping\n",
                 e != cudaSuccess ? cudaGetErrorString(e) : "no device");
    return 77;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
