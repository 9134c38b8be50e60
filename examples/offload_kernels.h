// The Adam step of examples/offload_train as a CUDA kernel (offload_kernels.cu,
// built with -Dcuda, compiled with -fmad=false so that every float operation
// rounds as the CPU's does and the GPU run equals the in-memory reference bit
// for bit). Callers need no CUDA header.
#ifndef STRATA_EXAMPLES_OFFLOAD_KERNELS_H_
#define STRATA_EXAMPLES_OFFLOAD_KERNELS_H_

#include <cstdint>

namespace offload {

// One Adam step over n elements starting at global index `first` (the
// gradient of 0.5 * |p - target|^2), enqueued on `stream` (a cudaStream_t);
// adds the elements' loss before the update to *loss (device memory).
// Returns the launch's cudaError_t as an int.
int LaunchAdamStep(float* p, float* m, float* v, uint64_t first, uint64_t n,
                   float bc1, float bc2, uint64_t seed, double* loss, void* stream);

}  // namespace offload

#endif  // STRATA_EXAMPLES_OFFLOAD_KERNELS_H_
