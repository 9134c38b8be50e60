"""A view keeps its pin, and a pin its engine: nothing a Python program does
with pins, views and engines can leave a view over freed or unpinned bytes."""

import gc

import numpy as np
import pytest
import torch

import strata

from conftest import BLOCK


def pinned(engine):
    return engine.stats()["host"]["pinned_bytes"]


def test_view_outlives_with_block_and_blocks_drop(host_engine):
    t = host_engine.create_tensor("w", "float32", (BLOCK // 4,))
    with host_engine.pin(t, 0, access="w") as pin:
        view = torch.from_dlpack(pin)
    assert pin.released
    view.fill_(7.0)  # still the pinned block's bytes
    with pytest.raises(strata.FailedPreconditionError) as err:
        host_engine.drop_tensor(t)
    assert err.value.code == strata.StatusCode.FAILED_PRECONDITION
    assert isinstance(err.value, strata.Error)
    assert "pinned" in err.value.message
    assert pinned(host_engine) == BLOCK
    del view
    assert pinned(host_engine) == 0
    with host_engine.pin(t, 0) as pin:
        assert torch.from_dlpack(pin).eq(7.0).all()
    host_engine.drop_tensor(t)
    with pytest.raises(strata.NotFoundError):
        host_engine.pin(t, 0)


def test_last_of_several_views_unpins(host_engine):
    t = host_engine.create_tensor("v", "int32", (BLOCK // 4,))
    pin = host_engine.pin(t, 0)
    views = [torch.from_dlpack(pin), np.from_dlpack(pin), pin.numpy()]
    pin.release()
    while views:
        assert pinned(host_engine) == BLOCK
        views.pop()
    assert pinned(host_engine) == 0


def test_collected_pin_unpins_and_unconsumed_capsule_too(host_engine):
    t = host_engine.create_tensor("c", "uint8", (BLOCK,))
    pin = host_engine.pin(t, 0)
    capsule = pin.__dlpack__()
    del pin
    assert pinned(host_engine) == BLOCK  # the capsule holds it
    del capsule
    assert pinned(host_engine) == 0


def test_use_after_release_raises(host_engine):
    t = host_engine.create_tensor("u", "float32", (BLOCK // 4,))
    pin = host_engine.pin(t, 0, access="w")
    pin.release()
    for use in (pin.release, pin.numpy, pin.__dlpack__, pin.__dlpack_device__,
                lambda: torch.from_dlpack(pin), lambda: np.from_dlpack(pin)):
        with pytest.raises(strata.FailedPreconditionError, match="released"):
            use()
    assert pin.block == 0 and "released" in repr(pin)
    with pin:  # exiting a released pin's context is harmless
        pass


def test_close_refuses_while_a_view_lives(tmp_path):
    engine = strata.Engine(host_bytes=8 * BLOCK, block_bytes=BLOCK,
                           nvme_path=str(tmp_path))
    t = engine.create_tensor("x", "float64", (BLOCK // 8,))
    with engine.pin(t, 0, access="w") as pin:
        view = torch.from_dlpack(pin)
    with pytest.raises(strata.FailedPreconditionError, match="pinned"):
        engine.close()
    view.fill_(1.5)  # the refused close left the block pinned and valid
    del view
    engine.close()
    with pytest.raises(strata.FailedPreconditionError, match="closed"):
        engine.pin(t, 0)


def test_view_keeps_engine_alive_after_last_engine_reference():
    engine = strata.Engine(tiers=("host",), host_bytes=4 * BLOCK,
                           block_bytes=BLOCK)
    t = engine.create_tensor("e", "int64", (BLOCK // 8,))
    with engine.pin(t, 0, access="w") as pin:
        view = torch.from_dlpack(pin)
    del engine, pin, t
    gc.collect()
    view.copy_(torch.arange(BLOCK // 8))
    assert int(view.sum()) == (BLOCK // 8) * (BLOCK // 8 - 1) // 2
    del view  # unpins, then the engine goes (and closes)


def test_engine_context_manager_closes(tmp_path):
    with strata.Engine(host_bytes=4 * BLOCK, block_bytes=BLOCK,
                       nvme_path=str(tmp_path)) as engine:
        t = engine.create_tensor("m", "float32", 1024)
    with pytest.raises(strata.FailedPreconditionError):
        engine.open_tensor("m")
    with pytest.raises(strata.FailedPreconditionError):
        engine.flush(t)


def test_engine_with_block_lets_an_exception_through_a_live_view(tmp_path):
    # The traceback holds the frame, the frame holds the view: close() is
    # refused, and the user sees their own error, not that refusal.
    with pytest.raises(ZeroDivisionError):
        with strata.Engine(tiers=("host",), host_bytes=4 * BLOCK,
                           block_bytes=BLOCK) as engine:
            t = engine.create_tensor("z", "float32", (BLOCK // 4,))
            with engine.pin(t, 0) as pin:
                view = torch.from_dlpack(pin)
            1 / 0
    with pytest.raises(strata.FailedPreconditionError, match="pinned"):
        engine.close()  # the view is still there
    del view
    engine.close()
