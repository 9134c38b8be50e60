// The GPU tier: one reservation of VRAM (the pool) carved into frames, and
// the copies between those frames and host memory, over a GpuDevice
// (gpu_device.h): CUDA on a GPU, a host-memory double in CI.
//
// Invariants:
// - The pool is reserved once, at Create; a frame is an extent of it
//   (4096-aligned, best fit with coalescing: tiers/extent_allocator.h).
//   Nothing is allocated on the device per block.
// - Frames are device memory: `Frame::data` is null and `Frame::device` is
//   the device pointer; the engine stages every copy through host memory.
// - A transfer completes (on_done) only once the device finished it: its
//   event is synchronized on the tier's completion thread of its direction
//   (one for host->device, one for device->host, on two non-blocking
//   streams, so promotions and demotions overlap). A copy into a frame
//   calls the transfer's on_enqueued (if set) once it is enqueued, before
//   its lane can complete it.
// - Ready events: the event recorded after the latest copy into a frame is
//   the frame's ready event (ReadyEvent) until the frame is freed; when the
//   lane sees that copy fail it stores the error with it before on_done,
//   and ReadyEvent/WaitReady return the error from then on.
// - Stream-ordered unpin: FenceAfter records an event on the caller's
//   stream; later copies out of or into the frame wait for it on the
//   device, and a freed frame goes back to the pool only once it completed
//   (an allocation short of room waits for that, up to
//   GpuConfig::stream_wait_timeout).
// - A sticky device error fences the tier: the transfer that met it fails,
//   and every later Allocate and Submit fails with kFailedPrecondition
//   naming the error; the other tiers of the chain keep working.
//
// Threads: Allocate/Free/Submit and the stream-ordering calls from any
// thread; completions run on the tier's two completion threads.
#ifndef STRATA_TIERS_GPU_GPU_TIER_H_
#define STRATA_TIERS_GPU_GPU_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tiers/gpu/gpu_device.h"
#include "tiers/tier.h"

namespace strata::tiers {

struct GpuConfig {
  // Bytes of the pool; 0: `capacity_fraction` of the device's free memory.
  uint64_t capacity_bytes = 0;
  double capacity_fraction = 0.5;
  // How long an allocation waits for frames freed by stream-ordered unpins
  // whose streams have not finished (EngineOptions::io_timeout).
  absl::Duration stream_wait_timeout = absl::Seconds(30);
  std::function<void(std::string_view)> log;
};

class GpuTier : public Tier {
 public:
  static constexpr uint64_t kFrameAlign = 4096;

  // Reserves the pool on `device`. kInvalidArgument for a bad capacity;
  // kResourceExhausted when the device has not that much free memory.
  static absl::StatusOr<std::unique_ptr<GpuTier>> Create(
      const GpuConfig& config, std::shared_ptr<GpuDevice> device);
  // Waits for the transfers in flight (each completes), then releases the
  // pool.
  ~GpuTier() override;

  bool addressable() const override { return false; }
  uint64_t largest_free() const override;
  // cudaHostRegister of the host arena, once.
  absl::Status RegisterHostMemory(std::span<std::byte> arena) override;

  absl::StatusOr<void*> ReadyEvent(const Frame& frame) override;
  absl::Status WaitReady(const Frame& frame, void* stream) override;
  absl::Status FenceAfter(const Frame& frame, void* stream) override;

  GpuDevice& device() { return *device_; }
  // The sticky error that fenced the tier, or OK.
  absl::Status fenced() const;
  // Freed frames that wait for a caller's stream before reuse.
  size_t deferred_frames() const;

 private:
  struct State;
  GpuTier(const GpuConfig& config, std::shared_ptr<GpuDevice> device,
          std::byte* base, uint64_t capacity);
  absl::Status CheckFence() const;
  // Annotates a device error; a sticky one fences the tier.
  absl::Status Failed(std::string_view what, const absl::Status& status);
  absl::StatusOr<DeviceEvent> GetEvent();
  void PutEvent(DeviceEvent event);
  std::string FullMessage(uint64_t need) const;
  // Returns deferred frames whose streams passed to the pool; the number
  // still deferred.
  size_t ReapDeferred();
  // A frame of `need` bytes once deferred frames come back, within
  // stream_wait_.
  std::optional<uint64_t> AwaitDeferred(uint64_t need);
  absl::Status StartOne(Transfer& t);
  void RunLane(int index);
  absl::StatusOr<Frame> DoAllocate(uint64_t bytes) override;
  void DoFree(const Frame& frame) override;
  absl::Status DoSubmit(std::span<Transfer* const> batch) override;

  std::shared_ptr<GpuDevice> device_;
  std::byte* base_;
  const absl::Duration stream_wait_;
  std::unique_ptr<State> state_;
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_GPU_GPU_TIER_H_
