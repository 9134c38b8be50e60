// Kernels for the real-CUDA tests and gpu_bench (tests/gpu_kernels.cu,
// compiled by nvcc for sm_80 and sm_90): fill device memory with the test
// pattern (tests/test_util.h's PatternWord), count the words that differ
// from it, read a frame after spinning (a kernel still running when its
// caller unpins), and touch an illegal address (a sticky error).
// Each returns the launch's cudaError_t as an int, so that callers need no
// CUDA header to call them.
#ifndef STRATA_TESTS_GPU_KERNELS_H_
#define STRATA_TESTS_GPU_KERNELS_H_

#include <cstdint>

namespace strata::test {

// `stream` is a cudaStream_t.
int LaunchFillPattern(void* device, uint64_t bytes, uint64_t seed, void* stream);
// Adds the number of 8-byte words of [device, device + bytes) that differ
// from the pattern of `seed` to *mismatches (device memory).
int LaunchCountMismatches(const void* device, uint64_t bytes, uint64_t seed,
                          unsigned long long* mismatches, void* stream);
// Spins for about `spin_ns` nanoseconds, then copies `bytes` from `src`
// to `dst` (both device memory).
int LaunchSpinThenCopy(const void* src, void* dst, uint64_t bytes,
                       uint64_t spin_ns, void* stream);
// Writes through a null pointer: cudaErrorIllegalAddress, sticky.
int LaunchIllegalAccess(void* stream);

}  // namespace strata::test

#endif  // STRATA_TESTS_GPU_KERNELS_H_
