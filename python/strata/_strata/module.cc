// The extension module strata._strata: the C++ classes the pure-Python
// package (strata/__init__.py) builds on. Import `strata`, not this.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "errors.h"

PYBIND11_MODULE(_strata, m) {
  m.doc() = "Strata's C++ engine (use the strata package, not this module)";
  strata::python::RegisterErrors(m);
  // Pin first, so that Engine.pin's signature names strata.Pin.
  strata::python::BindPin(m);
  strata::python::BindEngine(m);
}
