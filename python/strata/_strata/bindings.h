// The objects the extension hands to Python and who keeps whom alive.
//
//   Engine ──owns──▶ EngineRef (shared_ptr<EngineHolder>) ◀── Tensor, Pin,
//                                                            PrefetchHandle,
//                                                            every view
//   Pin ──▶ shared_ptr<PinState> ◀── every DLPack capsule / NumPy view
//
// A strata::Pin must not outlive its engine, and a view must not outlive its
// pin: every holder of a PinState also holds the engine, and the PinState
// (which unpins in its destructor) goes when the Python Pin was released or
// collected *and* the last view is gone. PinState may be destroyed on any
// thread, with or without the GIL (torch calls DLPack deleters without it),
// so neither it nor EngineHolder holds a Python object.
#ifndef STRATA_PYTHON_BINDINGS_H_
#define STRATA_PYTHON_BINDINGS_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/pybind11.h>

#include "absl/container/inlined_vector.h"
#include "strata/strata.h"

namespace strata::python {

struct EngineHolder {
  std::unique_ptr<Engine> engine;
  int gpu_device = 0;  // EngineOptions::gpu.device: GPU views' DLPack device
};
using EngineRef = std::shared_ptr<EngineHolder>;

struct PyTensor {
  EngineRef engine;
  Tensor tensor;
};

// One pinned block. `engine` is declared first so that `pin` is destroyed
// (unpinned) before the engine can go.
//
// A GPU pin's views are read by kernels on the streams their consumers named
// (__dlpack__(stream=...)); the pin ends stream-ordered after all of them
// (Pin::ReleaseAfter), so the engine reuses the frame only once that work
// finished, however early Python drops the last view.
struct PinState {
  EngineRef engine;
  strata::Pin pin;
  absl::InlinedVector<GpuStream, 2> release_after;  // under the GIL

  PinState() = default;
  PinState(const PinState&) = delete;
  PinState& operator=(const PinState&) = delete;
  ~PinState() {
    if (pin.valid() && !release_after.empty()) {
      // An error (a GPU tier fenced after a sticky CUDA error) keeps the pin,
      // and `pin`'s destructor then unpins now: a fenced tier reuses no
      // frame, so nothing can overwrite what the streams still read.
      pin.ReleaseAfter(release_after).IgnoreError();
    }
  }
};

// The Python Pin (inside a hand-written CPython object, pin_binding.cc): its
// PinState until release() (or collection), and the Python Tensor it came
// from (for the view's dtype and shape).
struct PyPin {
  std::shared_ptr<PinState> state;
  pybind11::object tensor;         // the Python Tensor, kept alive here
  const PyTensor* tensor_ = nullptr;  // ... and the C++ object inside it
  uint64_t block = 0;
  Access access = Access::kRead;
  Tier tier = Tier::kHost;
  size_t nbytes = 0;

  // The state, or FailedPreconditionError naming the pin when released.
  PinState& Live(const char* what) const;
};

// The view shape of `block`: its rows when it starts and ends on a row
// boundary of a tensor of two or more dimensions, else one dimension.
using Dims = absl::InlinedVector<int64_t, 6>;  // no allocation for ≤ 6 dims
Dims BlockShape(const Tensor& tensor, uint64_t block);
// The half-open element range [first, last) of `block`.
std::pair<uint64_t, uint64_t> BlockElements(const Tensor& tensor,
                                            uint64_t block);

void BindEngine(pybind11::module_& m);
void BindPin(pybind11::module_& m);
// Pins `block` of `tensor` (GIL released only if the pin may wait) and
// returns a new strata.Pin; `tensor_obj` is the Python object holding
// `tensor`. `wait` False: a GPU pin returns once its copy into VRAM is
// enqueued (Engine::PinAsync); views order their consumers' streams after it.
pybind11::object PinBlock(const EngineRef& engine, pybind11::object tensor_obj,
               const PyTensor& tensor, pybind11::handle block,
               pybind11::handle tier, pybind11::handle access,
               pybind11::handle wait);
// The PyTensor inside `h`, or TypeError; one type lookup.
const PyTensor& AsTensor(pybind11::handle h);
pybind11::tuple ToTuple(const Dims& dims);

}  // namespace strata::python

#endif  // STRATA_PYTHON_BINDINGS_H_
