// Kernels for the real-CUDA tests and gpu_bench; see gpu_kernels.h.
#include "tests/gpu_kernels.h"

#include <cuda_runtime.h>

namespace strata::test {
namespace {

// tests/test_util.h's Mix and PatternWord, on the device.
__device__ uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ uint64_t PatternWord(uint64_t seed, uint64_t i) {
  return i == 0 ? seed : Mix(seed + i);
}

__global__ void FillPattern(uint64_t* words, uint64_t n, uint64_t seed) {
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x) {
    words[i] = PatternWord(seed, i);
  }
}

__global__ void CountMismatches(const uint64_t* words, uint64_t n, uint64_t seed,
                                unsigned long long* mismatches) {
  unsigned long long bad = 0;
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x) {
    bad += words[i] != PatternWord(seed, i);
  }
  if (bad != 0) atomicAdd(mismatches, bad);
}

__global__ void SpinThenCopy(const uint64_t* src, uint64_t* dst, uint64_t n,
                             uint64_t spin_ns) {
  const uint64_t start = clock64();
  // clock64 counts SM cycles (~1.5-2 GHz): 2 cycles a nanosecond is enough.
  while (static_cast<uint64_t>(clock64()) - start < 2 * spin_ns) {
  }
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += uint64_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

__global__ void IllegalAccess(int* p) { *p = 1; }

constexpr int kThreads = 256;

unsigned Blocks(uint64_t n) {
  const uint64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1024 ? (b == 0 ? 1 : b) : 1024);
}

}  // namespace

int LaunchFillPattern(void* device, uint64_t bytes, uint64_t seed, void* stream) {
  const uint64_t n = bytes / 8;
  FillPattern<<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<uint64_t*>(device), n, seed);
  return static_cast<int>(cudaGetLastError());
}

int LaunchCountMismatches(const void* device, uint64_t bytes, uint64_t seed,
                          unsigned long long* mismatches, void* stream) {
  const uint64_t n = bytes / 8;
  CountMismatches<<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint64_t*>(device), n, seed, mismatches);
  return static_cast<int>(cudaGetLastError());
}

int LaunchSpinThenCopy(const void* src, void* dst, uint64_t bytes,
                       uint64_t spin_ns, void* stream) {
  const uint64_t n = bytes / 8;
  SpinThenCopy<<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), n, spin_ns);
  return static_cast<int>(cudaGetLastError());
}

int LaunchIllegalAccess(void* stream) {
  IllegalAccess<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(nullptr);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace strata::test
