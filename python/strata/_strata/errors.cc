// StatusError → strata.Error subclasses (see errors.h).
#include "errors.h"

#include <new>

namespace py = pybind11;

namespace strata::python {
namespace {

// strata._errors.BY_CODE and Error, kept for the life of the interpreter:
// leaked on purpose, because a translator may run during shutdown, after
// static destructors would have dropped them without the GIL.
py::dict* by_code = nullptr;
py::object* base_error = nullptr;

void Raise(const absl::Status& status) {
  const int code = static_cast<int>(status.code());
  py::object cls = *base_error;
  py::int_ key(code);
  if (by_code->contains(key)) cls = (*by_code)[key];
  py::object exc = cls(std::string(status.message()), code);
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

}  // namespace

void ThrowInvalid(const std::string& message) {
  throw StatusError(absl::InvalidArgumentError(message));
}
void ThrowOutOfRange(const std::string& message) {
  throw StatusError(absl::OutOfRangeError(message));
}
void ThrowFailedPrecondition(const std::string& message) {
  throw StatusError(absl::FailedPreconditionError(message));
}

void SetError(const absl::Status& status) noexcept {
  try {
    Raise(status);
  } catch (py::error_already_set& e) {
    e.restore();  // making the exception failed: raise that instead
  } catch (...) {
    PyErr_NoMemory();
  }
}

PyObject* SetCurrentError() noexcept {
  try {
    throw;
  } catch (const StatusError& e) {
    SetError(e.status());
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
  }
  return nullptr;
}

void RegisterErrors(py::module_& m) {
  py::module_ errors = py::module_::import("strata._errors");
  by_code = new py::dict(errors.attr("BY_CODE"));
  base_error = new py::object(errors.attr("Error"));
  m.attr("Error") = *base_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      Raise(e.status());
    }
  });
}

}  // namespace strata::python
