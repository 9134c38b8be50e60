// The seam between the GPU tier's bookkeeping (tiers/gpu/gpu_tier.h: the
// pool, frames, fences, completions) and the CUDA calls it needs, so that
// the bookkeeping runs in CI over a device double (fake_gpu_device.h) and on
// a GPU over the CUDA runtime (cuda_device.cc, built with -Dcuda).
//
// A device owns two non-blocking streams of its own, one per copy
// direction; callers' streams (a trainer's compute stream) cross as opaque
// handles. Events are created, recorded on a stream, waited for by other
// streams (device-side, no CPU block), queried or synchronized.
//
// Errors: every call returns a Status naming the CUDA call and its error.
// Teardown (Unreserve, DestroyEvent, the destructor) never fails; the first
// CUDA error met there goes to the log given with set_log, once.
// After a sticky error (illegal address, launch failure, ECC: the CUDA
// context is unusable) `sticky_error()` returns it, and the device answers
// every later call with it.
//
// Threads: every method may be called from any thread.
#ifndef STRATA_TIERS_GPU_GPU_DEVICE_H_
#define STRATA_TIERS_GPU_GPU_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::tiers {

// A cudaStream_t / cudaEvent_t of the CUDA device; the double's own objects.
using DeviceStream = void*;
using DeviceEvent = void*;

enum class CopyDir : uint8_t { kHostToDevice, kDeviceToHost };

struct DeviceMemory {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};

class GpuDevice {
 public:
  virtual ~GpuDevice() = default;

  // "cuda device 0 (NVIDIA H200)": for messages.
  virtual std::string describe() const = 0;
  virtual absl::StatusOr<DeviceMemory> MemoryInfo() = 0;

  // One reservation of device memory (the pool) and its release.
  virtual absl::StatusOr<std::byte*> Reserve(uint64_t bytes) = 0;
  virtual void Unreserve(std::byte* base) = 0;
  // Page-locks host memory for DMA once (cudaHostRegister); undone by the
  // device's destructor.
  virtual absl::Status RegisterHost(std::span<std::byte> host) = 0;

  // The device's own stream for copies in `dir`.
  virtual DeviceStream copy_stream(CopyDir dir) = 0;
  // Enqueues a copy on copy_stream(dir): host -> device or device -> host.
  virtual absl::Status CopyAsync(CopyDir dir, std::byte* device,
                                 std::byte* host, uint64_t bytes) = 0;

  virtual absl::StatusOr<DeviceEvent> CreateEvent() = 0;
  virtual void DestroyEvent(DeviceEvent event) = 0;
  // Records `event` on `stream` (a copy stream or a caller's).
  virtual absl::Status Record(DeviceEvent event, DeviceStream stream) = 0;
  // Work enqueued on `stream` later waits for `event` (on the device).
  virtual absl::Status StreamWait(DeviceStream stream, DeviceEvent event) = 0;
  // Whether the work before `event` finished.
  virtual absl::StatusOr<bool> Query(DeviceEvent event) = 0;
  // Blocks until the work before `event` finished.
  virtual absl::Status Synchronize(DeviceEvent event) = 0;

  // The sticky error that made the device unusable, or OK.
  virtual absl::Status sticky_error() const = 0;

  // Where the device says what teardown cannot return (GpuConfig::log: the
  // tier passes its own). Call it before the device is shared.
  virtual void set_log(std::function<void(std::string_view)> log) { (void)log; }

  // Test seam: a double may refuse a frame of the pool to inject running
  // out of device memory. The CUDA device never does.
  virtual bool RefuseFrame(uint64_t bytes) {
    (void)bytes;
    return false;
  }
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_GPU_GPU_DEVICE_H_
