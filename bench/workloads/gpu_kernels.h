// The device side of the gpu workload (gpu_kernels.cu, compiled by nvcc):
// the weights every side streams are the words WeightWord(0, 1, ...), and
// each layer's "compute" checks its bytes against them, so that a side that
// streamed a wrong or stale block fails instead of winning.
#ifndef STRATA_BENCH_WORKLOADS_GPU_KERNELS_H_
#define STRATA_BENCH_WORKLOADS_GPU_KERNELS_H_

#include <cstdint>

#ifdef __CUDACC__
#define STRATA_HOST_DEVICE __host__ __device__
#else
#define STRATA_HOST_DEVICE
#endif

namespace strata::bench {

// Word `g` (counted in 8-byte words from the start of the first layer) of
// the weights: splitmix64's finalizer, so that a block in the wrong place
// differs in every word.
STRATA_HOST_DEVICE inline uint64_t WeightWord(uint64_t g) {
  uint64_t x = g + 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// counts[0] += words of [device, device + bytes) that differ from
// WeightWord(first_word + i); counts[1] += words looked at. `counts` is
// device memory, `stream` a cudaStream_t. Returns the launch's cudaError_t.
int LaunchCheckWeights(const void* device, uint64_t bytes, uint64_t first_word,
                       unsigned long long* counts, void* stream);

}  // namespace strata::bench

#endif  // STRATA_BENCH_WORKLOADS_GPU_KERNELS_H_
