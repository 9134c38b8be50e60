// strata._strata.Pin: pinning a block (without the GIL when it may wait),
// the DLPack protocol (__dlpack__, __dlpack_device__) that torch.from_dlpack
// and numpy.from_dlpack use, and Pin.numpy(), a NumPy view that is read-only
// for read pins. Every view holds the PinState; see bindings.h for lifetimes.
// A GPU pin's view is CUDA memory (kDLCUDA): __dlpack__(stream=s) makes the
// consumer's stream s wait for the block's bytes, and the pin ends after the
// work on every such stream (PinState).
//
// Pin is a hand-written CPython type, not a pybind11 class: a pin and its
// view are a handful of calls per block, and pybind11's dispatcher (argument
// casters, a type lookup per argument and result) cost more than the engine's
// pin and NumPy's own DLPack methods together (docs/PERFORMANCE.md,
// "Python"). Its methods are METH_NOARGS / METH_FASTCALL C functions; errors
// are set with SetError (errors.h) rather than thrown through pybind11.
#include <algorithm>
#include <cstddef>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "absl/base/optimization.h"
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

// A new "dltensor" capsule owning a DLPackView of the pin's block.
PyObject* ToDLPack(const PyPin& self, PinState& state) {
  const Tensor& tensor = TensorOf(self).tensor;
  auto view = std::make_unique<DLPackView>();
  view->state = self.state;
  view->shape = BlockShape(tensor, self.block);
  view->strides = RowMajorStrides(view->shape);
  DLTensor& t = view->managed.dl_tensor;
  t.data = state.pin.bytes().data();
  t.device = self.tier == Tier::kGpu
                 ? DLDevice{kDLCUDA, state.engine->gpu_device}
                 : DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(view->shape.size());
  t.dtype = ToDLDataType(tensor.spec().dtype);
  t.shape = view->shape.data();
  t.strides = view->strides.data();
  t.byte_offset = 0;
  view->managed.manager_ctx = view.get();
  view->managed.deleter = &DeleteView;
  PyObject* capsule =
      PyCapsule_New(&view->managed, "dltensor", &DestroyCapsule);
  // From here the capsule owns the view (DestroyCapsule).
  if (capsule != nullptr) view.release();
  return capsule;
}

py::array ToNumPy(const PyPin& self) {
  const PinState& state = self.Live("numpy()");
  const Tensor& tensor = TensorOf(self).tensor;
  if (self.tier == Tier::kGpu) {
    ThrowInvalid(absl::StrCat("block ", self.block, " of '", tensor.name(),
                              "' is pinned in GPU memory, which NumPy cannot "
                              "view: use torch.from_dlpack(pin), or pin it "
                              "with tier=\"host\""));
  }
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

// An isinstance check and the value of the pybind11 instance, with the
// type_info looked up once: pybind11's caster looks it up by the C++ type's
// name on every call.
const PyTensor& AsTensor(py::handle h) {
  static py::detail::type_info* const tensor_type =
      py::detail::get_type_info(typeid(PyTensor));
  if (PyObject_TypeCheck(h.ptr(), tensor_type->type)) {
    py::detail::value_and_holder vh =
        reinterpret_cast<py::detail::instance*>(h.ptr())->get_value_and_holder(
            tensor_type, /*throw_if_missing=*/false);
    if (vh && vh.holder_constructed()) return *vh.value_ptr<PyTensor>();
  }
  throw py::type_error(absl::StrCat(
      "tensor must be a strata.Tensor, not ",
      py::repr(py::type::handle_of(h)).cast<std::string>()));
}

namespace {

struct PinObject {
  PyObject_HEAD
  PyPin pin;
  PyObject* weakrefs;  // tp_weaklistoffset, as pybind11 instances have
};

PyPin& Self(PyObject* self) { return reinterpret_cast<PinObject*>(self)->pin; }

// The pin's state, or nullptr with FailedPreconditionError set (as Live).
PinState* LiveOrSetError(PyObject* self, const char* what) {
  PyPin& pin = Self(self);
  if (ABSL_PREDICT_TRUE(pin.state != nullptr)) return pin.state.get();
  try {
    pin.Live(what);
  } catch (...) {
    SetCurrentError();
  }
  return nullptr;
}

// (kDLCPU, 0): every host pin's __dlpack_device__, made once.
PyObject* cpu_device = nullptr;

// A GPU pin's __dlpack__(stream): the consumer's CUDA stream, as DLPack
// passes it (None and 1: the legacy default stream; 2: the per-thread default
// stream; another positive int: a cudaStream_t; -1: the consumer
// synchronizes itself), waits on the device for the block's bytes, and the
// pin will end only after the work enqueued on it. False with the error set.
bool OrderAfterCopy(PinState& state, PyObject* stream) {
  constexpr intptr_t kLegacyDefaultStream = 1;  // cudaStreamLegacy
  intptr_t value = kLegacyDefaultStream;
  if (stream != Py_None) {
    if (!PyLong_Check(stream) || PyBool_Check(stream)) {
      PyErr_Format(PyExc_TypeError,
                   "__dlpack__(stream=...) takes an int (a cudaStream_t, 1 "
                   "or 2 for the default streams, -1 for none) or None, not %s",
                   Py_TYPE(stream)->tp_name);
      return false;
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(stream, &overflow);
    if (overflow != 0 || v == 0 || v < -1) {
      SetError(absl::InvalidArgumentError(absl::StrCat(
          "__dlpack__(stream=", overflow != 0 ? "<out of range>" : absl::StrCat(v),
          ") of a GPU pin: DLPack forbids 0 (ambiguous) and negative streams "
          "other than -1; pass 1 (legacy default stream), 2 (per-thread "
          "default stream), a cudaStream_t as an int, or -1 to order the work "
          "yourself")));
      return false;
    }
    if (v == -1) return true;
    value = static_cast<intptr_t>(v);
  }
  const GpuStream s = reinterpret_cast<GpuStream>(value);
  if (absl::Status st = state.pin.WaitOn(s); !st.ok()) {
    SetError(st);
    return false;
  }
  auto& after = state.release_after;
  if (std::find(after.begin(), after.end(), s) == after.end()) after.push_back(s);
  return true;
}

PyObject* PinDLPack(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                    PyObject* kwnames) {
  PyObject* stream = Py_None;
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  if (nargs > 1 || nargs + nkw > 1) {
    PyErr_SetString(PyExc_TypeError,
                    "__dlpack__() takes at most one argument (stream)");
    return nullptr;
  }
  if (nargs == 1) stream = args[0];
  if (nkw == 1) {
    if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                         "stream") != 0) {
      PyErr_Format(PyExc_TypeError,
                   "__dlpack__() got an unexpected keyword argument '%U'",
                   PyTuple_GET_ITEM(kwnames, 0));
      return nullptr;
    }
    stream = args[0];
  }
  PinState* state = LiveOrSetError(self, "__dlpack__");
  if (state == nullptr) return nullptr;
  if (Self(self).tier == Tier::kGpu) {
    if (!OrderAfterCopy(*state, stream)) return nullptr;
  } else if (stream != Py_None) {
    SetError(absl::InvalidArgumentError(
        "__dlpack__(stream=...) of a host pin takes stream=None; host memory "
        "has no stream to synchronize with"));
    return nullptr;
  }
  try {
    return ToDLPack(Self(self), *state);
  } catch (...) {
    return SetCurrentError();
  }
}

PyObject* PinDLPackDevice(PyObject* self, PyObject*) {
  PinState* state = LiveOrSetError(self, "__dlpack_device__");
  if (state == nullptr) return nullptr;
  if (Self(self).tier == Tier::kGpu) {
    return Py_BuildValue("(ii)", static_cast<int>(kDLCUDA),
                         state->engine->gpu_device);
  }
  Py_INCREF(cpu_device);
  return cpu_device;
}

PyObject* PinNumPy(PyObject* self, PyObject*) {
  try {
    return ToNumPy(Self(self)).release().ptr();
  } catch (...) {
    return SetCurrentError();
  }
}

// Blocks (without the GIL) until a GPU pin's copy into VRAM finished, and
// raises its error; at once for other pins (their bytes are there).
PyObject* PinSynchronize(PyObject* self, PyObject*) {
  if (LiveOrSetError(self, "synchronize()") == nullptr) return nullptr;
  if (Self(self).tier != Tier::kGpu) Py_RETURN_NONE;
  // Another thread may release the pin while this one waits without the
  // GIL: the wait holds the state itself.
  const std::shared_ptr<PinState> keep = Self(self).state;
  absl::Status s;
  Py_BEGIN_ALLOW_THREADS
  s = keep->pin.Synchronize();
  Py_END_ALLOW_THREADS
  if (!s.ok()) {
    SetError(s);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* PinRelease(PyObject* self, PyObject*) {
  if (LiveOrSetError(self, "release()") == nullptr) return nullptr;
  Self(self).state.reset();  // unpins now unless a view still holds the block
  Py_RETURN_NONE;
}

PyObject* PinEnter(PyObject* self, PyObject*) {
  Py_INCREF(self);
  return self;
}

// Ends the pin whatever happened in the block, released or not; returns
// None, so an exception goes on.
PyObject* PinExit(PyObject* self, PyObject* const*, Py_ssize_t) {
  Self(self).state.reset();
  Py_RETURN_NONE;
}

PyObject* PinReleased(PyObject* self, void*) {
  return PyBool_FromLong(Self(self).state == nullptr);
}
PyObject* PinBlockIndex(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(Self(self).block);
}
PyObject* PinNBytes(PyObject* self, void*) {
  return PyLong_FromSize_t(Self(self).nbytes);
}
PyObject* PinTensor(PyObject* self, void*) {
  return Self(self).tensor.inc_ref().ptr();
}
PyObject* Str(std::string_view s) {
  return PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
}
PyObject* PinTier(PyObject* self, void*) { return Str(TierName(Self(self).tier)); }
PyObject* PinAccess(PyObject* self, void*) {
  return Str(AccessName(Self(self).access));
}
PyObject* PinRepr(PyObject* self) {
  try {
    return Str(Repr(Self(self)));
  } catch (...) {
    return SetCurrentError();
  }
}

void PinDealloc(PyObject* self) {
  auto* obj = reinterpret_cast<PinObject*>(self);
  if (obj->weakrefs != nullptr) PyObject_ClearWeakRefs(self);
  obj->pin.~PyPin();  // unpins unless a view still holds the block
  Py_TYPE(self)->tp_free(self);
}

PyMethodDef pin_methods[] = {
    {"__dlpack__", reinterpret_cast<PyCFunction>(
                       reinterpret_cast<void (*)()>(&PinDLPack)),
     METH_FASTCALL | METH_KEYWORDS,
     "__dlpack__(stream=None): a DLPack capsule viewing the block. For a GPU "
     "pin, `stream` (a cudaStream_t as an int; None or 1: the legacy default "
     "stream; 2: the per-thread one; -1: none) waits for the block's bytes, "
     "and the pin ends only after the work enqueued on it."},
    {"__dlpack_device__", &PinDLPackDevice, METH_NOARGS,
     "(kDLCPU, 0) for host memory, (kDLCUDA, device) for a GPU pin."},
    {"numpy", &PinNumPy, METH_NOARGS,
     "A NumPy view of the block: writable for write pins, read-only for read "
     "pins; it keeps the block pinned while it lives. Host pins only."},
    {"synchronize", &PinSynchronize, METH_NOARGS,
     "Waits until a GPU pin's copy into VRAM finished (a pin made with "
     "wait=False) and raises its error; returns at once for other pins."},
    {"release", &PinRelease, METH_NOARGS,
     "Ends this pin; the block is unpinned once no view of it is left. A "
     "second call raises FailedPreconditionError."},
    {"__enter__", &PinEnter, METH_NOARGS, nullptr},
    {"__exit__", reinterpret_cast<PyCFunction>(
                     reinterpret_cast<void (*)()>(&PinExit)),
     METH_FASTCALL, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef pin_getset[] = {
    {"released", &PinReleased, nullptr, nullptr, nullptr},
    {"block", &PinBlockIndex, nullptr, nullptr, nullptr},
    {"nbytes", &PinNBytes, nullptr, nullptr, nullptr},
    {"tensor", &PinTensor, nullptr, nullptr, nullptr},
    {"tier", &PinTier, nullptr, nullptr, nullptr},
    {"access", &PinAccess, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

// No tp_new: Python cannot make a Pin (TypeError), only engine.pin().
PyTypeObject pin_type = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "strata._strata.Pin";
  t.tp_basicsize = sizeof(PinObject);
  t.tp_dealloc = &PinDealloc;
  t.tp_repr = &PinRepr;
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  t.tp_doc = "A pinned block: view it with torch.from_dlpack(pin), "
             "numpy.from_dlpack(pin) or pin.numpy(); release() or a with "
             "block ends it.";
  t.tp_weaklistoffset = offsetof(PinObject, weakrefs);
  t.tp_methods = pin_methods;
  t.tp_getset = pin_getset;
  return t;
}();

}  // namespace

py::object PinBlock(const EngineRef& engine, py::object tensor_obj,
                    const PyTensor& tensor, py::handle block, py::handle tier,
                    py::handle access, py::handle wait) {
  const uint64_t b = ParseIndex(block, "block");
  const Tier t = ParseTier(tier, "tier");
  const Access a = ParseAccess(access);
  if (!PyBool_Check(wait.ptr())) {
    throw py::type_error("pin(): wait must be True or False");
  }
  const bool async = wait.ptr() == Py_False;
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
      pin = async ? engine->engine->PinAsync(handle, b, t, a)
                  : engine->engine->Pin(handle, b, t, a);
    }
    state->pin = ValueOrThrow(std::move(pin));
  }
  auto* obj = PyObject_New(PinObject, &pin_type);
  if (obj == nullptr) throw py::error_already_set();
  obj->weakrefs = nullptr;
  PyPin* out = new (&obj->pin) PyPin;
  out->nbytes = state->pin.bytes().size();
  out->state = std::move(state);
  out->tensor = std::move(tensor_obj);
  out->tensor_ = &tensor;
  out->block = b;
  out->access = a;
  out->tier = t;
  return py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(obj));
}

void BindPin(py::module_& m) {
  if (PyType_Ready(&pin_type) < 0) throw py::error_already_set();
  cpu_device = py::make_tuple(static_cast<int>(kDLCPU), 0).release().ptr();
  Py_INCREF(&pin_type);
  m.attr("Pin") = py::reinterpret_steal<py::object>(
      reinterpret_cast<PyObject*>(&pin_type));
}

}  // namespace strata::python
