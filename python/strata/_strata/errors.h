// How absl::Status values become Python exceptions: StatusError carries a
// Status out of a binding (thrown with or without the GIL held), and the
// translator registered by RegisterErrors raises the strata._errors class of
// its code with the code and message attached.
#ifndef STRATA_PYTHON_ERRORS_H_
#define STRATA_PYTHON_ERRORS_H_

#include <stdexcept>
#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::python {

class StatusError : public std::exception {
 public:
  explicit StatusError(absl::Status status) : status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }
  const char* what() const noexcept override { return "strata StatusError"; }

 private:
  absl::Status status_;
};

// Throws StatusError unless `status` is OK. Safe without the GIL.
inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}
template <typename T>
T ValueOrThrow(absl::StatusOr<T> result) {
  if (!result.ok()) throw StatusError(std::move(result).status());
  return *std::move(result);
}

// Shorthands for errors the bindings find themselves (bad Python input).
[[noreturn]] void ThrowInvalid(const std::string& message);
[[noreturn]] void ThrowOutOfRange(const std::string& message);
[[noreturn]] void ThrowFailedPrecondition(const std::string& message);

// For C functions called by CPython directly (not through pybind11): sets
// the Python exception for `status` (as the translator does); and, in a
// catch (...) block, for the exception being handled (StatusError, pybind11's
// errors, std::bad_alloc, any std::exception), returning nullptr to return.
// Both need the GIL.
void SetError(const absl::Status& status) noexcept;
PyObject* SetCurrentError() noexcept;

// Imports strata._errors and registers the translator. Called once, from
// the module's init.
void RegisterErrors(pybind11::module_& m);

}  // namespace strata::python

#endif  // STRATA_PYTHON_ERRORS_H_
