"""Strata from Python: tensors larger than RAM, paged by blocks between tiers.

    import strata, torch

    with strata.Engine(host_bytes=256 << 20, nvme_path="./strata-data") as engine:
        w = engine.create_tensor("layer0.w", torch.float32, (4096, 4096))
        with engine.pin(w, 0, access="w") as pin:
            torch.from_dlpack(pin).fill_(1.0)   # zero-copy view of block 0
        engine.flush(w)

A ``Pin`` is a lease on one block in one tier; ``torch.from_dlpack(pin)`` and
``numpy.from_dlpack(pin)`` are zero-copy views of it (``pin.numpy()`` is a
NumPy view that is read-only for read pins). A view keeps the block pinned:
the pin ends when it is released (or its ``with`` block exits) *and* its last
view is gone. Blocking calls release the GIL. Errors are ``strata.Error``
subclasses carrying the engine's status code and message.

This file is the thin Python layer (dtype names, ranges, context managers);
the engine, tensors and pins are the C++ classes of ``strata._strata``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence, Union

from . import _strata
from ._errors import (AlreadyExistsError, DataLossError,
                      DeadlineExceededError, Error, FailedPreconditionError,
                      InternalError, InvalidArgumentError, NotFoundError,
                      OutOfRangeError, PermissionDeniedError,
                      ResourceExhaustedError, StatusCode, UnavailableError,
                      UnimplementedError)
from ._strata import Pin, PrefetchHandle, Tensor

__all__ = [
    "Engine", "Tensor", "Pin", "PrefetchHandle", "StatusCode", "Error",
    "AlreadyExistsError", "DataLossError", "DeadlineExceededError",
    "FailedPreconditionError", "InternalError", "InvalidArgumentError",
    "NotFoundError", "OutOfRangeError", "PermissionDeniedError",
    "ResourceExhaustedError", "UnavailableError", "UnimplementedError",
    "DTYPES",
]

# The element types a tensor can have (torch and NumPy name them the same).
DTYPES = ("uint8", "int8", "float16", "bfloat16", "int32", "float32",
          "int64", "float64")
_ALIASES = {"u8": "uint8", "i8": "int8", "f16": "float16", "half": "float16",
            "bf16": "bfloat16", "i32": "int32", "f32": "float32",
            "i64": "int64", "f64": "float64", "double": "float64"}

DTypeLike = Any  # a str, a torch.dtype, a numpy.dtype or NumPy scalar type
BlocksLike = Union[None, int, range, Sequence[int]]


def _dtype_name(dtype: DTypeLike) -> str:
    """The canonical name of a str, torch or NumPy dtype (the extension
    rejects names it does not know, listing the ones it does)."""
    if isinstance(dtype, str):
        return _ALIASES.get(dtype, dtype)
    if type(dtype).__module__.split(".")[0] == "torch":
        return str(dtype).rpartition(".")[2]   # "torch.float32" -> "float32"
    try:
        import numpy
        return numpy.dtype(dtype).name
    except Exception:  # not a dtype NumPy knows, or no NumPy at all
        raise InvalidArgumentError(
            f"dtype {dtype!r} is not supported; use one of "
            f"{', '.join(DTYPES)} (or the torch/NumPy dtype of one)") from None


class Engine(_strata._Engine):
    """One Strata engine: a tier chain (host RAM, then NVMe by default).

    Keywords (each bad one is a ValueError naming it): ``tiers`` (e.g.
    ``("host", "nvme")``, ``("host",)`` or ``("gpu", "host", "nvme")``),
    ``host_bytes``, ``numa_node``, ``huge_pages``, ``nvme_path``,
    ``nvme_bytes``, ``queue_depth``, ``register_buffers``, ``gpu_bytes``,
    ``gpu_fraction``, ``gpu_device``, ``block_bytes`` (default block size),
    ``readahead_blocks``, ``policy`` ("default", "lru", "lfu", "hinted"),
    ``pin_wait_timeout`` and ``io_timeout`` (seconds).

    ``with Engine(...) as engine:`` closes it at the end; ``close()`` refuses
    (FailedPreconditionError) while a pin or a view of one is alive. Methods
    are thread-safe; ``pin``, ``flush``, ``drop_tensor``, ``close`` and
    ``PrefetchHandle.wait`` release the GIL while they wait.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)

    def create_tensor(self, name: str, dtype: DTypeLike,
                      shape: Union[int, Sequence[int]],
                      block_bytes: int = 0) -> Tensor:
        """A new tensor whose blocks read as zeros until written.
        ``block_bytes`` 0 takes the engine's ``block_bytes``; otherwise a
        multiple of 4096 and of the element size."""
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        return self._create_tensor(name, _dtype_name(dtype), shape,
                                   block_bytes)

    def prefetch(self, tensor: Tensor, blocks: BlocksLike = None,
                 tier: str = "host") -> PrefetchHandle:
        """Starts loading ``blocks`` (None: all; an int; a range of step 1;
        a list or tuple of ints: scattered blocks, as one request) into
        ``tier`` without pinning; ``handle.wait()`` waits for them."""
        if isinstance(blocks, (list, tuple)):
            return self._prefetch_blocks(tensor, blocks, tier)
        if blocks is None:
            start, stop = 0, None
        elif isinstance(blocks, range):
            if blocks.step != 1:
                raise InvalidArgumentError(
                    f"prefetch blocks {blocks!r}: use a range of step 1")
            start, stop = blocks.start, blocks.stop
            if stop <= start:
                raise InvalidArgumentError(
                    f"prefetch blocks {blocks!r} is empty")
        elif isinstance(blocks, int) and not isinstance(blocks, bool):
            start, stop = blocks, blocks + 1
        else:
            raise TypeError("prefetch blocks must be None, an int, a range "
                            "or a list of ints, "
                            f"not {type(blocks).__name__}")
        return self._prefetch(tensor, start, stop, tier)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """``with engine.step():`` marks one training step; the first one
        records the order of pins, later ones prefetch along it."""
        self.begin_step()
        try:
            yield
        finally:
            self.end_step()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except FailedPreconditionError:
            # A view still lives. When an exception is on its way out, its
            # traceback often holds that view: let the exception through;
            # the engine closes once the last view (and reference) is gone.
            if exc_type is None:
                raise
