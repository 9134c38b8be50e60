// The Adam step of offload_train on the GPU; see offload_kernels.h. The
// arithmetic is offload_train.cpp's AdamStep, operation for operation.
#include "offload_kernels.h"

#include <cuda_runtime.h>

namespace offload {
namespace {

__device__ uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
__device__ float Uniform(uint64_t h) {
  return static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-52 - 1.0);
}
__device__ float Target(uint64_t seed, uint64_t i) { return Uniform(SplitMix(seed ^ (2 * i))); }

__global__ void AdamStep(float* p, float* m, float* v, uint64_t first, uint64_t n,
                         float bc1, float bc2, uint64_t seed, double* loss) {
  constexpr float kLr = 1e-2f, kB1 = 0.9f, kB2 = 0.999f, kEps = 1e-8f;
  double local = 0;
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const float g = p[i] - Target(seed, first + i);
    local += 0.5 * static_cast<double>(g) * g;
    m[i] = kB1 * m[i] + (1.0f - kB1) * g;
    v[i] = kB2 * v[i] + (1.0f - kB2) * g * g;
    p[i] -= kLr * (m[i] / bc1) / (sqrtf(v[i] / bc2) + kEps);
  }
  atomicAdd(loss, local);
}

}  // namespace

int LaunchAdamStep(float* p, float* m, float* v, uint64_t first, uint64_t n,
                   float bc1, float bc2, uint64_t seed, double* loss, void* stream) {
  constexpr unsigned kThreads = 256;
  const uint64_t blocks = (n + kThreads - 1) / kThreads;
  AdamStep<<<static_cast<unsigned>(blocks < 1024 ? (blocks == 0 ? 1 : blocks) : 1024),
             kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, m, v, first, n, bc1,
                                                              bc2, seed, loss);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace offload
