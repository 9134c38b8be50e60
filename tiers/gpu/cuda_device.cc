#include "tiers/gpu/cuda_device.h"

#include <cuda_runtime_api.h>

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace strata::tiers {
namespace {

// Errors after which the CUDA context cannot be used again (CUDA runtime
// API docs: "the process must be terminated and relaunched").
bool IsSticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorECCUncorrectable:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
      return true;
    default:
      return false;
  }
}

// The one translation of cudaError_t into absl::Status.
absl::Status CudaStatus(cudaError_t e, std::string_view call) {
  if (e == cudaSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(Sv(call), ": ", cudaGetErrorName(e), " (",
                                     cudaGetErrorString(e), ")");
  switch (e) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

class CudaDevice : public GpuDevice {
 public:
  CudaDevice(int index, std::string name) : index_(index), name_(std::move(name)) {}
  ~CudaDevice() override;

  absl::Status Init();
  std::string describe() const override {
    return absl::StrCat("cuda device ", index_, " (", name_, ")");
  }
  absl::StatusOr<DeviceMemory> MemoryInfo() override;
  absl::StatusOr<std::byte*> Reserve(uint64_t bytes) override;
  void Unreserve(std::byte* base) override;
  absl::Status RegisterHost(std::span<std::byte> host) override;
  DeviceStream copy_stream(CopyDir dir) override {
    return streams_[dir == CopyDir::kHostToDevice ? 0 : 1];
  }
  absl::Status CopyAsync(CopyDir dir, std::byte* device, std::byte* host,
                         uint64_t bytes) override;
  absl::StatusOr<DeviceEvent> CreateEvent() override;
  void DestroyEvent(DeviceEvent event) override;
  absl::Status Record(DeviceEvent event, DeviceStream stream) override;
  absl::Status StreamWait(DeviceStream stream, DeviceEvent event) override;
  absl::StatusOr<bool> Query(DeviceEvent event) override;
  absl::Status Synchronize(DeviceEvent event) override;
  absl::Status sticky_error() const override {
    std::lock_guard lock(mu_);
    return sticky_;
  }
  void set_log(std::function<void(std::string_view)> log) override {
    std::lock_guard lock(mu_);
    log_ = std::move(log);
  }

 private:
  // Sticky errors fence the device; every call checks first.
  absl::Status Check(cudaError_t e, std::string_view call);
  absl::Status Enter();
  // Teardown goes on whatever CUDA says; the first error met there is
  // logged, once (after a sticky error every call fails alike).
  void TeardownCheck(cudaError_t e, std::string_view call, std::string_view what);

  const int index_;
  const std::string name_;
  cudaStream_t streams_[2] = {nullptr, nullptr};
  mutable std::mutex mu_;
  absl::Status sticky_;
  std::vector<void*> registered_;
  std::function<void(std::string_view)> log_;
  bool teardown_failed_ = false;  // a teardown error was logged (mu_)
};

absl::Status CudaDevice::Check(cudaError_t e, std::string_view call) {
  if (e == cudaSuccess) return absl::OkStatus();
  absl::Status s = CudaStatus(e, call);
  if (IsSticky(e)) {
    std::lock_guard lock(mu_);
    if (sticky_.ok()) sticky_ = s;
  }
  return s;
}

absl::Status CudaDevice::Enter() {
  {
    std::lock_guard lock(mu_);
    if (!sticky_.ok()) return sticky_;
  }
  return Check(cudaSetDevice(index_), "cudaSetDevice");
}

absl::Status CudaDevice::Init() {
  if (absl::Status s = Enter(); !s.ok()) return s;
  for (cudaStream_t& s : streams_) {
    if (absl::Status st = Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
                                "cudaStreamCreateWithFlags");
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

void CudaDevice::TeardownCheck(cudaError_t e, std::string_view call,
                               std::string_view what) {
  if (e == cudaSuccess) return;
  // Not sticky: clear it, or the next unrelated call (a kernel launch's
  // cudaGetLastError) would report it as its own. Its value is `e`.
  if (!IsSticky(e)) (void)cudaGetLastError();
  std::function<void(std::string_view)> log;
  {
    std::lock_guard lock(mu_);
    if (teardown_failed_) return;
    teardown_failed_ = true;
    log = log_;
  }
  if (!log) return;
  log(absl::StrCat("strata: tier gpu: ", describe(), ": ", Sv(call), " failed while ",
                   Sv(what), ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
                   "); teardown went on (later teardown errors are not logged)"));
}

CudaDevice::~CudaDevice() {
  TeardownCheck(cudaSetDevice(index_), "cudaSetDevice", "closing the device");
  for (cudaStream_t s : streams_) {
    if (s == nullptr) continue;
    TeardownCheck(cudaStreamSynchronize(s), "cudaStreamSynchronize",
                  "draining a copy stream before destroying it");
    TeardownCheck(cudaStreamDestroy(s), "cudaStreamDestroy", "destroying a copy stream");
  }
  for (void* p : registered_) {
    TeardownCheck(cudaHostUnregister(p), "cudaHostUnregister",
                  "unpinning registered host memory");
  }
}

absl::StatusOr<DeviceMemory> CudaDevice::MemoryInfo() {
  if (absl::Status s = Enter(); !s.ok()) return s;
  size_t free = 0, total = 0;
  if (absl::Status s = Check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo"); !s.ok()) {
    return s;
  }
  return DeviceMemory{free, total};
}

absl::StatusOr<std::byte*> CudaDevice::Reserve(uint64_t bytes) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  void* p = nullptr;
  if (absl::Status s = Check(cudaMalloc(&p, bytes), "cudaMalloc"); !s.ok()) return s;
  return static_cast<std::byte*>(p);
}

void CudaDevice::Unreserve(std::byte* base) {
  TeardownCheck(cudaSetDevice(index_), "cudaSetDevice", "releasing the pool");
  TeardownCheck(cudaFree(base), "cudaFree", "releasing the pool");
}

absl::Status CudaDevice::RegisterHost(std::span<std::byte> host) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  cudaError_t e = cudaHostRegister(host.data(), host.size(), cudaHostRegisterDefault);
  if (e == cudaErrorHostMemoryAlreadyRegistered) {
    (void)cudaGetLastError();
    return absl::OkStatus();
  }
  if (absl::Status s = Check(e, "cudaHostRegister"); !s.ok()) return s;
  std::lock_guard lock(mu_);
  registered_.push_back(host.data());
  return absl::OkStatus();
}

absl::Status CudaDevice::CopyAsync(CopyDir dir, std::byte* device,
                                   std::byte* host, uint64_t bytes) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  const bool h2d = dir == CopyDir::kHostToDevice;
  return Check(cudaMemcpyAsync(h2d ? static_cast<void*>(device) : host,
                               h2d ? static_cast<void*>(host) : device, bytes,
                               h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                               streams_[h2d ? 0 : 1]),
               "cudaMemcpyAsync");
}

absl::StatusOr<DeviceEvent> CudaDevice::CreateEvent() {
  if (absl::Status s = Enter(); !s.ok()) return s;
  cudaEvent_t e = nullptr;
  if (absl::Status s = Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                             "cudaEventCreateWithFlags");
      !s.ok()) {
    return s;
  }
  return static_cast<DeviceEvent>(e);
}

void CudaDevice::DestroyEvent(DeviceEvent event) {
  TeardownCheck(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy",
                "destroying an event");
}

absl::Status CudaDevice::Record(DeviceEvent event, DeviceStream stream) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  return Check(cudaEventRecord(static_cast<cudaEvent_t>(event),
                               static_cast<cudaStream_t>(stream)),
               "cudaEventRecord");
}

absl::Status CudaDevice::StreamWait(DeviceStream stream, DeviceEvent event) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  return Check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                   static_cast<cudaEvent_t>(event), 0),
               "cudaStreamWaitEvent");
}

absl::StatusOr<bool> CudaDevice::Query(DeviceEvent event) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaErrorNotReady) return false;
  if (absl::Status s = Check(e, "cudaEventQuery"); !s.ok()) return s;
  return true;
}

absl::Status CudaDevice::Synchronize(DeviceEvent event) {
  if (absl::Status s = Enter(); !s.ok()) return s;
  return Check(cudaEventSynchronize(static_cast<cudaEvent_t>(event)),
               "cudaEventSynchronize");
}

}  // namespace

absl::StatusOr<std::unique_ptr<GpuDevice>> OpenCudaDevice(int index) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tier gpu: no usable CUDA device (",
        e != cudaSuccess ? CudaStatus(e, "cudaGetDeviceCount").message()
                         : "cudaGetDeviceCount found none",
        "); leave Tier::kGpu out of EngineOptions::tiers on this machine"));
  }
  if (index < 0 || index >= count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tier gpu: EngineOptions::gpu.device ", index, " does not exist; this "
        "machine has ", count, " CUDA device(s), 0..", count - 1));
  }
  cudaDeviceProp prop{};
  if (absl::Status s = CudaStatus(cudaGetDeviceProperties(&prop, index),
                                  "cudaGetDeviceProperties");
      !s.ok()) {
    return s;
  }
  auto device = std::make_unique<CudaDevice>(index, prop.name);
  if (absl::Status s = device->Init(); !s.ok()) return s;
  return std::unique_ptr<GpuDevice>(std::move(device));
}

}  // namespace strata::tiers
