// An offloaded training loop: Adam over a model whose fp32 parameters and
// optimizer state (p, m, v) are several times the host tier, so every step
// pages all of it through NVMe. It prints one line per step and, at the end,
// checks every parameter against an in-memory reference run with the same
// seed, bit for bit.
//
//   offload_train                       # ~1 GiB of state, 256 MiB host tier
//   offload_train --state_mib=256 --host_mib=64 --steps=3
//   offload_train --gpu                 # the steps as CUDA kernels over GPU
//                                       # pins (built with -Dcuda), VRAM 3x
//                                       # smaller than the state
//
// With --gpu each block's step is a kernel on GPU pins of p, m and v
// (tiers gpu -> host -> NVMe), unpinned in stream order, while the next
// block's three come up (Prefetch). The kernel rounds as the CPU does
// (offload_kernels.cu), so the same bit-for-bit check applies. Every pin
// here writes (Adam updates p, m and v in place), so Engine::PinAsync,
// which returns before the copy for read pins only, has no use here; a
// forward pass over frozen weights would pin them with it.
//
// The gradient is that of 0.5 * |p - target|^2 for a synthetic target, so the
// loss falls step by step and every update depends on the bytes the engine
// brought back: a lost write or a stale block changes the result.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "bench/nvme_baseline.h"  // the raw O_DIRECT yardstick, not the engine
#include "strata/strata.h"

#if STRATA_OFFLOAD_GPU
#include <cuda_runtime_api.h>

#include "offload_kernels.h"
#endif

ABSL_FLAG(uint64_t, state_mib, 1024, "Parameters + Adam state, in MiB");
ABSL_FLAG(uint64_t, host_mib, 256, "Host tier capacity, in MiB");
ABSL_FLAG(uint64_t, block_kib, 2048, "Block size, in KiB");
ABSL_FLAG(int, steps, 4, "Training steps");
ABSL_FLAG(std::string, nvme_path, "./strata-data", "Directory for the NVMe tier");
ABSL_FLAG(std::string, policy, "default", "Eviction policy");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the synthetic model");
ABSL_FLAG(bool, hints, true, "Record step one and prefetch along it later");
ABSL_FLAG(bool, gpu, false,
          "Run the steps as CUDA kernels over GPU pins (needs a CUDA build and a GPU)");
ABSL_FLAG(uint64_t, gpu_mib, 0, "GPU tier capacity in MiB (0: a third of the state)");
ABSL_FLAG(bool, baseline, true,
          "After training, time raw io_uring O_DIRECT sequential reads and "
          "writes of the same volume in --nvme_path and print the ratio");

namespace {

struct Model {
  strata::Tensor p, m, v;
  uint64_t blocks = 0;
};

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// A float in [-1, 1) from a 64-bit hash.
float Uniform(uint64_t h) {
  return static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-52 - 1.0);
}
float Init(uint64_t seed, uint64_t i) { return 0.1f * Uniform(SplitMix(seed ^ (2 * i + 1))); }
float Target(uint64_t seed, uint64_t i) { return Uniform(SplitMix(seed ^ (2 * i))); }

// One Adam step over n elements starting at global index `first`. Returns the
// loss of these elements before the update. Not inlined, so that the engine
// run and the reference run execute the very same instructions.
[[gnu::noinline]] double AdamStep(float* p, float* m, float* v, uint64_t first,
                                  size_t n, int step, uint64_t seed) {
  constexpr float kLr = 1e-2f, kB1 = 0.9f, kB2 = 0.999f, kEps = 1e-8f;
  const float bc1 = 1.0f - std::pow(kB1, static_cast<float>(step));
  const float bc2 = 1.0f - std::pow(kB2, static_cast<float>(step));
  double loss = 0;
  for (size_t i = 0; i < n; ++i) {
    const float g = p[i] - Target(seed, first + i);
    loss += 0.5 * static_cast<double>(g) * g;
    m[i] = kB1 * m[i] + (1.0f - kB1) * g;
    v[i] = kB2 * v[i] + (1.0f - kB2) * g * g;
    p[i] -= kLr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + kEps);
  }
  return loss;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since)
      .count();
}

#if STRATA_OFFLOAD_GPU
// One step on the GPU: per block, a kernel over write pins of p, m and v,
// released in stream order; the next block's pins are prefetched first.
// Returns the step's loss.
absl::StatusOr<double> GpuStep(strata::Engine& e, const Model& model, int step,
                               uint64_t seed, uint64_t per_block,
                               cudaStream_t stream, double* loss_dev) {
  constexpr float kB1 = 0.9f, kB2 = 0.999f;  // as AdamStep computes them
  const float bc1 = 1.0f - std::pow(kB1, static_cast<float>(step));
  const float bc2 = 1.0f - std::pow(kB2, static_cast<float>(step));
  auto cuda = [](cudaError_t err, const char* what) {
    return err == cudaSuccess ? absl::OkStatus()
                              : absl::InternalError(std::string(what) + ": " +
                                                    cudaGetErrorString(err));
  };
  if (auto s = cuda(cudaMemsetAsync(loss_dev, 0, sizeof(double), stream), "cudaMemsetAsync");
      !s.ok()) {
    return s;
  }
  for (uint64_t b = 0; b < model.blocks; ++b) {
    for (const strata::Tensor* t : {&model.p, &model.m, &model.v}) {
      if (b + 1 == model.blocks) break;
      auto ahead = e.Prefetch(*t, strata::BlockRange::One(b + 1), strata::Tier::kGpu);
      if (!ahead.ok()) return ahead.status();
    }
    auto p = e.Pin(model.p, b, strata::Tier::kGpu, strata::Access::kWrite);
    auto m = e.Pin(model.m, b, strata::Tier::kGpu, strata::Access::kWrite);
    auto v = e.Pin(model.v, b, strata::Tier::kGpu, strata::Access::kWrite);
    for (auto* pin : {&p, &m, &v}) {
      if (!pin->ok()) return pin->status();
      if (auto s = (*pin)->WaitOn(stream); !s.ok()) return s;
    }
    const int err = offload::LaunchAdamStep(
        static_cast<float*>(p->device_ptr()), static_cast<float*>(m->device_ptr()),
        static_cast<float*>(v->device_ptr()), b * per_block, p->size() / sizeof(float),
        bc1, bc2, seed, loss_dev, stream);
    if (auto s = cuda(static_cast<cudaError_t>(err), "the Adam kernel"); !s.ok()) return s;
    for (auto* pin : {&p, &m, &v}) {
      if (auto s = (*pin)->ReleaseAfter(stream); !s.ok()) return s;
    }
  }
  double loss = 0;
  if (auto s = cuda(cudaMemcpyAsync(&loss, loss_dev, sizeof(loss), cudaMemcpyDeviceToHost,
                                    stream),
                    "cudaMemcpyAsync");
      !s.ok()) {
    return s;
  }
  if (auto s = cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); !s.ok()) {
    return s;
  }
  return loss;
}
#endif

int Fail(const absl::Status& status, const char* what) {
  std::fprintf(stderr, "offload_train: %s: %s\n", what,
               std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Adam on a model several times larger than the host tier, paged to NVMe");
  absl::ParseCommandLine(argc, argv);
  const uint64_t state_bytes = absl::GetFlag(FLAGS_state_mib) << 20;
  const uint64_t block_bytes = absl::GetFlag(FLAGS_block_kib) << 10;
  const int steps = absl::GetFlag(FLAGS_steps);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (steps <= 0 || block_bytes == 0 || state_bytes < 3 * block_bytes) {
    std::fprintf(stderr,
                 "offload_train: need --steps > 0 and --state_mib of at least "
                 "three blocks\n");
    return 2;
  }

  strata::EngineOptions options;
  options.host.capacity_bytes = absl::GetFlag(FLAGS_host_mib) << 20;
  options.default_block_bytes = block_bytes;
  options.nvme.path = absl::GetFlag(FLAGS_nvme_path);
  options.policy = absl::GetFlag(FLAGS_policy);
  const bool gpu = absl::GetFlag(FLAGS_gpu);
#if STRATA_OFFLOAD_GPU
  cudaStream_t stream = nullptr;
  double* loss_dev = nullptr;
  if (gpu) {
    options.tiers = {strata::Tier::kGpu, strata::Tier::kHost, strata::Tier::kNvme};
    const uint64_t gpu_mib = absl::GetFlag(FLAGS_gpu_mib);
    options.gpu.capacity_bytes =
        gpu_mib != 0 ? gpu_mib << 20 : state_bytes / 3 / block_bytes * block_bytes;
    if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaMalloc(reinterpret_cast<void**>(&loss_dev), sizeof(double)) != cudaSuccess) {
      std::fprintf(stderr, "offload_train: --gpu needs a usable GPU: %s\n",
                   cudaGetErrorString(cudaGetLastError()));
      return 1;
    }
  }
#else
  if (gpu) {
    std::fprintf(stderr, "offload_train: built without CUDA; rebuild with "
                         "-Dcuda=enabled to use --gpu\n");
    return 2;
  }
#endif
  auto engine = strata::Engine::Open(options);
  if (!engine.ok()) return Fail(engine.status(), "opening the engine");

  // Three tensors of equal size: parameters, first and second moments.
  const uint64_t elems = state_bytes / 3 / sizeof(float);
  Model model;
  for (auto [tensor, name] : {std::pair{&model.p, "params"},
                              std::pair{&model.m, "adam.m"},
                              std::pair{&model.v, "adam.v"}}) {
    auto t = (*engine)->CreateTensor(
        name, {.dtype = strata::DType::kF32,
               .shape = {static_cast<int64_t>(elems)}});
    if (!t.ok()) return Fail(t.status(), "creating a tensor");
    *tensor = *t;
  }
  model.blocks = model.p.num_blocks();
  const uint64_t per_block = block_bytes / sizeof(float);
  std::printf("offload_train: %.0f MiB of fp32 params + Adam state in %llu "
              "blocks of %llu KiB; host tier %llu MiB (%.1fx smaller); "
              "policy %s\n",
              3.0 * elems * sizeof(float) / (1 << 20),
              static_cast<unsigned long long>(3 * model.blocks),
              static_cast<unsigned long long>(block_bytes >> 10),
              static_cast<unsigned long long>(absl::GetFlag(FLAGS_host_mib)),
              3.0 * elems * sizeof(float) / options.host.capacity_bytes,
              options.policy.c_str());

  // Initialize the parameters (the moments start as the engine's zeros).
  for (uint64_t b = 0; b < model.blocks; ++b) {
    auto pin = (*engine)->Pin(model.p, b, strata::Tier::kHost,
                              strata::Access::kWrite);
    if (!pin.ok()) return Fail(pin.status(), "initializing");
    std::span<float> p = pin->as<float>();
    for (size_t i = 0; i < p.size(); ++i) p[i] = Init(seed, b * per_block + i);
  }

  double nvme_seconds = 0, nvme_bytes = 0;
  strata::EngineStats before = (*engine)->GetStats();
  for (int step = 1; step <= steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    if (absl::GetFlag(FLAGS_hints)) {
      if (auto s = (*engine)->BeginStep(); !s.ok()) return Fail(s, "BeginStep");
    }
    double loss = 0;
#if STRATA_OFFLOAD_GPU
    if (gpu) {
      auto l = GpuStep(**engine, model, step, seed, per_block, stream, loss_dev);
      if (!l.ok()) return Fail(l.status(), "a step on the GPU");
      loss = *l;
    }
#endif
    for (uint64_t b = 0; !gpu && b < model.blocks; ++b) {
      auto p = (*engine)->Pin(model.p, b, strata::Tier::kHost, strata::Access::kWrite);
      auto m = (*engine)->Pin(model.m, b, strata::Tier::kHost, strata::Access::kWrite);
      auto v = (*engine)->Pin(model.v, b, strata::Tier::kHost, strata::Access::kWrite);
      for (const auto* pin : {&p, &m, &v}) {
        if (!pin->ok()) return Fail(pin->status(), "pinning a block");
      }
      loss += AdamStep(p->as<float>().data(), m->as<float>().data(),
                       v->as<float>().data(), b * per_block,
                       p->as<float>().size(), step, seed);
    }
    if (absl::GetFlag(FLAGS_hints)) {
      if (auto s = (*engine)->EndStep(); !s.ok()) return Fail(s, "EndStep");
    }
    const double secs = Seconds(start);
    const strata::EngineStats now = (*engine)->GetStats();
    const auto& nb = before.tier(strata::Tier::kNvme);
    const auto& nn = now.tier(strata::Tier::kNvme);
    const auto& hb = before.tier(strata::Tier::kHost);
    const auto& hn = now.tier(strata::Tier::kHost);
    const double read_gb = (nn.bytes_out - nb.bytes_out) / 1e9;
    const double write_gb = (nn.bytes_in - nb.bytes_in) / 1e9;
    const double pins = static_cast<double>((hn.hits - hb.hits) + (hn.misses - hb.misses));
    nvme_seconds += secs;
    nvme_bytes += (read_gb + write_gb) * 1e9;
    std::printf("step %d  loss %.6e  nvme read %.2f GB written %.2f GB  "
                "host hit ratio %.3f  %.0f MB/s  (%.2f s)\n",
                step, loss, read_gb, write_gb,
                pins > 0 ? (hn.hits - hb.hits) / pins : 0.0,
                (read_gb + write_gb) * 1e3 / secs, secs);
    std::fflush(stdout);
    before = now;
  }
  const double engine_mbps = nvme_bytes / 1e6 / nvme_seconds;
  std::printf("nvme traffic: %.0f MB/s over %d steps (compute included)\n",
              engine_mbps, steps);
  if (absl::GetFlag(FLAGS_baseline)) {
    // The same volume, read and written sequentially by raw io_uring with
    // O_DIRECT at the engine's block size and queue depth.
    const strata::EngineStats total = (*engine)->GetStats();
    const auto& nvme = total.tier(strata::Tier::kNvme);
    const uint64_t per_step = (nvme.bytes_in + nvme.bytes_out) / (steps + 1);
    const uint64_t volume = std::max<uint64_t>(per_step / 2 / block_bytes, 1) * block_bytes;
    const std::string raw = options.nvme.path + "/raw-baseline.bin";
    auto w = strata::bench::RawSequentialWrite(raw, block_bytes, options.nvme.queue_depth, volume);
    auto r = w.ok() ? strata::bench::RawSequentialRead(raw, block_bytes,
                                                       options.nvme.queue_depth, volume)
                    : absl::StatusOr<strata::bench::RawIoResult>(w.status());
    std::remove(raw.c_str());
    if (!r.ok()) return Fail(r.status(), "measuring the raw baseline");
    const double raw_mbps = 2.0 * volume / 1e6 / (w->seconds + r->seconds);
    std::printf("raw O_DIRECT baseline: %.0f MB/s (write %.0f, read %.0f) -> "
                "engine/raw = %.2f\n",
                raw_mbps, w->bytes_per_second() / 1e6, r->bytes_per_second() / 1e6,
                engine_mbps / raw_mbps);
  }

  // The reference: the same Adam steps, block by block, entirely in memory.
  std::vector<float> rp(per_block), rm(per_block), rv(per_block);
  uint64_t mismatched = 0;
  for (uint64_t b = 0; b < model.blocks; ++b) {
    const size_t n = model.p.block_size(b) / sizeof(float);
    for (size_t i = 0; i < n; ++i) rp[i] = Init(seed, b * per_block + i);
    std::fill(rm.begin(), rm.end(), 0.0f);
    std::fill(rv.begin(), rv.end(), 0.0f);
    for (int step = 1; step <= steps; ++step) {
      AdamStep(rp.data(), rm.data(), rv.data(), b * per_block, n, step, seed);
    }
    auto pin = (*engine)->Pin(model.p, b, strata::Tier::kHost, strata::Access::kRead);
    if (!pin.ok()) return Fail(pin.status(), "reading back");
    if (std::memcmp(pin->bytes().data(), rp.data(), n * sizeof(float)) != 0) {
      ++mismatched;
    }
  }
  if (mismatched != 0) {
    std::printf("FAILED: %llu of %llu parameter blocks differ from the "
                "in-memory reference\n",
                static_cast<unsigned long long>(mismatched),
                static_cast<unsigned long long>(model.blocks));
    return 1;
  }
  std::printf("OK: all %llu parameters equal the in-memory reference run, bit "
              "for bit\n",
              static_cast<unsigned long long>(elems));
  return 0;
}
