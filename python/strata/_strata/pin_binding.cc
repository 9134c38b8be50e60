// strata._strata.Pin: pinning a block (without the GIL), the DLPack
// protocol (__dlpack__, __dlpack_device__) that torch.from_dlpack and
// numpy.from_dlpack use, and Pin.numpy(), a NumPy view that is read-only for
// read pins. Every view holds the PinState; see bindings.h for lifetimes.
#include <string>
#include <utility>
#include <vector>

#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "absl/strings/str_cat.h"
#include "bindings.h"
#include "convert.h"
#include "errors.h"

namespace py = pybind11;

namespace strata::python {
namespace {

// What a DLPack capsule owns: the tensor description and the pin under it.
// One allocation per view on the hot path (Dims are inline).
struct DLPackView {
  DLManagedTensor managed{};
  std::shared_ptr<PinState> state;
  Dims shape;
  Dims strides;  // in elements, row-major
};

// The DLPack deleter: the consumer (torch, NumPy) calls it when its last
// view is gone, with or without the GIL. Touches no Python object.
void DeleteView(DLManagedTensor* self) {
  delete static_cast<DLPackView*>(self->manager_ctx);
}

// A capsule nobody consumed still owns its view; a consumed one was renamed
// "used_dltensor" and the consumer calls the deleter.
void DestroyCapsule(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, "dltensor")) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<DLManagedTensor*>(
      PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed != nullptr) {
    managed->deleter(managed);
  } else {
    PyErr_WriteUnraisable(capsule);
  }
  PyErr_Restore(type, value, traceback);
}

Dims RowMajorStrides(const Dims& shape) {
  Dims strides(shape.size(), 1);
  for (size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
  return strides;
}

const PyTensor& TensorOf(const PyPin& pin) { return *pin.tensor_; }

py::capsule ToDLPack(const PyPin& self, py::handle stream) {
  PinState& state = self.Live("__dlpack__");
  if (!stream.is_none()) {
    ThrowInvalid("__dlpack__(stream=...) of a host pin takes stream=None; "
                 "host memory has no stream to synchronize with");
  }
  const Tensor& tensor = TensorOf(self).tensor;
  auto view = std::make_unique<DLPackView>();
  view->state = self.state;
  view->shape = BlockShape(tensor, self.block);
  view->strides = RowMajorStrides(view->shape);
  DLTensor& t = view->managed.dl_tensor;
  t.data = state.pin.bytes().data();
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(view->shape.size());
  t.dtype = ToDLDataType(tensor.spec().dtype);
  t.shape = view->shape.data();
  t.strides = view->strides.data();
  t.byte_offset = 0;
  view->managed.manager_ctx = view.get();
  view->managed.deleter = &DeleteView;
  // The capsule owns the view from here (DestroyCapsule).
  py::capsule capsule(&view->managed, "dltensor", &DestroyCapsule);
  view.release();
  return capsule;
}

py::array ToNumPy(const PyPin& self) {
  const PinState& state = self.Live("numpy()");
  const Tensor& tensor = TensorOf(self).tensor;
  if (tensor.spec().dtype == DType::kBF16) {
    ThrowInvalid(absl::StrCat("NumPy has no bfloat16: view block ", self.block,
                              " of '", tensor.name(),
                              "' with torch.from_dlpack(pin) instead"));
  }
  const Dims shape = BlockShape(tensor, self.block);
  Dims strides = RowMajorStrides(shape);
  const int64_t item = static_cast<int64_t>(DTypeSize(tensor.spec().dtype));
  for (int64_t& s : strides) s *= item;
  auto* keep = new std::shared_ptr<PinState>(self.state);
  py::capsule base(keep, [](void* p) {
    delete static_cast<std::shared_ptr<PinState>*>(p);
  });
  py::array array(py::dtype(std::string(DTypeName(tensor.spec().dtype))),
                  std::vector<py::ssize_t>(shape.begin(), shape.end()),
                  std::vector<py::ssize_t>(strides.begin(), strides.end()),
                  state.pin.bytes().data(), base);
  if (self.access == Access::kRead) {
    array.attr("setflags")(py::arg("write") = false);
  }
  return array;
}

void Release(PyPin& self) {
  self.Live("release()");
  self.state.reset();  // unpins now unless a view still holds the block
}

std::string Repr(const PyPin& self) {
  return absl::StrCat("<strata.Pin block ", self.block, " of '",
                      TensorOf(self).tensor.name(), "' tier=",
                      std::string(TierName(self.tier)), " access=",
                      std::string(AccessName(self.access)),
                      self.state ? "" : " (released)", ">");
}

}  // namespace

PinState& PyPin::Live(const char* what) const {
  if (!state) {
    ThrowFailedPrecondition(absl::StrCat(
        what, ": the pin of block ", block, " of '",
        TensorOf(*this).tensor.name(),
        "' was released; pin the block again with engine.pin()"));
  }
  return *state;
}

std::pair<uint64_t, uint64_t> BlockElements(const Tensor& tensor,
                                            uint64_t block) {
  const uint64_t item = DTypeSize(tensor.spec().dtype);
  const uint64_t first = block * tensor.block_bytes() / item;
  return {first, first + tensor.block_size(block) / item};
}

Dims BlockShape(const Tensor& tensor, uint64_t block) {
  const auto [first, last] = BlockElements(tensor, block);
  const std::vector<int64_t>& dims = tensor.spec().shape;
  uint64_t row = 1;
  for (size_t i = 1; i < dims.size(); ++i) row *= static_cast<uint64_t>(dims[i]);
  if (dims.size() < 2 || first % row != 0 || last % row != 0) {
    return {static_cast<int64_t>(last - first)};
  }
  Dims shape(dims.begin(), dims.end());
  shape[0] = static_cast<int64_t>((last - first) / row);
  return shape;
}

py::tuple ToTuple(const Dims& dims) {
  py::tuple out(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) out[i] = py::int_(dims[i]);
  return out;
}

const PyTensor& AsTensor(py::handle h) {
  py::detail::make_caster<PyTensor> caster;
  if (!caster.load(h, /*convert=*/false)) {
    throw py::type_error(absl::StrCat(
        "tensor must be a strata.Tensor, not ",
        py::repr(py::type::handle_of(h)).cast<std::string>()));
  }
  return py::detail::cast_op<const PyTensor&>(caster);
}

PyPin PinBlock(const EngineRef& engine, py::object tensor_obj,
               const PyTensor& tensor, py::handle block, py::handle tier,
               py::handle access) {
  const uint64_t b = ParseIndex(block, "block");
  const Tier t = ParseTier(tier, "tier");
  const Access a = ParseAccess(access);
  if (t == Tier::kGpu) {
    ThrowUnimplemented(
        "tier=\"gpu\" pins are not available from Python yet: CUDA DLPack "
        "views come with the GPU tier (issue #4); pin in tier=\"host\"");
  }
  const Tensor& handle = tensor.tensor;
  auto state = std::make_shared<PinState>();
  state->engine = engine;
  // A resident block is pinned with the GIL held (a load and a CAS; giving
  // the GIL up and taking it back cost more than the pin); only a pin that
  // may wait (a load, a conflicting pin) lets other threads run.
  absl::StatusOr<std::optional<strata::Pin>> hit =
      engine->engine->TryPin(handle, b, t, a);
  if (hit.ok() && hit->has_value()) {
    state->pin = std::move(**hit);
  } else {
    absl::StatusOr<strata::Pin> pin;
    if (!hit.ok()) {
      pin = std::move(hit).status();
    } else {
      py::gil_scoped_release release;
      pin = engine->engine->Pin(handle, b, t, a);
    }
    state->pin = ValueOrThrow(std::move(pin));
  }
  PyPin out;
  out.nbytes = state->pin.bytes().size();
  out.state = std::move(state);
  out.tensor = std::move(tensor_obj);
  out.tensor_ = &tensor;
  out.block = b;
  out.access = a;
  out.tier = t;
  return out;
}

void BindPin(py::module_& m) {
  py::class_<PyPin>(m, "Pin")
      .def("__dlpack__", &ToDLPack, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const PyPin& self) {
        self.Live("__dlpack_device__");
        return py::make_tuple(static_cast<int>(kDLCPU), 0);
      })
      .def("numpy", &ToNumPy,
           "A NumPy view of the block: writable for write pins, read-only "
           "for read pins; it keeps the block pinned while it lives.")
      .def("release", &Release,
           "Ends this pin; the block is unpinned once no view of it is left. "
           "A second call raises FailedPreconditionError.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyPin& self, py::args) { self.state.reset(); })
      .def_property_readonly("released", [](const PyPin& p) { return !p.state; })
      .def_property_readonly("block", [](const PyPin& p) { return p.block; })
      .def_property_readonly("nbytes", [](const PyPin& p) { return p.nbytes; })
      .def_property_readonly("tensor", [](const PyPin& p) { return p.tensor; })
      .def_property_readonly("tier", [](const PyPin& p) {
        return std::string(TierName(p.tier));
      })
      .def_property_readonly("access", [](const PyPin& p) {
        return std::string(AccessName(p.access));
      })
      .def("__repr__", &Repr);
}

}  // namespace strata::python
