// Python values ↔ Strata's enums: dtype names, tier and access strings,
// block indices. Each parser raises a strata.Error naming what it got and
// what it accepts; none of them crashes on any Python object.
#ifndef STRATA_PYTHON_CONVERT_H_
#define STRATA_PYTHON_CONVERT_H_

#include <cstdint>
#include <string_view>

#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>

#include "strata/strata.h"

namespace strata::python {

// "uint8", "int8", "float16", "bfloat16", "int32", "float32", "int64",
// "float64": the canonical names (the Python layer maps torch and NumPy
// dtypes and aliases onto them).
std::string_view DTypeName(DType dtype);
DType ParseDType(pybind11::handle name);
DLDataType ToDLDataType(DType dtype);

// "gpu", "host", "shm", "remote", "nvme".
Tier ParseTier(pybind11::handle tier, std::string_view what);
// "r", "w", "overwrite".
Access ParseAccess(pybind11::handle access);
std::string_view AccessName(Access access);

// A non-negative Python int (not a bool), as uint64_t; `what` names the
// argument in the error: TypeError for a non-int, OutOfRangeError for a
// negative or too large index (ParseIndex), InvalidArgumentError for a
// negative or too large size (ParseSize).
uint64_t ParseIndex(pybind11::handle value, std::string_view what);
uint64_t ParseSize(pybind11::handle value, std::string_view what);

}  // namespace strata::python

#endif  // STRATA_PYTHON_CONVERT_H_
