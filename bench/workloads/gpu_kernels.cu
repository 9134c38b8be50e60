// Kernels of the gpu workload; see gpu_kernels.h.
#include <cuda_runtime.h>

#include "bench/workloads/gpu_kernels.h"

namespace strata::bench {
namespace {

constexpr int kThreads = 256;

__global__ void CheckWeights(const uint64_t* words, uint64_t n, uint64_t first,
                             unsigned long long* counts) {
  unsigned long long bad = 0, seen = 0;
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x) {
    bad += words[i] != WeightWord(first + i);
    ++seen;
  }
  // One atomic per warp: reduce inside the warp first.
  for (int d = 16; d > 0; d /= 2) {
    bad += __shfl_down_sync(0xffffffffu, bad, d);
    seen += __shfl_down_sync(0xffffffffu, seen, d);
  }
  if ((threadIdx.x & 31) == 0) {
    if (bad != 0) atomicAdd(&counts[0], bad);
    atomicAdd(&counts[1], seen);
  }
}

}  // namespace

int LaunchCheckWeights(const void* device, uint64_t bytes, uint64_t first_word,
                       unsigned long long* counts, void* stream) {
  const uint64_t n = bytes / 8;
  uint64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 2048) blocks = 2048;
  if (blocks == 0) blocks = 1;
  CheckWeights<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint64_t*>(device), n, first_word, counts);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace strata::bench
