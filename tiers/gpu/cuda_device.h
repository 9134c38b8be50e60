// The GpuDevice over the CUDA runtime (built only with -Dcuda): the one
// file of the library that calls CUDA.
#ifndef STRATA_TIERS_GPU_CUDA_DEVICE_H_
#define STRATA_TIERS_GPU_CUDA_DEVICE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "tiers/gpu/gpu_device.h"

namespace strata::tiers {

// Opens CUDA device `index` with two non-blocking copy streams.
// kFailedPrecondition when there is no usable GPU (no driver, no device);
// kInvalidArgument for an index past the devices present.
absl::StatusOr<std::unique_ptr<GpuDevice>> OpenCudaDevice(int index);

}  // namespace strata::tiers

#endif  // STRATA_TIERS_GPU_CUDA_DEVICE_H_
