#include "tiers/gpu/fake_gpu_device.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace strata::tiers {

struct FakeGpuDevice::Event {
  uint64_t recorded = 0;   // generation of the latest Record
  uint64_t completed = 0;  // generation its stream got to
  absl::Status error;      // of a failed copy before its latest record
};

struct FakeGpuDevice::Op {
  enum class Kind { kCopy, kRecord, kWait, kKernel };
  Kind kind = Kind::kCopy;
  CopyDir dir = CopyDir::kHostToDevice;
  std::byte* device = nullptr;
  std::byte* host = nullptr;
  uint64_t bytes = 0;
  Event* event = nullptr;
  uint64_t generation = 0;
  std::function<void(std::span<std::byte>)> kernel;
  absl::Status fail;  // a copy that fails when it runs
};

struct FakeGpuDevice::Stream {
  std::deque<Op> ops;
  bool held = false;
  absl::Status error;  // a failed copy's, until the next record takes it
};

FakeGpuDevice::FakeGpuDevice(uint64_t total_bytes)
    : total_bytes_(total_bytes), free_bytes_(total_bytes) {
  streams_.push_back(std::make_unique<Stream>());
  streams_.push_back(std::make_unique<Stream>());
  streams_.push_back(std::make_unique<Stream>());  // the default stream
}

FakeGpuDevice::~FakeGpuDevice() {
  for (const Region& r : regions_) {
    munmap(r.base, r.bytes);
    munmap(r.backing, r.bytes);
  }
}

absl::Status FakeGpuDevice::CheckLocked() const { return sticky_; }

void FakeGpuDevice::set_log(std::function<void(std::string_view)> log) {
  std::lock_guard lock(mu_);
  log_ = std::move(log);
}

bool FakeGpuDevice::has_log() const {
  std::lock_guard lock(mu_);
  return static_cast<bool>(log_);
}

absl::Status FakeGpuDevice::sticky_error() const {
  std::lock_guard lock(mu_);
  return sticky_;
}

absl::StatusOr<DeviceMemory> FakeGpuDevice::MemoryInfo() {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  return DeviceMemory{free_bytes_, total_bytes_};
}

absl::StatusOr<std::byte*> FakeGpuDevice::Reserve(uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  if (!reserve_error_.ok()) return reserve_error_;
  if (bytes > free_bytes_) {
    return absl::ResourceExhaustedError("cudaMalloc: out of memory (fake)");
  }
  void* base = mmap(nullptr, bytes, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  void* backing = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED || backing == MAP_FAILED) {
    if (base != MAP_FAILED) munmap(base, bytes);
    if (backing != MAP_FAILED) munmap(backing, bytes);
    return absl::ResourceExhaustedError(
        absl::StrCat("fake gpu: mmap of ", bytes, " bytes: ", std::strerror(errno)));
  }
  regions_.push_back({static_cast<std::byte*>(base),
                      static_cast<std::byte*>(backing), bytes});
  free_bytes_ -= bytes;
  return static_cast<std::byte*>(base);
}

void FakeGpuDevice::Unreserve(std::byte* base) {
  std::lock_guard lock(mu_);
  auto it = std::find_if(regions_.begin(), regions_.end(),
                         [&](const Region& r) { return r.base == base; });
  if (it == regions_.end()) return;
  munmap(it->base, it->bytes);
  munmap(it->backing, it->bytes);
  free_bytes_ += it->bytes;
  regions_.erase(it);
}

absl::Status FakeGpuDevice::RegisterHost(std::span<std::byte> host) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  registered_ += host.size();
  return absl::OkStatus();
}

DeviceStream FakeGpuDevice::copy_stream(CopyDir dir) {
  std::lock_guard lock(mu_);
  return streams_[dir == CopyDir::kHostToDevice ? 0 : 1].get();
}

std::byte* FakeGpuDevice::TranslateLocked(const void* device, uint64_t bytes) const {
  const auto* p = static_cast<const std::byte*>(device);
  for (const Region& r : regions_) {
    if (p >= r.base && p + bytes <= r.base + r.bytes) {
      return r.backing + (p - r.base);
    }
  }
  return nullptr;
}

absl::Status FakeGpuDevice::CopyAsync(CopyDir dir, std::byte* device,
                                      std::byte* host, uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  if (fail_copy_in_ > 0 && --fail_copy_in_ == 0) return fail_copy_status_;
  if (TranslateLocked(device, bytes) == nullptr || host == nullptr) {
    return absl::InvalidArgumentError(
        "cudaMemcpyAsync: invalid argument (fake: device range outside every "
        "reservation, or null host pointer)");
  }
  Op op{.kind = Op::Kind::kCopy, .dir = dir, .device = device, .host = host,
        .bytes = bytes};
  if (fail_run_in_ > 0 && --fail_run_in_ == 0) op.fail = fail_run_status_;
  EnqueueLocked(streams_[dir == CopyDir::kHostToDevice ? 0 : 1].get(), std::move(op));
  return absl::OkStatus();
}

absl::StatusOr<DeviceEvent> FakeGpuDevice::CreateEvent() {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  events_.push_back(std::make_unique<Event>());
  return events_.back().get();
}

void FakeGpuDevice::DestroyEvent(DeviceEvent event) {
  std::lock_guard lock(mu_);
  std::erase_if(events_, [&](const auto& e) { return e.get() == event; });
}

absl::Status FakeGpuDevice::Record(DeviceEvent event, DeviceStream stream) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  auto* e = static_cast<Event*>(event);
  Op op{.kind = Op::Kind::kRecord, .event = e, .generation = ++e->recorded};
  EnqueueLocked(StreamOf(stream), std::move(op));
  return absl::OkStatus();
}

absl::Status FakeGpuDevice::StreamWait(DeviceStream stream, DeviceEvent event) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  auto* e = static_cast<Event*>(event);
  Op op{.kind = Op::Kind::kWait, .event = e, .generation = e->recorded};
  EnqueueLocked(StreamOf(stream), std::move(op));
  return absl::OkStatus();
}

absl::StatusOr<bool> FakeGpuDevice::Query(DeviceEvent event) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  const auto* e = static_cast<Event*>(event);
  return e->completed >= e->recorded;
}

absl::Status FakeGpuDevice::Synchronize(DeviceEvent event) {
  std::unique_lock lock(mu_);
  const auto* e = static_cast<Event*>(event);
  const uint64_t target = e->recorded;
  ++waiters_;
  cv_.notify_all();  // tests wait for waiters() to change
  cv_.wait(lock, [&] { return !sticky_.ok() || e->completed >= target; });
  --waiters_;
  if (!sticky_.ok()) return sticky_;
  return e->error;
}

bool FakeGpuDevice::RefuseFrame(uint64_t bytes) {
  (void)bytes;
  std::lock_guard lock(mu_);
  bool refuse = false;
  if (refuse_in_ > 0) {
    if (--refuse_in_ == 0) {
      refuse = true;
      if (refuse_every_) refuse_in_ = 1;
    }
  }
  if (refuse) ++refused_;
  return refuse;
}

// ---------------------------------------------------------------------------
// Streams

FakeGpuDevice::Stream* FakeGpuDevice::StreamOf(DeviceStream stream) const {
  // CUDA's names for the default stream: 0, cudaStreamLegacy (0x1) and
  // cudaStreamPerThread (0x2), as DLPack consumers pass them.
  if (reinterpret_cast<uintptr_t>(stream) <= 2) return streams_[2].get();
  return static_cast<Stream*>(stream);
}

void FakeGpuDevice::EnqueueLocked(Stream* stream, Op op) {
  stream->ops.push_back(std::move(op));
  PumpLocked();
}

void FakeGpuDevice::PumpLocked() {
  bool progress = true;
  while (progress && sticky_.ok()) {
    progress = false;
    for (auto& s : streams_) progress |= RunLocked(*s);
  }
  cv_.notify_all();
}

bool FakeGpuDevice::RunLocked(Stream& stream) {
  bool ran = false;
  while (!stream.held && !stream.ops.empty() && sticky_.ok()) {
    Op& op = stream.ops.front();
    if (op.kind == Op::Kind::kWait && op.event->completed < op.generation) break;
    ExecuteLocked(stream, op);
    stream.ops.pop_front();
    ran = true;
  }
  return ran;
}

void FakeGpuDevice::ExecuteLocked(Stream& stream, Op& op) {
  switch (op.kind) {
    case Op::Kind::kCopy: {
      if (!op.fail.ok()) {
        stream.error = op.fail;
        break;
      }
      std::byte* bytes = TranslateLocked(op.device, op.bytes);
      const int i = op.dir == CopyDir::kHostToDevice ? 0 : 1;
      if (i == 0) {
        std::memcpy(bytes, op.host, op.bytes);
      } else {
        std::memcpy(op.host, bytes, op.bytes);
      }
      ++copies_[i];
      bytes_[i] += op.bytes;
      break;
    }
    case Op::Kind::kRecord:
      op.event->completed = std::max(op.event->completed, op.generation);
      op.event->error = stream.error;
      stream.error = absl::OkStatus();
      break;
    case Op::Kind::kWait:
      break;
    case Op::Kind::kKernel:
      op.kernel({TranslateLocked(op.device, op.bytes), op.bytes});
      break;
  }
}

// ---------------------------------------------------------------------------
// For tests

DeviceStream FakeGpuDevice::CreateStream() {
  std::lock_guard lock(mu_);
  streams_.push_back(std::make_unique<Stream>());
  return streams_.back().get();
}

void FakeGpuDevice::Hold(DeviceStream stream) {
  std::lock_guard lock(mu_);
  StreamOf(stream)->held = true;
}

void FakeGpuDevice::Release(DeviceStream stream) {
  std::lock_guard lock(mu_);
  StreamOf(stream)->held = false;
  PumpLocked();
}

absl::Status FakeGpuDevice::Launch(DeviceStream stream, void* device,
                                   uint64_t bytes,
                                   std::function<void(std::span<std::byte>)> fn) {
  std::lock_guard lock(mu_);
  if (!sticky_.ok()) return sticky_;
  if (TranslateLocked(device, bytes) == nullptr) {
    return absl::InvalidArgumentError("fake gpu: kernel over memory outside the pool");
  }
  Op op{.kind = Op::Kind::kKernel, .device = static_cast<std::byte*>(device),
        .bytes = bytes, .kernel = std::move(fn)};
  EnqueueLocked(StreamOf(stream), std::move(op));
  return absl::OkStatus();
}

std::vector<std::byte> FakeGpuDevice::Peek(const void* device, uint64_t bytes) {
  std::lock_guard lock(mu_);
  const std::byte* p = TranslateLocked(device, bytes);
  if (p == nullptr) return {};
  return std::vector<std::byte>(p, p + bytes);
}

void FakeGpuDevice::FailNthCopy(uint64_t nth, absl::Status status) {
  std::lock_guard lock(mu_);
  fail_copy_in_ = nth;
  fail_copy_status_ = std::move(status);
}

void FakeGpuDevice::FailNthCopyWhenItRuns(uint64_t nth, absl::Status status) {
  std::lock_guard lock(mu_);
  fail_run_in_ = nth;
  fail_run_status_ = std::move(status);
}

void FakeGpuDevice::InjectStickyError(absl::Status status) {
  std::lock_guard lock(mu_);
  sticky_ = std::move(status);
  cv_.notify_all();
}

void FakeGpuDevice::RefuseNthFrame(uint64_t nth, bool every) {
  std::lock_guard lock(mu_);
  refuse_in_ = nth;
  refuse_every_ = every;
}

void FakeGpuDevice::FailReserve(absl::Status status) {
  std::lock_guard lock(mu_);
  reserve_error_ = std::move(status);
}

void FakeGpuDevice::SetFreeBytes(uint64_t free_bytes) {
  std::lock_guard lock(mu_);
  free_bytes_ = free_bytes;
}

uint64_t FakeGpuDevice::copies(CopyDir dir) const {
  std::lock_guard lock(mu_);
  return copies_[dir == CopyDir::kHostToDevice ? 0 : 1];
}

uint64_t FakeGpuDevice::bytes_copied(CopyDir dir) const {
  std::lock_guard lock(mu_);
  return bytes_[dir == CopyDir::kHostToDevice ? 0 : 1];
}

uint64_t FakeGpuDevice::registered_bytes() const {
  std::lock_guard lock(mu_);
  return registered_;
}

int FakeGpuDevice::waiters() const {
  std::lock_guard lock(mu_);
  return waiters_;
}

bool FakeGpuDevice::AwaitWaiters(int n, absl::Duration timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                      [&] { return waiters_ >= n; });
}

uint64_t FakeGpuDevice::frames_refused() const {
  std::lock_guard lock(mu_);
  return refused_;
}

}  // namespace strata::tiers
