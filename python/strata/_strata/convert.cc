// Python values ↔ Strata's enums (see convert.h).
#include "convert.h"

#include <array>
#include <string>

#include "absl/strings/str_cat.h"
#include "errors.h"

namespace py = pybind11;

namespace strata::python {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  DLDataTypeCode code;
};
constexpr std::array<DTypeInfo, 8> kDTypes = {{
    {DType::kU8, "uint8", kDLUInt},      {DType::kI8, "int8", kDLInt},
    {DType::kF16, "float16", kDLFloat},  {DType::kBF16, "bfloat16", kDLBfloat},
    {DType::kI32, "int32", kDLInt},      {DType::kF32, "float32", kDLFloat},
    {DType::kI64, "int64", kDLInt},      {DType::kF64, "float64", kDLFloat},
}};

// Sets *out to the text of a str and returns true; false for anything else.
bool AsText(py::handle h, std::string_view* out) {
  if (!PyUnicode_Check(h.ptr())) return false;
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(h.ptr(), &size);
  if (data == nullptr) {
    PyErr_Clear();
    return false;
  }
  *out = std::string_view(data, static_cast<size_t>(size));
  return true;
}

std::string Repr(py::handle h) {
  try {
    return py::repr(h).cast<std::string>();
  } catch (const py::error_already_set&) {
    return "<unprintable object>";
  }
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "unknown";
}

DType ParseDType(py::handle name) {
  std::string_view text;
  if (AsText(name, &text)) {
    for (const DTypeInfo& d : kDTypes) {
      if (d.name == text) return d.dtype;
    }
  }
  ThrowInvalid(absl::StrCat("dtype ", Repr(name),
                            " is not supported; use one of uint8, int8, "
                            "float16, bfloat16, int32, float32, int64, float64 "
                            "(or the torch/NumPy dtype of one)"));
}

DLDataType ToDLDataType(DType dtype) {
  DLDataType out{};
  out.lanes = 1;
  out.bits = static_cast<uint8_t>(DTypeSize(dtype) * 8);
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) out.code = static_cast<uint8_t>(d.code);
  }
  return out;
}

Tier ParseTier(py::handle tier, std::string_view what) {
  std::string_view text;
  if (AsText(tier, &text)) {
    for (int i = 0; i < kNumTiers; ++i) {
      if (TierName(static_cast<Tier>(i)) == text) return static_cast<Tier>(i);
    }
  }
  ThrowInvalid(absl::StrCat(std::string(what), " ", Repr(tier),
                            " is not a tier; use \"gpu\", \"host\", \"shm\", "
                            "\"remote\" or \"nvme\""));
}

Access ParseAccess(py::handle access) {
  std::string_view text;
  if (AsText(access, &text)) {
    if (text == "r") return Access::kRead;
    if (text == "w") return Access::kWrite;
    if (text == "overwrite") return Access::kOverwrite;
  }
  ThrowInvalid(absl::StrCat("access ", Repr(access),
                            " is not one of \"r\" (read), \"w\" (write) or "
                            "\"overwrite\" (write every byte, old bytes not "
                            "loaded)"));
}

std::string_view AccessName(Access access) {
  switch (access) {
    case Access::kRead: return "r";
    case Access::kWrite: return "w";
    case Access::kOverwrite: return "overwrite";
  }
  return "unknown";
}

namespace {

uint64_t ParseUnsigned(py::handle value, std::string_view what,
                       void (*fail)(const std::string&)) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr())) {
    throw py::type_error(absl::StrCat(std::string(what), " must be an int, not ",
                                      Repr(py::type::handle_of(value))));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow < 0 || (overflow == 0 && v < 0)) {
    fail(absl::StrCat(std::string(what), " ", Repr(value), " is negative"));
  }
  if (overflow == 0) return static_cast<uint64_t>(v);
  const unsigned long long u = PyLong_AsUnsignedLongLong(value.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    fail(absl::StrCat(std::string(what), " ", Repr(value),
                      " does not fit in 64 bits"));
  }
  return u;
}

}  // namespace

uint64_t ParseIndex(py::handle value, std::string_view what) {
  return ParseUnsigned(value, what, &ThrowOutOfRange);
}

uint64_t ParseSize(py::handle value, std::string_view what) {
  return ParseUnsigned(value, what, &ThrowInvalid);
}

}  // namespace strata::python
