#include "tiers/gpu/gpu_tier.h"

#include <condition_variable>
#include <chrono>
#include <deque>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "tiers/extent_allocator.h"
#include "util/strings.h"
#include "util/status_macros.h"

namespace strata::tiers {
namespace {

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

int Index(CopyDir dir) { return dir == CopyDir::kHostToDevice ? 0 : 1; }

}  // namespace

struct GpuTier::State {
  explicit State(uint64_t capacity) : pool(capacity) {}

  // A copy enqueued on a stream, completed by its direction's lane.
  struct Pending {
    Transfer* transfer = nullptr;
    DeviceEvent event = nullptr;
    bool keep_event = false;  // the frame's ready event: stays with the frame
  };
  // The latest copy into a frame: its event (a pin's ready event) and, once
  // the lane saw it fail, its error. Kept until the frame is freed.
  struct Ready {
    DeviceEvent event = nullptr;
    absl::Status status;
  };
  struct Lane {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Pending> queue;
    bool stop = false;
    std::thread thread;
  };
  // A freed frame that a caller's stream may still use.
  struct Deferred {
    uint64_t offset = 0;
    uint64_t bytes = 0;
    std::vector<DeviceEvent> events;
  };

  ExtentAllocator pool;
  std::function<void(std::string_view)> log;
  DeviceEvent complete = nullptr;  // never recorded: always complete
  Lane lanes[2];

  mutable std::mutex mu;
  absl::Status fence;  // the sticky error, once met
  std::vector<DeviceEvent> idle_events;
  absl::flat_hash_map<uint64_t, std::vector<DeviceEvent>> fences;  // by offset
  absl::flat_hash_map<uint64_t, Ready> ready;                      // by offset
  std::vector<Deferred> deferred;
};

absl::StatusOr<std::unique_ptr<GpuTier>> GpuTier::Create(
    const GpuConfig& config, std::shared_ptr<GpuDevice> device) {
  if (device == nullptr) {
    return absl::InvalidArgumentError("tier gpu: no device given");
  }
  if (config.log) device->set_log(config.log);
  if (config.capacity_bytes == 0 &&
      !(config.capacity_fraction > 0 && config.capacity_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier gpu: capacity_fraction ", config.capacity_fraction,
        " must be in (0, 1] when capacity_bytes is 0; set "
        "EngineOptions::gpu.capacity_bytes or gpu.capacity_fraction"));
  }
  if (config.capacity_bytes % kFrameAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier gpu: capacity_bytes ", config.capacity_bytes,
        " is not a multiple of 4096; fix EngineOptions::gpu.capacity_bytes"));
  }
  STRATA_ASSIGN_OR_RETURN(DeviceMemory mem, device->MemoryInfo());
  uint64_t capacity = config.capacity_bytes;
  if (capacity == 0) {
    capacity = static_cast<uint64_t>(static_cast<double>(mem.free_bytes) *
                                     config.capacity_fraction) /
               kFrameAlign * kFrameAlign;
  }
  const std::string figures =
      absl::StrCat(device->describe(), " has ", mem.free_bytes, " of ",
                   mem.total_bytes, " bytes free");
  if (capacity == 0 || capacity > mem.free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier gpu: cannot reserve a pool of ", capacity, " bytes: ", figures,
        "; lower EngineOptions::gpu.capacity_bytes or gpu.capacity_fraction"));
  }
  absl::StatusOr<std::byte*> base = device->Reserve(capacity);
  if (!base.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tier gpu: reserving a pool of ", capacity, " bytes failed (",
        base.status().message(), "); ", figures,
        "; lower EngineOptions::gpu.capacity_bytes or gpu.capacity_fraction"));
  }
  absl::StatusOr<DeviceEvent> complete = device->CreateEvent();
  if (!complete.ok()) {
    device->Unreserve(*base);
    return complete.status();
  }
  std::unique_ptr<GpuTier> tier(
      new GpuTier(config, std::move(device), *base, capacity));
  tier->state_->complete = *complete;
  return tier;
}

GpuTier::GpuTier(const GpuConfig& config, std::shared_ptr<GpuDevice> device,
                 std::byte* base, uint64_t capacity)
    : Tier("gpu", capacity),
      device_(std::move(device)),
      base_(base),
      stream_wait_(config.stream_wait_timeout),
      state_(std::make_unique<State>(capacity)) {
  state_->log = config.log;
  for (int i = 0; i < 2; ++i) {
    state_->lanes[i].thread = std::thread([this, i] { RunLane(i); });
  }
}

GpuTier::~GpuTier() {
  for (State::Lane& lane : state_->lanes) {
    {
      std::lock_guard lock(lane.mu);
      lane.stop = true;
    }
    lane.cv.notify_all();
    lane.thread.join();
  }
  std::lock_guard lock(state_->mu);
  for (DeviceEvent e : state_->idle_events) device_->DestroyEvent(e);
  for (auto& [offset, events] : state_->fences) {
    for (DeviceEvent e : events) device_->DestroyEvent(e);
  }
  for (auto& [offset, r] : state_->ready) device_->DestroyEvent(r.event);
  for (State::Deferred& d : state_->deferred) {
    for (DeviceEvent e : d.events) device_->DestroyEvent(e);
  }
  device_->DestroyEvent(state_->complete);
  device_->Unreserve(base_);
}

absl::Status GpuTier::fenced() const {
  std::lock_guard lock(state_->mu);
  return state_->fence;
}

absl::Status GpuTier::CheckFence() const {
  absl::Status fence = fenced();
  if (fence.ok()) return fence;
  return absl::FailedPreconditionError(absl::StrCat(
      "tier gpu: fenced after a sticky device error (", fence.message(),
      "); the GPU cannot be used again in this process. Pins of Tier::kGpu "
      "fail, the other tiers keep working; restart the process to use the "
      "GPU again"));
}

absl::Status GpuTier::Failed(std::string_view what, const absl::Status& status) {
  absl::Status sticky = device_->sticky_error();
  if (!sticky.ok()) {
    bool first = false;
    {
      std::lock_guard lock(state_->mu);
      first = state_->fence.ok();
      if (first) state_->fence = sticky;
    }
    if (first && state_->log) {
      state_->log(absl::StrCat("strata: tier gpu fenced: ", sticky.message()));
    }
  }
  return absl::Status(status.code(), absl::StrCat("tier gpu: ", Sv(what), " on ",
                                                  device_->describe(), ": ",
                                                  status.message()));
}

absl::StatusOr<DeviceEvent> GpuTier::GetEvent() {
  {
    std::lock_guard lock(state_->mu);
    if (!state_->idle_events.empty()) {
      DeviceEvent e = state_->idle_events.back();
      state_->idle_events.pop_back();
      return e;
    }
  }
  absl::StatusOr<DeviceEvent> e = device_->CreateEvent();
  if (!e.ok()) return Failed("creating an event", e.status());
  return e;
}

void GpuTier::PutEvent(DeviceEvent event) {
  std::lock_guard lock(state_->mu);
  state_->idle_events.push_back(event);
}

// ---------------------------------------------------------------------------
// The pool

std::string GpuTier::FullMessage(uint64_t need) const {
  const size_t deferred = deferred_frames();
  return absl::StrCat(
      "tier gpu: no free frame of ", need, " bytes in the pool (", capacity(),
      " bytes, ", used(), " used, longest free range ", largest_free(), ")",
      deferred == 0 ? ""
                    : absl::StrCat("; ", deferred, " freed frames wait for callers' "
                                   "streams (Pin::ReleaseAfter) that did not finish"),
      "; evict, release pins, or raise EngineOptions::gpu.capacity_bytes");
}

absl::StatusOr<Frame> GpuTier::DoAllocate(uint64_t bytes) {
  STRATA_RETURN_IF_ERROR(CheckFence());
  const uint64_t need = RoundUp(bytes, kFrameAlign);
  if (device_->RefuseFrame(need)) {
    return absl::ResourceExhaustedError(FullMessage(need));
  }
  ReapDeferred();
  std::optional<uint64_t> offset = state_->pool.Allocate(need);
  if (!offset.has_value() && deferred_frames() > 0) offset = AwaitDeferred(need);
  if (!offset.has_value()) return absl::ResourceExhaustedError(FullMessage(need));
  return Frame{.offset = *offset, .bytes = need, .data = nullptr,
               .device = base_ + *offset};
}

void GpuTier::DoFree(const Frame& frame) {
  {
    std::lock_guard lock(state_->mu);
    // The frame's bytes are gone: so is its ready event (a stream that
    // waited on it captured what it waits for when it was told to).
    if (auto r = state_->ready.find(frame.offset); r != state_->ready.end()) {
      state_->idle_events.push_back(r->second.event);
      state_->ready.erase(r);
    }
    auto it = state_->fences.find(frame.offset);
    if (it != state_->fences.end()) {
      state_->deferred.push_back({frame.offset, frame.bytes, std::move(it->second)});
      state_->fences.erase(it);
      return;
    }
  }
  state_->pool.Free(frame.offset, frame.bytes);
}

size_t GpuTier::ReapDeferred() {
  std::vector<State::Deferred> taken;
  {
    std::lock_guard lock(state_->mu);
    taken.swap(state_->deferred);
  }
  std::vector<State::Deferred> keep;
  for (State::Deferred& d : taken) {
    bool done = true;
    for (DeviceEvent e : d.events) {
      // A failed query keeps the frame out of the pool: reusing memory a
      // kernel may still touch is worse than losing the frame.
      absl::StatusOr<bool> q = device_->Query(e);
      if (!q.ok()) (void)Failed("asking whether a caller's stream finished", q.status());
      if (!q.ok() || !*q) {
        done = false;
        break;
      }
    }
    if (!done) {
      keep.push_back(std::move(d));
      continue;
    }
    for (DeviceEvent e : d.events) PutEvent(e);
    state_->pool.Free(d.offset, d.bytes);
  }
  std::lock_guard lock(state_->mu);
  for (State::Deferred& d : keep) state_->deferred.push_back(std::move(d));
  return state_->deferred.size();
}

std::optional<uint64_t> GpuTier::AwaitDeferred(uint64_t need) {
  // Frames a caller's stream still uses come back when it gets there; the
  // wait is bounded (a stream that never finishes must not hang the
  // engine), and polls, since it waits for any of several streams.
  const absl::Time until = absl::Now() + stream_wait_;
  while (absl::Now() < until) {
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    const size_t left = ReapDeferred();
    std::optional<uint64_t> offset = state_->pool.Allocate(need);
    if (offset.has_value() || left == 0) return offset;
  }
  return std::nullopt;
}

size_t GpuTier::deferred_frames() const {
  std::lock_guard lock(state_->mu);
  return state_->deferred.size();
}

uint64_t GpuTier::largest_free() const { return state_->pool.largest_free(); }

absl::Status GpuTier::RegisterHostMemory(std::span<std::byte> arena) {
  STRATA_RETURN_IF_ERROR(CheckFence());
  absl::Status s = device_->RegisterHost(arena);
  if (!s.ok()) return Failed("registering the host arena", s);
  return s;
}

// ---------------------------------------------------------------------------
// Transfers

absl::Status GpuTier::DoSubmit(std::span<Transfer* const> batch) {
  STRATA_RETURN_IF_ERROR(CheckFence());
  for (Transfer* t : batch) {
    absl::Status s = StartOne(*t);
    if (!s.ok()) {
      t->status = s;
      t->on_done(t);
    }
  }
  return absl::OkStatus();
}

absl::Status GpuTier::StartOne(Transfer& t) {
  STRATA_RETURN_IF_ERROR(CheckFence());
  const CopyDir dir = t.op == Transfer::Op::kWrite ? CopyDir::kHostToDevice
                                                    : CopyDir::kDeviceToHost;
  DeviceStream stream = device_->copy_stream(dir);
  // A caller's kernels may still use the frame (a stream-ordered unpin):
  // copy out after they wrote it, copy in after they read it (the engine
  // hands an evicted frame straight to the load that evicted for it).
  std::vector<DeviceEvent> waits;
  {
    std::lock_guard lock(state_->mu);
    auto it = state_->fences.find(t.frame.offset);
    if (it != state_->fences.end()) waits = it->second;
  }
  for (DeviceEvent e : waits) {
    absl::Status s = device_->StreamWait(stream, e);
    if (!s.ok()) return Failed("ordering a copy after a caller's stream", s);
  }
  STRATA_ASSIGN_OR_RETURN(DeviceEvent event, GetEvent());
  absl::Status s = device_->CopyAsync(dir, static_cast<std::byte*>(t.frame.device),
                                      t.host.data(), t.host.size());
  if (s.ok()) s = device_->Record(event, stream);
  if (!s.ok()) {
    PutEvent(event);
    return Failed(dir == CopyDir::kHostToDevice ? "copy to the device"
                                                : "copy from the device", s);
  }
  t.checksum = 0;  // the GPU keeps no checksums: it is a pinnable tier
  const bool keep = dir == CopyDir::kHostToDevice;
  if (keep) {
    // The copy's event becomes the frame's ready event, announced before the
    // lane can complete the transfer (on_done ends the caller's interest).
    DeviceEvent old = nullptr;
    {
      std::lock_guard lock(state_->mu);
      State::Ready& r = state_->ready[t.frame.offset];
      old = r.event;
      r = {event, absl::OkStatus()};
    }
    if (old != nullptr) PutEvent(old);
    if (t.on_enqueued != nullptr) t.on_enqueued(&t);
  }
  State::Lane& lane = state_->lanes[Index(dir)];
  // Notified under the lock: once the lane can take the transfer, it may
  // complete it, the engine see nothing left in flight and destroy the tier
  // (and this condition variable) before a notify after the unlock ran
  // (TSan, gpu_tier_test PinAsyncFromNvmeStagesThenDoesNotWaitForTheLastCopy:
  // a copy submitted from the NVMe tier's completion thread).
  std::lock_guard lock(lane.mu);
  lane.queue.push_back({&t, event, keep});
  lane.cv.notify_one();
  return absl::OkStatus();
}

void GpuTier::RunLane(int index) {
  State::Lane& lane = state_->lanes[index];
  for (;;) {
    State::Pending p;
    {
      std::unique_lock lock(lane.mu);
      lane.cv.wait(lock, [&] { return lane.stop || !lane.queue.empty(); });
      if (lane.queue.empty()) return;  // stopped, and every transfer done
      p = lane.queue.front();
      lane.queue.pop_front();
    }
    absl::Status s = device_->Synchronize(p.event);
    if (!s.ok()) s = Failed("waiting for a copy", s);
    if (p.keep_event) {
      if (!s.ok()) {
        // Recorded before on_done: whoever learns the copy failed (the
        // copy's state word, cleared in on_done) finds its error here.
        std::lock_guard lock(state_->mu);
        auto r = state_->ready.find(p.transfer->frame.offset);
        if (r != state_->ready.end() && r->second.event == p.event) {
          // A Status of its own, not a second reference to the one the
          // transfer hands the loader: its refcount would be shared by
          // threads that no lock orders (TSan: the loader's copy against
          // DoFree's erase).
          r->second.status = absl::Status(s.code(), s.message());
        }
      }
    } else {
      PutEvent(p.event);
    }
    p.transfer->status = s;
    p.transfer->on_done(p.transfer);
  }
}

// ---------------------------------------------------------------------------
// Stream ordering

absl::StatusOr<void*> GpuTier::ReadyEvent(const Frame& frame) {
  STRATA_RETURN_IF_ERROR(CheckFence());
  std::lock_guard lock(state_->mu);
  auto r = state_->ready.find(frame.offset);
  // A frame no copy filled (an overwrite pin's): nothing to wait for, and an
  // event never recorded is one a stream waits for at no cost.
  if (r == state_->ready.end()) return state_->complete;
  if (!r->second.status.ok()) {
    return absl::Status(
        r->second.status.code(),
        absl::StrCat(r->second.status.message(),
                     "; the block's copy into VRAM failed, so this pin's "
                     "device memory holds no valid bytes: release the pin "
                     "and pin the block again (the engine loads it anew)"));
  }
  // The copy's event: complete once the bytes are there (a pin from Pin()
  // is granted only then; one from PinAsync() may come earlier).
  return r->second.event;
}

absl::Status GpuTier::WaitReady(const Frame& frame, void* stream) {
  STRATA_ASSIGN_OR_RETURN(void* event, ReadyEvent(frame));
  absl::Status s = device_->StreamWait(stream, event);
  if (!s.ok()) return Failed("making a stream wait for a pin", s);
  return s;
}

absl::Status GpuTier::FenceAfter(const Frame& frame, void* stream) {
  STRATA_RETURN_IF_ERROR(CheckFence());
  STRATA_ASSIGN_OR_RETURN(DeviceEvent event, GetEvent());
  if (absl::Status s = device_->Record(event, stream); !s.ok()) {
    PutEvent(event);
    return Failed("recording an unpin on the caller's stream", s);
  }
  std::vector<DeviceEvent> done;
  {
    std::lock_guard lock(state_->mu);
    std::vector<DeviceEvent>& events = state_->fences[frame.offset];
    // Fences the device passed are dropped, so a frame pinned over and over
    // keeps a short list.
    for (size_t i = 0; i < events.size();) {
      absl::StatusOr<bool> q = device_->Query(events[i]);
      if (q.ok() && *q) {
        done.push_back(events[i]);
        events[i] = events.back();
        events.pop_back();
      } else {
        ++i;
      }
    }
    events.push_back(event);
  }
  for (DeviceEvent e : done) PutEvent(e);
  return absl::OkStatus();
}

}  // namespace strata::tiers
