// _strata_fake_gpu: the GPU device double (tiers/gpu/fake_gpu_device.h) for
// the python suite, so that GPU pins and their CUDA DLPack views are tested
// on machines without a GPU.
//
//   dev = _strata_fake_gpu.FakeGpu(64 << 20)
//   engine = strata.Engine(tiers=("gpu", "host"), _gpu_device=dev.capsule())
//   view = _strata_fake_gpu.consume(pin.__dlpack__(stream=s))  # as torch does
//   dev.peek(view.data, view.nbytes)
//
// A FakeGpu stands for the device; `consume` for a CUDA consumer (torch):
// it takes the capsule over and calls its deleter when told, with or without
// the GIL. Streams and device pointers cross as ints, as in DLPack.
#include <Python.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "absl/time/time.h"
#include "tiers/gpu/fake_gpu_device.h"

namespace py = pybind11;

namespace strata::python {
namespace {

using tiers::CopyDir;
using tiers::DeviceStream;
using tiers::FakeGpuDevice;
using tiers::GpuDevice;

DeviceStream StreamOf(intptr_t s) { return reinterpret_cast<DeviceStream>(s); }

void Check(const absl::Status& status) {
  if (!status.ok()) throw std::runtime_error(status.ToString());
}

// What a kernel saw of device memory, once its stream ran it.
struct KernelRead {
  bool done = false;
  std::string bytes;
};

class FakeGpu {
 public:
  explicit FakeGpu(uint64_t total_bytes)
      : device_(std::make_shared<FakeGpuDevice>(total_bytes)) {}

  // For strata.Engine(_gpu_device=...): a new reference to the device.
  py::capsule Capsule() const {
    auto* ref = new std::shared_ptr<GpuDevice>(device_);
    return py::capsule(ref, "strata._gpu_device", [](PyObject* capsule) {
      delete static_cast<std::shared_ptr<GpuDevice>*>(
          PyCapsule_GetPointer(capsule, "strata._gpu_device"));
    });
  }
  intptr_t CreateStream() {
    return reinterpret_cast<intptr_t>(device_->CreateStream());
  }
  // The stream of the tier's copies into the device (hold it: a copy
  // still on its way).
  intptr_t CopyStreamToDevice() {
    return reinterpret_cast<intptr_t>(device_->copy_stream(CopyDir::kHostToDevice));
  }
  void Hold(intptr_t s) { device_->Hold(StreamOf(s)); }
  void Release(intptr_t s) { device_->Release(StreamOf(s)); }
  py::bytes Peek(uintptr_t ptr, uint64_t n) {
    std::vector<std::byte> b = device_->Peek(reinterpret_cast<void*>(ptr), n);
    return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
  }
  // A kernel on stream `s` that writes `pattern` over [ptr, ptr + n).
  void Fill(intptr_t s, uintptr_t ptr, uint64_t n, std::string pattern) {
    if (pattern.empty()) throw std::invalid_argument("empty pattern");
    Check(device_->Launch(StreamOf(s), reinterpret_cast<void*>(ptr), n,
                          [pattern](std::span<std::byte> mem) {
                            for (size_t i = 0; i < mem.size(); ++i) {
                              mem[i] = static_cast<std::byte>(pattern[i % pattern.size()]);
                            }
                          }));
  }
  // A kernel on stream `s` that reads [ptr, ptr + n) when it runs.
  std::shared_ptr<KernelRead> Read(intptr_t s, uintptr_t ptr, uint64_t n) {
    auto read = std::make_shared<KernelRead>();
    Check(device_->Launch(StreamOf(s), reinterpret_cast<void*>(ptr), n,
                          [read](std::span<std::byte> mem) {
                            read->bytes.assign(reinterpret_cast<const char*>(mem.data()),
                                               mem.size());
                            read->done = true;
                          }));
    return read;
  }
  uint64_t CopiesToDevice() const { return device_->copies(CopyDir::kHostToDevice); }
  // Whether `n` threads are blocked on the device (a pin waiting for a
  // frame), within `seconds`.
  bool AwaitWaiters(int n, double seconds) {
    py::gil_scoped_release release;
    return device_->AwaitWaiters(n, absl::Seconds(seconds));
  }

 private:
  std::shared_ptr<FakeGpuDevice> device_;
};

// A DLPack consumer's hold on a view: the capsule renamed "used_dltensor",
// and the deleter called once by Delete (or at collection).
class ConsumedView {
 public:
  explicit ConsumedView(py::capsule capsule) {
    managed_ = static_cast<DLManagedTensor*>(
        PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    if (managed_ == nullptr) throw py::error_already_set();
    if (PyCapsule_SetName(capsule.ptr(), "used_dltensor") != 0) {
      throw py::error_already_set();
    }
  }
  ConsumedView(const ConsumedView&) = delete;
  ConsumedView& operator=(const ConsumedView&) = delete;
  ~ConsumedView() { Delete(/*without_gil=*/false); }

  const DLTensor& t() const {
    if (managed_ == nullptr) throw std::runtime_error("the view was deleted");
    return managed_->dl_tensor;
  }
  uintptr_t data() const { return reinterpret_cast<uintptr_t>(t().data) + t().byte_offset; }
  py::tuple device() const { return py::make_tuple(int{t().device.device_type}, t().device.device_id); }
  std::vector<int64_t> shape() const { return {t().shape, t().shape + t().ndim}; }
  std::vector<int64_t> strides() const {
    if (t().strides == nullptr) return {};
    return {t().strides, t().strides + t().ndim};
  }
  py::tuple dtype() const {
    return py::make_tuple(int{t().dtype.code}, int{t().dtype.bits}, int{t().dtype.lanes});
  }
  uint64_t nbytes() const {
    uint64_t n = (t().dtype.bits * t().dtype.lanes + 7) / 8;
    for (int i = 0; i < t().ndim; ++i) n *= static_cast<uint64_t>(t().shape[i]);
    return n;
  }
  // torch calls the deleter when its tensor dies, on any thread and
  // without the GIL.
  void Delete(bool without_gil) {
    DLManagedTensor* m = managed_;
    managed_ = nullptr;
    if (m == nullptr || m->deleter == nullptr) return;
    if (without_gil) {
      py::gil_scoped_release release;
      m->deleter(m);
    } else {
      m->deleter(m);
    }
  }
  bool deleted() const { return managed_ == nullptr; }

 private:
  DLManagedTensor* managed_ = nullptr;
};

}  // namespace
}  // namespace strata::python

PYBIND11_MODULE(_strata_fake_gpu, m) {
  using strata::python::ConsumedView;
  using strata::python::FakeGpu;
  using strata::python::KernelRead;
  m.doc() = "The GPU device double of Strata's python tests.";
  py::class_<KernelRead, std::shared_ptr<KernelRead>>(m, "KernelRead")
      .def_property_readonly("done", [](const KernelRead& r) { return r.done; })
      .def_property_readonly("bytes", [](const KernelRead& r) { return py::bytes(r.bytes); });
  py::class_<FakeGpu>(m, "FakeGpu")
      .def(py::init<uint64_t>(), py::arg("total_bytes"))
      .def("capsule", &FakeGpu::Capsule)
      .def("create_stream", &FakeGpu::CreateStream)
      .def("copy_stream_to_device", &FakeGpu::CopyStreamToDevice)
      .def("hold", &FakeGpu::Hold)
      .def("release", &FakeGpu::Release)
      .def("peek", &FakeGpu::Peek)
      .def("fill", &FakeGpu::Fill)
      .def("read", &FakeGpu::Read)
      .def("copies_to_device", &FakeGpu::CopiesToDevice)
      .def("await_waiters", &FakeGpu::AwaitWaiters);
  py::class_<ConsumedView>(m, "ConsumedView")
      .def_property_readonly("data", &ConsumedView::data)
      .def_property_readonly("device", &ConsumedView::device)
      .def_property_readonly("shape", &ConsumedView::shape)
      .def_property_readonly("strides", &ConsumedView::strides)
      .def_property_readonly("dtype", &ConsumedView::dtype)
      .def_property_readonly("nbytes", &ConsumedView::nbytes)
      .def_property_readonly("deleted", &ConsumedView::deleted)
      .def("delete", &ConsumedView::Delete, py::arg("without_gil") = true);
  m.def("consume", [](py::capsule c) { return std::make_unique<ConsumedView>(c); },
        "Takes a DLPack capsule over, as a consumer (torch) does.");
}
