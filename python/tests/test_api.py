"""The Python face of the engine: options, tensors, prefetch, flush, steps,
stats, and bad input of every kind answered by an exception (the suite runs
under `python3 -X dev -X faulthandler`, so a crash shows its stack)."""

import numpy as np
import pytest
import torch

import strata

from conftest import BLOCK, HOST


def test_dtype_spellings_agree(host_engine):
    for i, dtype in enumerate([torch.float16, np.float16, np.dtype("float16"),
                               "float16", "f16", "half"]):
        t = host_engine.create_tensor(f"d{i}", dtype, (4096,))
        assert t.dtype == "float16" and t.itemsize == 2
    assert host_engine.create_tensor("bf", "bf16", 8).dtype == "bfloat16"


def test_tensor_describes_its_blocks(host_engine):
    t = host_engine.create_tensor("layer.w", "float32", (3, BLOCK // 8),
                                  block_bytes=BLOCK)
    assert (t.name, t.shape, t.block_bytes, t.nbytes) == (
        "layer.w", (3, BLOCK // 8), BLOCK, 3 * BLOCK // 2)
    assert len(t) == t.num_blocks == 2
    # Block 0 holds rows 0-1 exactly; block 1 only row 2.
    assert t.block_shape(0) == (2, BLOCK // 8) and t.block_shape(1) == (1, BLOCK // 8)
    assert [t.block_range(b) for b in range(2)] == [
        (0, BLOCK // 4), (BLOCK // 4, 3 * BLOCK // 8)]
    same = host_engine.open_tensor("layer.w")
    assert (same.name, same.shape, len(same)) == (t.name, t.shape, len(t))
    with pytest.raises(strata.AlreadyExistsError):
        host_engine.create_tensor("layer.w", "float32", 4)


def test_prefetch_then_pins_hit(tmp_path):
    # LRU, so that evicting ahead (which starts once the tier has been full)
    # takes older blocks before the ones just prefetched.
    nvme_engine = strata.Engine(host_bytes=HOST, block_bytes=BLOCK,
                                nvme_path=str(tmp_path), policy="lru")
    blocks = 2 * HOST // BLOCK
    t = nvme_engine.create_tensor("p", "uint8", (blocks * BLOCK,))
    for b in range(blocks):
        with nvme_engine.pin(t, b, access="overwrite") as pin:
            torch.from_dlpack(pin).fill_(b)
    nvme_engine.flush()
    handle = nvme_engine.prefetch(t, range(0, 4))
    handle.wait()
    assert handle.done
    hits = nvme_engine.stats()["host"]["hits"]
    for b in range(4):
        with nvme_engine.pin(t, b) as pin:
            assert torch.from_dlpack(pin).eq(b).all()
    assert nvme_engine.stats()["host"]["hits"] == hits + 4
    nvme_engine.prefetch(t, 5).wait()
    # Scattered blocks as one request, in any order, repeats allowed.
    gather = [blocks - 1, 6, blocks - 1, 9]
    nvme_engine.prefetch(t, gather).wait()
    hits = nvme_engine.stats()["host"]["hits"]
    for b in gather:
        with nvme_engine.pin(t, b) as pin:
            assert torch.from_dlpack(pin).eq(b).all()
    assert nvme_engine.stats()["host"]["hits"] == hits + len(gather)
    nvme_engine.close()


def test_step_context_and_stats(host_engine):
    t = host_engine.create_tensor("s", "float32", (4 * BLOCK // 4,))
    for _ in range(2):
        with host_engine.step():
            for b in range(len(t)):
                with host_engine.pin(t, b):
                    pass
    stats = host_engine.stats()
    assert set(stats) == {"host", "pin_hit_latency", "pin_miss_latency"}
    assert stats["host"]["hits"] + stats["host"]["misses"] == 8
    assert stats["host"]["capacity_bytes"] == HOST
    with pytest.raises(strata.FailedPreconditionError):
        host_engine.end_step()  # no step open


def test_error_classes_derive_from_builtins():
    pairs = [(strata.InvalidArgumentError, ValueError),
             (strata.NotFoundError, KeyError),
             (strata.ResourceExhaustedError, MemoryError),
             (strata.DeadlineExceededError, TimeoutError),
             (strata.UnavailableError, OSError),
             (strata.DataLossError, OSError),
             (strata.FailedPreconditionError, RuntimeError),
             (strata.OutOfRangeError, IndexError)]
    for cls, builtin in pairs:
        assert issubclass(cls, strata.Error) and issubclass(cls, builtin)
    err = strata.NotFoundError("tensor 'x' is unknown")
    assert str(err) == "NOT_FOUND: tensor 'x' is unknown"


@pytest.mark.parametrize("kwargs,keyword", [
    ({"host_bytes": 0}, "host_bytes"), ({"host_bytes": -4096}, "host_bytes"),
    ({"host_bytes": "big"}, "host_bytes"), ({"host_bytes": 4097}, "host_bytes"),
    ({"block_bytes": 1000}, "block_bytes"), ({"policy": "fifo"}, "policy"),
    ({"policy": 3}, "policy"), ({"tiers": ("nvme", "host")}, "tiers"),
    ({"tiers": "host"}, "tiers"), ({"tiers": ("ram",)}, "tiers"),
    ({"queue_depth": 0}, "queue_depth"), ({"queue_depth": 10**6}, "queue_depth"),
    ({"io_timeout": 0}, "io_timeout"), ({"io_timeout": float("nan")}, "io_timeout"),
    ({"pin_wait_timeout": "1s"}, "pin_wait_timeout"),
    ({"huge_pages": 1}, "huge_pages"), ({"nvme_path": 42}, "nvme_path"),
    ({"readahead_blocks": -2}, "readahead_blocks"), ({"hostbytes": 1}, "hostbytes"),
])
def test_each_bad_engine_keyword_is_named(tmp_path, kwargs, keyword):
    good = {"tiers": ("host", "nvme"), "nvme_path": str(tmp_path),
            "host_bytes": 4 * BLOCK, "block_bytes": BLOCK}
    with pytest.raises(ValueError, match=f"'{keyword}'") as err:
        strata.Engine(**{**good, **kwargs})
    assert isinstance(err.value, strata.InvalidArgumentError)


def test_bad_tensor_arguments(host_engine):
    e = host_engine
    bad = [
        (lambda: e.create_tensor("a", torch.complex64, 4), ValueError),
        (lambda: e.create_tensor("a", "float128", 4), ValueError),
        (lambda: e.create_tensor("a", object(), 4), ValueError),
        (lambda: e.create_tensor("a", "float32", (0, 4)), ValueError),
        (lambda: e.create_tensor("a", "float32", (-1,)), ValueError),
        (lambda: e.create_tensor("a", "float32", (2**62, 2**62)), ValueError),
        (lambda: e.create_tensor("a", "float32", (2**70,)), ValueError),
        (lambda: e.create_tensor("a", "float32", ("4",)), ValueError),
        (lambda: e.create_tensor("a", "float32", "44"), ValueError),
        (lambda: e.create_tensor("a", "float32", 4, block_bytes=1000), ValueError),
        (lambda: e.create_tensor("a", "float32", 4, block_bytes=-1), ValueError),
        (lambda: e.create_tensor("a", "float32", 4, block_bytes=2**64), ValueError),
        (lambda: e.create_tensor("a", "float32", 4, block_bytes=4096.0), TypeError),
        (lambda: e.create_tensor("", "float32", 4), ValueError),
        (lambda: e.open_tensor("missing"), KeyError),
        (lambda: e.open_tensor(None), TypeError),
    ]
    for call, exc in bad:
        with pytest.raises(exc):
            call()


def test_bad_pin_arguments(host_engine):
    e = host_engine
    t = e.create_tensor("t", "float32", (BLOCK // 4,))
    bad = [
        (lambda: e.pin(t, 1), strata.OutOfRangeError),
        (lambda: t.block_range(1), strata.OutOfRangeError),
        (lambda: t.block_shape(-1), strata.OutOfRangeError),
        (lambda: e.pin(t, -1), strata.OutOfRangeError),
        (lambda: e.pin(t, 2**64), strata.OutOfRangeError),
        (lambda: e.pin(t, 2**63), strata.OutOfRangeError),
        (lambda: e.pin(t, 0.0), TypeError),
        (lambda: e.pin(t, True), TypeError),
        (lambda: e.pin(t, 0, tier="ram"), strata.InvalidArgumentError),
        (lambda: e.pin(t, 0, tier=None), strata.InvalidArgumentError),
        (lambda: e.pin(t, 0, tier="nvme"), strata.InvalidArgumentError),
        (lambda: e.pin(t, 0, tier="gpu"), strata.UnimplementedError),
        (lambda: e.pin(t, 0, access="rw"), strata.InvalidArgumentError),
        (lambda: e.pin(t, 0, access=b"r"), strata.InvalidArgumentError),
        (lambda: e.pin("t", 0), TypeError),
        (lambda: e.pin(e, 0), TypeError),
        (lambda: e.pin(None, 0), TypeError),
        (lambda: e.prefetch(t, range(0, 4, 2)), strata.InvalidArgumentError),
        (lambda: e.prefetch(t, "all"), TypeError),
        (lambda: e.prefetch(t, -1), strata.OutOfRangeError),
        (lambda: e.prefetch(t, [0, len(t)]), strata.OutOfRangeError),
        (lambda: e.prefetch(t, [0, "1"]), TypeError),
        (lambda: e.prefetch(t, (0,), tier="nvme"), strata.InvalidArgumentError),
        (lambda: e.drop_tensor("t"), TypeError),
        (lambda: e.flush(3), TypeError),
        (lambda: strata.Engine._create_tensor(None, "a", "float32", 4), TypeError),
        (lambda: strata.Engine.pin("engine", t, 0), TypeError),
        (lambda: strata.Engine.stats(t), TypeError),
        (lambda: strata.Tensor(), TypeError),
        (lambda: strata.Pin(), TypeError),
        (lambda: strata.PrefetchHandle(), TypeError),
    ]
    for call, exc in bad:
        with pytest.raises(exc):
            call()
    with e.pin(t, 0) as pin:
        with pytest.raises(strata.InvalidArgumentError, match="stream"):
            pin.__dlpack__(stream=1)
    assert e.stats()["host"]["pinned_bytes"] == 0


def test_tensor_of_another_engine_is_refused(host_engine):
    other = strata.Engine(tiers=("host",), host_bytes=2 * BLOCK, block_bytes=BLOCK)
    t = other.create_tensor("t", "float32", 8)
    with pytest.raises(strata.InvalidArgumentError, match="another engine"):
        host_engine.pin(t, 0)
    with pytest.raises(strata.InvalidArgumentError, match="another engine"):
        host_engine.drop_tensor(t)
    other.close()
