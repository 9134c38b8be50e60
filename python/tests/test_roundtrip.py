"""Bytes written through torch and NumPy views of write pins come back through
read pins: every dtype, a short last block, and after eviction to NVMe."""

import numpy as np
import pytest
import torch

import strata

from conftest import BLOCK, HOST

COLS = 16
TORCH = {"uint8": torch.uint8, "int8": torch.int8, "float16": torch.float16,
         "bfloat16": torch.bfloat16, "int32": torch.int32,
         "float32": torch.float32, "int64": torch.int64,
         "float64": torch.float64}


def pattern(dtype, shape, seed):
    """Values that differ per element and per seed, exact in every dtype."""
    n = int(np.prod(shape))
    base = (torch.arange(n, dtype=torch.int64) * 7 + seed * 13) % 120
    return base.reshape(shape).to(TORCH[dtype])


def make_tensor(engine, dtype, name="t"):
    """Two full blocks of whole rows, then a short block of 5 rows."""
    item = torch.tensor([], dtype=TORCH[dtype]).element_size()
    rows_per_block = BLOCK // (COLS * item)
    return engine.create_tensor(name, TORCH[dtype],
                                (2 * rows_per_block + 5, COLS)), rows_per_block


@pytest.mark.parametrize("dtype", strata.DTYPES)
def test_torch_round_trip_every_dtype(host_engine, dtype):
    t, rows = make_tensor(host_engine, dtype)
    assert len(t) == 3 and t.dtype == dtype
    for b in range(len(t)):
        with host_engine.pin(t, b, access="w") as pin:
            view = torch.from_dlpack(pin)
            assert view.dtype == TORCH[dtype]
            assert tuple(view.shape) == t.block_shape(b)
            view.copy_(pattern(dtype, view.shape, b))
            del view
    assert t.block_shape(2) == (5, COLS)
    assert t.block_range(2) == (2 * rows * COLS, (2 * rows + 5) * COLS)
    for b in range(len(t)):
        with host_engine.pin(t, b) as pin:
            view = torch.from_dlpack(pin)
            assert torch.equal(view, pattern(dtype, t.block_shape(b), b))
            del view


@pytest.mark.parametrize("dtype", [d for d in strata.DTYPES if d != "bfloat16"])
def test_numpy_round_trip_every_dtype(host_engine, dtype):
    t, _ = make_tensor(host_engine, dtype)
    for b in range(len(t)):
        with host_engine.pin(t, b, access="overwrite") as pin:
            arr = pin.numpy()
            assert arr.flags.writeable and arr.dtype == np.dtype(dtype)
            arr[...] = pattern(dtype, arr.shape, b + 1).numpy()
            del arr
    for b in range(len(t)):
        with host_engine.pin(t, b) as pin:
            arr = np.from_dlpack(pin)
            assert arr.shape == t.block_shape(b)
            np.testing.assert_array_equal(
                arr, pattern(dtype, arr.shape, b + 1).numpy())
            del arr


def test_read_pins_give_read_only_numpy_views(host_engine):
    t = host_engine.create_tensor("r", "float32", (4, 1024))
    with host_engine.pin(t, 0) as pin:
        arr = pin.numpy()
        with pytest.raises(ValueError, match="read-only"):
            arr[0, 0] = 1.0
        del arr
    with host_engine.pin(t, 0, access="w") as pin:
        pin.numpy()[0, 0] = 3.0
    with host_engine.pin(t, 0) as pin:
        assert pin.numpy()[0, 0] == 3.0


def test_bfloat16_has_no_numpy_view(host_engine):
    t = host_engine.create_tensor("bf", torch.bfloat16, (4096,))
    with host_engine.pin(t, 0) as pin:
        with pytest.raises(strata.InvalidArgumentError, match="bfloat16"):
            pin.numpy()
        with pytest.raises(Exception):  # NumPy's own error, not a crash
            np.from_dlpack(pin)


def test_block_not_whole_rows_is_one_dimensional(host_engine):
    t = host_engine.create_tensor("odd", "float32", (100, 3000))
    assert t.block_shape(0) == (BLOCK // 4,)
    first, last = t.block_range(1)
    assert (first, last) == (BLOCK // 4, 2 * BLOCK // 4)
    with host_engine.pin(t, 1) as pin:
        assert torch.from_dlpack(pin).shape == (BLOCK // 4,)


def test_writes_survive_eviction_to_nvme_and_back(nvme_engine):
    blocks = 4 * HOST // BLOCK
    t = nvme_engine.create_tensor("big", np.float32, (blocks * BLOCK // 4,))
    for b in range(blocks):
        with nvme_engine.pin(t, b, access="w") as pin:
            torch.from_dlpack(pin).copy_(pattern("float32", (BLOCK // 4,), b))
    nvme_engine.flush(t)
    stats = nvme_engine.stats()
    assert stats["host"]["evictions"] > 0 and stats["nvme"]["bytes_in"] > 0
    for b in range(blocks):
        with nvme_engine.pin(t, b) as pin:
            assert torch.equal(torch.from_dlpack(pin),
                               pattern("float32", (BLOCK // 4,), b))
    assert nvme_engine.stats()["nvme"]["bytes_out"] >= (blocks - HOST // BLOCK) * BLOCK
