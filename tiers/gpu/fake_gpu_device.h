// A GpuDevice over host memory, for tests and CI machines without a GPU:
// the GPU tier's bookkeeping runs over it exactly as over CUDA.
//
// It simulates what the tier relies on: a pool reservation whose device
// pointers are real addresses the host cannot touch (a PROT_NONE mapping:
// dereferencing one on the host crashes, as on a GPU), backed by a hidden
// host buffer; streams that run their operations in order; events recorded
// on a stream and complete once the stream got there; device-side waits of
// one stream for another's event. Work runs when it is enqueued unless its
// stream is held or waits for an event; a test holds a stream to stand for
// a device still busy (no sleeps), and Launch enqueues a "kernel" (a
// function over a view of device memory) on a caller's stream.
//
// Faults: the Nth copy fails when enqueued, or when it runs (its bytes are
// not copied, and the next event recorded after it on its stream completes
// with the error: Synchronize returns it); a sticky error (every later call fails, and
// Synchronize waiters wake with it); the Nth frame of the pool refused
// (out of device memory); the pool reservation refused.
//
// Threads: thread-safe; one mutex, and a condition variable for waiters.
#ifndef STRATA_TIERS_GPU_FAKE_GPU_DEVICE_H_
#define STRATA_TIERS_GPU_FAKE_GPU_DEVICE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "tiers/gpu/gpu_device.h"

namespace strata::tiers {

class FakeGpuDevice : public GpuDevice {
 public:
  explicit FakeGpuDevice(uint64_t total_bytes = uint64_t{1} << 30);
  ~FakeGpuDevice() override;

  std::string describe() const override { return "fake gpu (device double)"; }
  absl::StatusOr<DeviceMemory> MemoryInfo() override;
  absl::StatusOr<std::byte*> Reserve(uint64_t bytes) override;
  void Unreserve(std::byte* base) override;
  absl::Status RegisterHost(std::span<std::byte> host) override;
  DeviceStream copy_stream(CopyDir dir) override;
  absl::Status CopyAsync(CopyDir dir, std::byte* device, std::byte* host,
                         uint64_t bytes) override;
  absl::StatusOr<DeviceEvent> CreateEvent() override;
  void DestroyEvent(DeviceEvent event) override;
  absl::Status Record(DeviceEvent event, DeviceStream stream) override;
  absl::Status StreamWait(DeviceStream stream, DeviceEvent event) override;
  absl::StatusOr<bool> Query(DeviceEvent event) override;
  absl::Status Synchronize(DeviceEvent event) override;
  absl::Status sticky_error() const override;
  bool RefuseFrame(uint64_t bytes) override;
  // Kept, not used: the double's teardown has nothing that can fail.
  void set_log(std::function<void(std::string_view)> log) override;

  // --- for tests ---
  // A caller's stream (a trainer's compute stream). CUDA's handles of the
  // default stream (nullptr, cudaStreamLegacy, cudaStreamPerThread) name
  // one more stream of the double's own.
  DeviceStream CreateStream();
  // While held, a stream runs nothing (a device busy with earlier work).
  void Hold(DeviceStream stream);
  void Release(DeviceStream stream);
  // Enqueues a kernel on `stream`: `fn` runs, in stream order, over the
  // device bytes [device, device + bytes).
  absl::Status Launch(DeviceStream stream, void* device, uint64_t bytes,
                      std::function<void(std::span<std::byte>)> fn);
  // Copies of device memory, bypassing every stream.
  std::vector<std::byte> Peek(const void* device, uint64_t bytes);

  // The `nth` copy from now (1-based) fails with `status`.
  void FailNthCopy(uint64_t nth, absl::Status status);
  // The `nth` copy from now is enqueued, then fails with `status` when it
  // runs (an asynchronous error).
  void FailNthCopyWhenItRuns(uint64_t nth, absl::Status status);
  // From now on every call fails with `status` (an illegal address).
  void InjectStickyError(absl::Status status);
  // The `nth` frame asked of the pool from now is refused; with `every`,
  // every frame from then on until cleared with nth = 0.
  void RefuseNthFrame(uint64_t nth, bool every = false);
  void FailReserve(absl::Status status);
  void SetFreeBytes(uint64_t free_bytes);

  uint64_t copies(CopyDir dir) const;
  uint64_t bytes_copied(CopyDir dir) const;
  uint64_t registered_bytes() const;
  int waiters() const;         // threads blocked in Synchronize
  // Waits until at least `n` threads block in Synchronize; false after
  // `timeout` (lets a test know a transfer waits for a held stream).
  bool AwaitWaiters(int n, absl::Duration timeout);
  uint64_t frames_refused() const;
  // Whether set_log gave it a log (the tier hands down GpuConfig::log).
  bool has_log() const;

 private:
  struct Event;
  struct Stream;
  struct Op;
  struct Region {
    std::byte* base = nullptr;     // PROT_NONE: the device addresses
    std::byte* backing = nullptr;  // the bytes
    uint64_t bytes = 0;
  };

  absl::Status CheckLocked() const;
  std::byte* TranslateLocked(const void* device, uint64_t bytes) const;
  Stream* StreamOf(DeviceStream stream) const;
  void EnqueueLocked(Stream* stream, Op op);
  void PumpLocked();
  bool RunLocked(Stream& stream);
  void ExecuteLocked(Stream& stream, Op& op);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t total_bytes_;
  uint64_t free_bytes_;
  std::vector<Region> regions_;
  std::vector<std::unique_ptr<Stream>> streams_;  // [0] h2d, [1] d2h, [2] default, callers
  std::vector<std::unique_ptr<Event>> events_;
  absl::Status sticky_;
  absl::Status reserve_error_;
  uint64_t fail_copy_in_ = 0;
  absl::Status fail_copy_status_;
  uint64_t fail_run_in_ = 0;
  absl::Status fail_run_status_;
  uint64_t refuse_in_ = 0;
  bool refuse_every_ = false;
  uint64_t refused_ = 0;
  uint64_t copies_[2] = {0, 0};
  uint64_t bytes_[2] = {0, 0};
  uint64_t registered_ = 0;
  int waiters_ = 0;
  std::function<void(std::string_view)> log_;
};

}  // namespace strata::tiers

#endif  // STRATA_TIERS_GPU_FAKE_GPU_DEVICE_H_
