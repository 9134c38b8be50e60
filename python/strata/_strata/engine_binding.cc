// strata._strata._Engine, Tensor and PrefetchHandle: keyword options →
// EngineOptions, the engine's calls (the blocking ones without the GIL), and
// stats() as a dict. The pure-Python strata.Engine subclasses _Engine.
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bindings.h"
#include "engine/testing.h"
#include "convert.h"
#include "errors.h"

namespace py = pybind11;

namespace strata::python {
namespace {

[[noreturn]] void BadOption(const std::string& key, const std::string& what) {
  ThrowInvalid(absl::StrCat("Engine keyword '", key, "' ", what));
}

uint64_t OptU64(py::handle v, const std::string& key) {
  if (!PyLong_Check(v.ptr()) || PyBool_Check(v.ptr())) {
    BadOption(key, "must be an int (bytes or a count)");
  }
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow != 0 || x < 0) {
    BadOption(key, absl::StrCat("is ", py::str(v).cast<std::string>(),
                                "; it must be in 0..2**63-1"));
  }
  return static_cast<uint64_t>(x);
}

int OptInt(py::handle v, const std::string& key) {
  if (!PyLong_Check(v.ptr()) || PyBool_Check(v.ptr())) {
    BadOption(key, "must be an int");
  }
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow != 0 || x < std::numeric_limits<int>::min() ||
      x > std::numeric_limits<int>::max()) {
    BadOption(key, "is out of range for an int");
  }
  return static_cast<int>(x);
}

bool OptBool(py::handle v, const std::string& key) {
  if (!PyBool_Check(v.ptr())) BadOption(key, "must be True or False");
  return v.ptr() == Py_True;
}

std::string OptPath(py::handle v, const std::string& key) {
  py::object path;
  try {
    path = py::module_::import("os").attr("fspath")(v);
  } catch (const py::error_already_set&) {
    BadOption(key, "must be a str or os.PathLike naming a directory");
  }
  if (!PyUnicode_Check(path.ptr())) BadOption(key, "must be a str path");
  return path.cast<std::string>();
}

// An int or float (not a bool) as a double; BadOption with `what` else.
double OptNumber(py::handle v, const std::string& key, const char* what) {
  if (PyBool_Check(v.ptr()) ||
      !(PyLong_Check(v.ptr()) || PyFloat_Check(v.ptr()))) {
    BadOption(key, what);
  }
  const double x = PyFloat_AsDouble(v.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    BadOption(key, what);
  }
  return x;
}

absl::Duration OptSeconds(py::handle v, const std::string& key) {
  const double s = OptNumber(v, key, "must be a number of seconds");
  if (!std::isfinite(s) || s <= 0 || s > 1e9) {
    BadOption(key, "must be a positive, finite number of seconds");
  }
  return absl::Seconds(s);
}

double OptFraction(py::handle v, const std::string& key) {
  // Engine.Open checks the range and names the keyword.
  return OptNumber(v, key, "must be a number in (0, 1]");
}

std::vector<Tier> OptTiers(py::handle v, const std::string& key) {
  if (PyUnicode_Check(v.ptr()) || !PySequence_Check(v.ptr())) {
    BadOption(key, "must be a sequence of tier names, e.g. (\"host\", \"nvme\")");
  }
  std::vector<Tier> tiers;
  for (py::handle item : py::reinterpret_borrow<py::sequence>(v)) {
    tiers.push_back(ParseTier(item, "Engine keyword 'tiers': entry"));
  }
  return tiers;
}

// Each keyword of strata.Engine, the EngineOptions field its errors name,
// and how it sets the options.
struct Keyword {
  const char* name;
  const char* field;
  void (*set)(EngineOptions&, py::handle, const std::string&);
};
const Keyword kKeywords[] = {
    {"tiers", "tiers",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.tiers = OptTiers(v, k); }},
    {"host_bytes", "host.capacity_bytes",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.host.capacity_bytes = OptU64(v, k); }},
    {"numa_node", "host.numa_node",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.host.numa_node = OptInt(v, k); }},
    {"huge_pages", "host.huge_pages",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.host.huge_pages = OptBool(v, k); }},
    {"nvme_path", "nvme.path",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.nvme.path = OptPath(v, k); }},
    {"nvme_bytes", "nvme.capacity_bytes",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.nvme.capacity_bytes = OptU64(v, k); }},
    {"queue_depth", "nvme.queue_depth",
     [](EngineOptions& o, py::handle v, const std::string& k) {
       const uint64_t q = OptU64(v, k);
       if (q > 4096) BadOption(k, absl::StrCat("is ", q, "; it must be in 1..4096"));
       o.nvme.queue_depth = static_cast<uint32_t>(q);
     }},
    {"register_buffers", "nvme.register_buffers",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.nvme.register_buffers = OptBool(v, k); }},
    {"gpu_bytes", "gpu.capacity_bytes",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.gpu.capacity_bytes = OptU64(v, k); }},
    {"gpu_fraction", "gpu.capacity_fraction",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.gpu.capacity_fraction = OptFraction(v, k); }},
    {"gpu_device", "gpu.device",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.gpu.device = OptInt(v, k); }},
    {"block_bytes", "default_block_bytes",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.default_block_bytes = OptU64(v, k); }},
    {"readahead_blocks", "readahead_blocks",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.readahead_blocks = OptInt(v, k); }},
    {"policy", "policy",
     [](EngineOptions& o, py::handle v, const std::string& k) {
       if (!PyUnicode_Check(v.ptr())) BadOption(k, "must be a str, e.g. \"lru\"");
       o.policy = v.cast<std::string>();
     }},
    {"pin_wait_timeout", "pin_wait_timeout",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.pin_wait_timeout = OptSeconds(v, k); }},
    {"io_timeout", "io_timeout",
     [](EngineOptions& o, py::handle v, const std::string& k) { o.io_timeout = OptSeconds(v, k); }},
};

// The private keyword of the python suite's device double (see
// GpuDeviceOf).
constexpr char kTestGpuDevice[] = "_gpu_device";

EngineOptions ParseOptions(const py::kwargs& kwargs) {
  EngineOptions options;
  for (auto [key_obj, value] : kwargs) {
    const std::string key = py::str(key_obj).cast<std::string>();
    if (key == kTestGpuDevice) continue;
    const Keyword* found = nullptr;
    for (const Keyword& k : kKeywords) {
      if (key == k.name) found = &k;
    }
    if (found == nullptr) {
      std::vector<std::string> names;
      for (const Keyword& k : kKeywords) names.emplace_back(k.name);
      ThrowInvalid(absl::StrCat("Engine keyword '", key, "' is unknown; use ",
                                absl::StrJoin(names, ", ")));
    }
    found->set(options, value, key);
  }
  return options;
}

// Open's errors name EngineOptions fields; say which keyword that is.
absl::Status NameKeyword(absl::Status status) {
  if (status.code() != absl::StatusCode::kInvalidArgument) return status;
  const std::string message(status.message());
  size_t best = std::string::npos;
  const Keyword* which = nullptr;
  for (const Keyword& k : kKeywords) {
    const size_t at = message.find(absl::StrCat("EngineOptions::", k.field));
    if (at != std::string::npos && (best == std::string::npos || at < best)) {
      best = at;
      which = &k;
    }
  }
  if (which == nullptr) return status;
  return absl::InvalidArgumentError(
      absl::StrCat("Engine keyword '", which->name, "': ", message));
}

}  // namespace

// The Python _Engine: the shared holder of the engine.
struct PyEngine {
  EngineRef ref;

  Engine& engine() const { return *ref->engine; }
  const PyTensor& Own(const PyTensor& t) const {
    if (t.engine.get() != ref.get()) {
      ThrowInvalid(absl::StrCat("tensor '", t.tensor.name(),
                                "' belongs to another engine"));
    }
    return t;
  }
};

namespace {

// engine.pin(tensor, block, tier="host", access="r", wait=True), a METH_FASTCALL C
// function on _Engine rather than a pybind11 method: its dispatcher (the
// argument casters, a lookup of each C++ type by name) cost more than the
// pin itself (docs/PERFORMANCE.md, "Python"). The method descriptor makes
// sure `self` is an _Engine; the PyEngine inside is found through its
// pybind11 type_info, looked up once.
constexpr const char* kPinArgs[] = {"tensor", "block", "tier", "access", "wait"};
constexpr int kPinArgCount = 5;

PyObject* EnginePin(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                    PyObject* kwnames) {
  static py::detail::type_info* const engine_type =
      py::detail::get_type_info(typeid(PyEngine));
  static PyObject* const default_tier = PyUnicode_InternFromString("host");
  static PyObject* const default_access = PyUnicode_InternFromString("r");
  PyObject* values[kPinArgCount] = {nullptr, nullptr, default_tier, default_access,
                                    Py_True};
  bool given[kPinArgCount] = {};
  if (nargs > kPinArgCount) {
    PyErr_Format(PyExc_TypeError,
                 "pin() takes at most %d arguments (%zd given)", kPinArgCount, nargs);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    values[i] = args[i];
    given[i] = true;
  }
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t k = 0; k < nkw; ++k) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, k);
    int i = 0;
    while (i < kPinArgCount && PyUnicode_CompareWithASCIIString(name, kPinArgs[i]) != 0) ++i;
    if (i == kPinArgCount) {
      PyErr_Format(PyExc_TypeError,
                   "pin() got an unexpected keyword argument '%U'", name);
      return nullptr;
    }
    if (given[i]) {
      PyErr_Format(PyExc_TypeError, "pin() got multiple values for argument '%s'",
                   kPinArgs[i]);
      return nullptr;
    }
    values[i] = args[nargs + k];
    given[i] = true;
  }
  for (int i = 0; i < 2; ++i) {
    if (!given[i]) {
      PyErr_Format(PyExc_TypeError, "pin() missing required argument '%s'",
                   kPinArgs[i]);
      return nullptr;
    }
  }
  try {
    py::detail::value_and_holder vh =
        reinterpret_cast<py::detail::instance*>(self)->get_value_and_holder(
            engine_type, /*throw_if_missing=*/false);
    if (!vh || !vh.holder_constructed()) {
      PyErr_SetString(PyExc_TypeError,
                      "pin(): the engine was not initialized (call "
                      "_Engine.__init__)");
      return nullptr;
    }
    const PyEngine& engine = *vh.value_ptr<PyEngine>();
    py::handle tensor(values[0]);
    const PyTensor& t = engine.Own(AsTensor(tensor));
    return PinBlock(engine.ref, py::reinterpret_borrow<py::object>(tensor), t,
                    values[1], values[2], values[3], values[4])
        .release()
        .ptr();
  } catch (...) {
    return SetCurrentError();
  }
}

PyMethodDef engine_pin_def = {
    "pin",
    reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&EnginePin)),
    METH_FASTCALL | METH_KEYWORDS,
    "pin(tensor, block, tier=\"host\", access=\"r\")\n"
    "Pins `block` of `tensor` in `tier` (\"host\"), loading it if needed "
    "(without the GIL). access: \"r\" (shared), \"w\" (exclusive, marks "
    "it dirty) or \"overwrite\" (\"w\" without loading the old bytes). "
    "torch.from_dlpack(pin) / numpy.from_dlpack(pin) / pin.numpy() view it."};

// A test seam, as engine/testing.h is for C++: `_gpu_device=` takes a
// capsule "strata._gpu_device" holding a std::shared_ptr<tiers::GpuDevice>
// (the python suite's module _strata_fake_gpu makes one over the device
// double), and the GPU tier is built over that device instead of CUDA's, so
// GPU pins and their views are tested on machines without a GPU.
std::shared_ptr<tiers::GpuDevice> GpuDeviceOf(const py::kwargs& kwargs) {
  if (!kwargs.contains(kTestGpuDevice)) return nullptr;
  py::object capsule = kwargs[kTestGpuDevice];
  auto* device = static_cast<std::shared_ptr<tiers::GpuDevice>*>(
      PyCapsule_GetPointer(capsule.ptr(), "strata._gpu_device"));
  if (device == nullptr) {
    PyErr_Clear();
    ThrowInvalid("Engine keyword '_gpu_device' is for Strata's own tests: it "
                 "takes the capsule of strata's test device double only");
  }
  return *device;
}

PyEngine OpenEngine(const py::kwargs& kwargs) {
  EngineOptions options = ParseOptions(kwargs);
  internal::TierOverrides overrides;
  overrides.gpu_device = GpuDeviceOf(kwargs);
  auto holder = std::make_shared<EngineHolder>();
  holder->gpu_device = options.gpu.device;
  absl::StatusOr<std::unique_ptr<Engine>> engine;
  {
    py::gil_scoped_release release;
    engine = overrides.gpu_device == nullptr
                 ? Engine::Open(std::move(options))
                 : testing::OpenWithTiers(std::move(options), std::move(overrides));
  }
  if (!engine.ok()) throw StatusError(NameKeyword(engine.status()));
  holder->engine = *std::move(engine);
  return PyEngine{std::move(holder)};
}

std::vector<int64_t> ParseShape(py::handle shape) {
  if (!PySequence_Check(shape.ptr()) || PyUnicode_Check(shape.ptr())) {
    ThrowInvalid("shape must be a sequence of ints, e.g. (1024, 1024)");
  }
  std::vector<int64_t> dims;
  for (py::handle d : py::reinterpret_borrow<py::sequence>(shape)) {
    int overflow = 0;
    long long v = 0;
    if (PyLong_Check(d.ptr()) && !PyBool_Check(d.ptr())) {
      v = PyLong_AsLongLongAndOverflow(d.ptr(), &overflow);
    }
    if (!PyLong_Check(d.ptr()) || PyBool_Check(d.ptr()) || overflow != 0) {
      ThrowInvalid(absl::StrCat("shape entry ", py::repr(d).cast<std::string>(),
                                " is not an int of 64 bits"));
    }
    dims.push_back(v);
  }
  return dims;
}

PyTensor CreateTensor(const PyEngine& self, const std::string& name,
                      py::handle dtype, py::handle shape,
                      py::handle block_bytes) {
  TensorSpec spec;
  spec.dtype = ParseDType(dtype);
  spec.shape = ParseShape(shape);
  spec.block_bytes = ParseSize(block_bytes, "block_bytes");
  return PyTensor{self.ref, ValueOrThrow(self.engine().CreateTensor(name, spec))};
}

void DropTensor(const PyEngine& self, const PyTensor& tensor) {
  self.Own(tensor);
  absl::Status status;
  {
    py::gil_scoped_release release;
    status = self.engine().DropTensor(tensor.tensor);
  }
  ThrowIfError(status);
}

void Flush(const PyEngine& self, const PyTensor* tensor) {
  if (tensor != nullptr) self.Own(*tensor);
  absl::Status status;
  {
    py::gil_scoped_release release;
    status = tensor == nullptr ? self.engine().FlushAll()
                               : self.engine().Flush(tensor->tensor);
  }
  ThrowIfError(status);
}

// A call with no arguments but the engine, made without the GIL.
template <absl::Status (Engine::*Call)()>
void Blocking(const PyEngine& self) {
  absl::Status status;
  {
    py::gil_scoped_release release;
    status = (self.engine().*Call)();
  }
  ThrowIfError(status);
}

struct PyPrefetch {
  EngineRef engine;
  PrefetchHandle handle;
};

PyPrefetch Prefetch(const PyEngine& self, const PyTensor& tensor,
                    py::handle begin, py::handle end, py::handle tier) {
  self.Own(tensor);
  BlockRange range;
  range.begin = ParseIndex(begin, "prefetch start");
  if (!end.is_none()) range.end = ParseIndex(end, "prefetch stop");
  const Tier t = ParseTier(tier, "tier");
  return PyPrefetch{self.ref, ValueOrThrow(self.engine().Prefetch(
                                  tensor.tensor, range, t))};
}

PyPrefetch PrefetchBlocks(const PyEngine& self, const PyTensor& tensor,
                          py::iterable blocks, py::handle tier) {
  self.Own(tensor);
  std::vector<uint64_t> list;
  for (py::handle b : blocks) list.push_back(ParseIndex(b, "prefetch block"));
  const Tier t = ParseTier(tier, "tier");
  return PyPrefetch{self.ref, ValueOrThrow(self.engine().PrefetchBlocks(
                                  tensor.tensor, list, t))};
}

py::dict Latency(const LatencySummary& l) {
  py::dict d;
  d["samples"] = l.samples;
  d["p50_us"] = l.p50_us;
  d["p90_us"] = l.p90_us;
  d["p99_us"] = l.p99_us;
  d["max_us"] = l.max_us;
  return d;
}

py::dict Stats(const PyEngine& self) {
  const EngineStats stats = self.engine().GetStats();
  py::dict out;
  for (const TierStats& t : stats.tiers) {
    if (!t.present) continue;
    py::dict d;
    d["capacity_bytes"] = t.capacity_bytes;
    d["used_bytes"] = t.used_bytes;
    d["pinned_bytes"] = t.pinned_bytes;
    d["hits"] = t.hits;
    d["misses"] = t.misses;
    d["bytes_in"] = t.bytes_in;
    d["bytes_out"] = t.bytes_out;
    d["evictions"] = t.evictions;
    d["write_backs"] = t.write_backs;
    d["errors"] = t.errors;
    d["speculative_errors"] = t.speculative_errors;
    d["write_backs_in_flight"] = t.write_backs_in_flight;
    out[py::str(std::string(TierName(t.tier)))] = d;
  }
  out["pin_hit_latency"] = Latency(stats.pin_hit_latency);
  out["pin_miss_latency"] = Latency(stats.pin_miss_latency);
  return out;
}

uint64_t CheckBlock(const PyTensor& t, py::handle block) {
  const uint64_t b = ParseIndex(block, "block");
  if (b >= t.tensor.num_blocks()) {
    ThrowOutOfRange(absl::StrCat("block ", b, " of tensor '", t.tensor.name(),
                                 "' is out of range; it has ",
                                 t.tensor.num_blocks(), " blocks"));
  }
  return b;
}

void BindTensor(py::module_& m) {
  py::class_<PyTensor>(m, "Tensor")
      .def_property_readonly("name", [](const PyTensor& t) { return t.tensor.name(); })
      .def_property_readonly("dtype", [](const PyTensor& t) {
        return std::string(DTypeName(t.tensor.spec().dtype));
      })
      .def_property_readonly("shape", [](const PyTensor& t) {
        return py::tuple(py::cast(t.tensor.spec().shape));
      })
      .def_property_readonly("itemsize", [](const PyTensor& t) {
        return DTypeSize(t.tensor.spec().dtype);
      })
      .def_property_readonly("block_bytes", [](const PyTensor& t) { return t.tensor.block_bytes(); })
      .def_property_readonly("nbytes", [](const PyTensor& t) { return t.tensor.size_bytes(); })
      .def_property_readonly("num_blocks", [](const PyTensor& t) { return t.tensor.num_blocks(); })
      .def("__len__", [](const PyTensor& t) { return t.tensor.num_blocks(); })
      .def("block_range", [](const PyTensor& t, py::handle block) {
        auto [first, last] = BlockElements(t.tensor, CheckBlock(t, block));
        return py::make_tuple(first, last);
      }, py::arg("block"))
      .def("block_shape", [](const PyTensor& t, py::handle block) {
        return ToTuple(BlockShape(t.tensor, CheckBlock(t, block)));
      }, py::arg("block"))
      .def("__repr__", [](const PyTensor& t) {
        return absl::StrCat("<strata.Tensor '", t.tensor.name(), "' ",
                            std::string(DTypeName(t.tensor.spec().dtype)), " (",
                            absl::StrJoin(t.tensor.spec().shape, ", "), "), ",
                            t.tensor.num_blocks(), " blocks of ",
                            t.tensor.block_bytes(), " bytes>");
      });
}

}  // namespace

void BindEngine(py::module_& m) {
  BindTensor(m);
  py::class_<PyPrefetch>(m, "PrefetchHandle")
      .def("wait", [](const PyPrefetch& p) {
        absl::Status status;
        {
          py::gil_scoped_release release;
          status = p.handle.Wait();
        }
        ThrowIfError(status);
      })
      .def_property_readonly("done", [](const PyPrefetch& p) { return p.handle.done(); });

  py::class_<PyEngine> engine(m, "_Engine");
  engine.def(py::init(&OpenEngine))
      .def("_create_tensor", &CreateTensor, py::arg("name"), py::arg("dtype"),
           py::arg("shape"), py::arg("block_bytes") = 0)
      .def("open_tensor", [](const PyEngine& self, const std::string& name) {
        return PyTensor{self.ref, ValueOrThrow(self.engine().OpenTensor(name))};
      }, py::arg("name"), "The tensor named `name` (NotFoundError if none).")
      .def("drop_tensor", &DropTensor, py::arg("tensor"),
           "Forgets the tensor and frees its blocks in every tier. "
           "FailedPreconditionError while a block is pinned or viewed.")
      .def("_prefetch", &Prefetch)
      .def("_prefetch_blocks", &PrefetchBlocks)
      .def("flush", &Flush, py::arg("tensor") = nullptr,
           "Writes the dirty blocks of `tensor` (None: of every tensor) to the "
           "lowest tier and waits; returns background write-back errors once.")
      .def("begin_step", &Blocking<&Engine::BeginStep>)
      .def("end_step", &Blocking<&Engine::EndStep>)
      .def("stats", &Stats,
           "Per tier present (\"host\", \"nvme\"): capacity, used and pinned "
           "bytes, hits, misses, bytes in/out, evictions, write-backs, errors; "
           "and pin hit/miss latency summaries.")
      .def("close", &Blocking<&Engine::Close>,
           "Closes the engine; later calls raise FailedPreconditionError. "
           "Refused (FailedPreconditionError) while a pin or view lives.");
  PyObject* pin = PyDescr_NewMethod(
      reinterpret_cast<PyTypeObject*>(engine.ptr()), &engine_pin_def);
  if (pin == nullptr) throw py::error_already_set();
  engine.attr("pin") = py::reinterpret_steal<py::object>(pin);
}

}  // namespace strata::python
