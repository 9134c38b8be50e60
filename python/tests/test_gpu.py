"""GPU pins from Python: CUDA DLPack views of blocks in the engine's VRAM.

Every test runs over the GPU device double (_strata_fake_gpu, built with the
tests), so it runs on machines without a GPU; the tests that do not need to
stall a stream also run over CUDA where a GPU is usable (through ctypes and
libcudart; skipped elsewhere). A consumer is played by _strata_fake_gpu's
`consume`, which takes a capsule over and calls its deleter as torch does;
with CUDA, torch.from_dlpack is tested too when torch has CUDA."""

import ctypes
import gc
import threading

import numpy as np
import pytest

import strata

from conftest import BLOCK

fake_gpu = pytest.importorskip("_strata_fake_gpu")

KDL_CUDA = 2
LEGACY_STREAM = 1  # cudaStreamLegacy, DLPack's stream=None for CUDA
GPU_BLOCKS = 4


class FakeDevice:
    """The device double: VRAM is host memory the test reads directly."""

    real = False

    def __init__(self):
        self.dev = fake_gpu.FakeGpu(64 << 20)

    def engine_options(self):
        return {"_gpu_device": self.dev.capsule()}

    def create_stream(self):
        return self.dev.create_stream()

    def peek(self, ptr, n):
        return self.dev.peek(ptr, n)

    def fill(self, stream, ptr, n, byte):
        self.dev.fill(stream, ptr, n, bytes([byte]))

    def synchronize(self):
        pass  # the double runs work as it is enqueued unless a stream is held


class CudaDevice:
    """A real GPU, through libcudart by ctypes (no CUDA Python needed)."""

    real = True

    def __init__(self, cudart):
        self.rt = cudart
        self.rt.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_size_t, ctypes.c_int]
        self.rt.cudaMemsetAsync.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_size_t, ctypes.c_void_p]
        self.rt.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.streams = []

    def check(self, err, what):
        assert err == 0, f"{what}: cudaError {err}"

    def engine_options(self):
        return {}

    def create_stream(self):
        s = ctypes.c_void_p()
        self.check(self.rt.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        self.streams.append(s)
        return s.value

    def peek(self, ptr, n):
        self.synchronize()
        out = ctypes.create_string_buffer(n)
        self.check(self.rt.cudaMemcpy(out, ptr, n, 2), "cudaMemcpy D2H")
        return out.raw

    def fill(self, stream, ptr, n, byte):
        self.check(self.rt.cudaMemsetAsync(ptr, byte, n, stream), "cudaMemsetAsync")

    def synchronize(self):
        self.check(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")


def load_cudart():
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_device_or_skip():
    cudart = load_cudart()
    if cudart is None:
        pytest.skip("no libcudart to load: no CUDA here")
    count = ctypes.c_int(0)
    if cudart.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value == 0:
        pytest.skip("no usable GPU (cudaGetDeviceCount failed or found none)")
    return CudaDevice(cudart)


@pytest.fixture(params=["fake", "cuda"])
def device(request):
    if request.param == "fake":
        return FakeDevice()
    return cuda_device_or_skip()


def open_engine(device, tmp_path, gpu_blocks=GPU_BLOCKS, **extra):
    options = dict(tiers=("gpu", "host", "nvme"), host_bytes=16 * BLOCK,
                   block_bytes=BLOCK, gpu_bytes=gpu_blocks * BLOCK,
                   nvme_path=str(tmp_path / "nvme"), pin_wait_timeout=10,
                   io_timeout=10)
    options.update(device.engine_options())
    options.update(extra)
    return strata.Engine(**options)


@pytest.fixture
def gpu(device, tmp_path):
    engine = open_engine(device, tmp_path)
    yield engine, device
    gc.collect()
    engine.close()


def pinned(engine, tier="gpu"):
    return engine.stats()[tier]["pinned_bytes"]


def write_host(engine, t, b, values):
    with engine.pin(t, b, access="w") as pin:
        pin.numpy()[...] = values


def read_host(engine, t, b):
    with engine.pin(t, b) as pin:
        return pin.numpy().copy()


def test_a_gpu_pin_is_a_cuda_view_of_the_block(gpu):
    engine, device = gpu
    rows = BLOCK // 4 // 64
    t = engine.create_tensor("w", "float32", (3 * rows, 64))
    expected = np.arange(rows * 64, dtype=np.float32).reshape(rows, 64) + 1000
    write_host(engine, t, 1, expected)
    stream = device.create_stream()
    with engine.pin(t, 1, tier="gpu") as pin:
        assert pin.tier == "gpu"
        assert pin.__dlpack_device__() == (KDL_CUDA, 0)
        view = fake_gpu.consume(pin.__dlpack__(stream=stream))
    assert view.device == (KDL_CUDA, 0)
    assert view.shape == [rows, 64]
    assert view.strides == [64, 1]
    assert view.dtype == (2, 32, 1)  # kDLFloat, 32 bits
    assert view.nbytes == BLOCK
    assert device.peek(view.data, BLOCK) == expected.tobytes()
    assert pinned(engine) == BLOCK  # the view holds the pin
    view.delete()
    device.synchronize()
    assert pinned(engine) == 0


def test_writes_through_a_gpu_view_reach_host_and_nvme(gpu):
    engine, device = gpu
    t = engine.create_tensor("g", "uint8", (2 * BLOCK,))
    stream = device.create_stream()
    with engine.pin(t, 0, tier="gpu", access="overwrite") as pin:
        view = fake_gpu.consume(pin.__dlpack__(stream=stream))
    device.fill(stream, view.data, BLOCK, 0x5A)
    view.delete()  # the kernel may still run: the pin ends after it
    assert (read_host(engine, t, 0) == 0x5A).all()
    engine.flush(t)
    # Every block of a larger tensor through the GPU evicts block 0 down to
    # NVMe: it comes back with the kernel's bytes.
    big = engine.create_tensor("big", "uint8", (24 * BLOCK,))
    for b in range(len(big)):
        with engine.pin(big, b, tier="gpu", access="overwrite") as pin:
            v = fake_gpu.consume(pin.__dlpack__(stream=stream))
            device.fill(stream, v.data, BLOCK, b)
            v.delete()
    assert engine.stats()["nvme"]["bytes_in"] > 0
    assert (read_host(engine, t, 0) == 0x5A).all()
    for b in (0, 11, 23):
        assert (read_host(engine, big, b) == b).all()


def test_views_keep_the_pin_after_release_and_block_drop(gpu):
    engine, device = gpu
    t = engine.create_tensor("k", "int32", (BLOCK // 4,))
    pin = engine.pin(t, 0, tier="gpu")
    views = [fake_gpu.consume(pin.__dlpack__(stream=LEGACY_STREAM)),
             fake_gpu.consume(pin.__dlpack__())]
    pin.release()
    assert pin.released
    with pytest.raises(strata.FailedPreconditionError):
        pin.__dlpack__()
    with pytest.raises(strata.FailedPreconditionError):
        engine.drop_tensor(t)
    while views:
        assert pinned(engine) == BLOCK
        views.pop().delete(without_gil=False)
    device.synchronize()
    assert pinned(engine) == 0
    engine.drop_tensor(t)


def test_an_unconsumed_capsule_and_a_collected_pin_unpin(gpu):
    engine, device = gpu
    t = engine.create_tensor("u", "uint8", (BLOCK,))
    pin = engine.pin(t, 0, tier="gpu")
    capsule = pin.__dlpack__(stream=device.create_stream())
    del pin
    assert pinned(engine) == BLOCK
    del capsule
    device.synchronize()
    assert pinned(engine) == 0


def test_prefetch_to_the_gpu_makes_pins_hits(gpu):
    engine, _ = gpu
    t = engine.create_tensor("p", "uint8", (4 * BLOCK,))
    for b in range(len(t)):
        write_host(engine, t, b, b + 1)
    engine.prefetch(t, [1, 3], tier="gpu").wait()
    before = engine.stats()["gpu"]
    assert before["used_bytes"] == 2 * BLOCK
    for b in (1, 3):
        with engine.pin(t, b, tier="gpu"):
            pass
    after = engine.stats()["gpu"]
    assert after["hits"] - before["hits"] == 2
    assert after["misses"] == before["misses"]


def test_an_async_gpu_pin_round_trips(gpu):
    engine, device = gpu
    t = engine.create_tensor("a", "uint8", (2 * BLOCK,))
    write_host(engine, t, 1, 0x3C)
    stream = device.create_stream()
    with engine.pin(t, 1, tier="gpu", wait=False) as pin:
        view = fake_gpu.consume(pin.__dlpack__(stream=stream))
        pin.synchronize()
        assert device.peek(view.data, BLOCK) == bytes([0x3C]) * BLOCK
    view.delete()
    with engine.pin(t, 1) as host:
        host.synchronize()  # a host pin's bytes are there: returns at once
    for wait in (1, None, "no"):
        with pytest.raises(TypeError, match="wait"):
            engine.pin(t, 0, tier="gpu", wait=wait)


def test_bad_streams_and_numpy_of_a_gpu_pin(gpu):
    engine, _ = gpu
    t = engine.create_tensor("b", "float32", (BLOCK // 4,))
    with engine.pin(t, 0, tier="gpu") as pin:
        for stream in (0, -2, 2**64):
            with pytest.raises(strata.InvalidArgumentError, match="stream"):
                pin.__dlpack__(stream=stream)
        for stream in ("1", 1.0, True):
            with pytest.raises(TypeError):
                pin.__dlpack__(stream=stream)
        with pytest.raises(strata.InvalidArgumentError, match="GPU memory"):
            pin.numpy()
        with pytest.raises(Exception):  # NumPy's own error: not a CPU array
            np.from_dlpack(pin)
        assert "tier=gpu" in repr(pin)
    assert pinned(engine) == 0


def test_bad_gpu_keywords(tmp_path):
    for kw, value in (("gpu_bytes", -1), ("gpu_bytes", "1G"),
                      ("gpu_fraction", "half"), ("gpu_device", 1.5)):
        with pytest.raises(strata.InvalidArgumentError, match=kw):
            strata.Engine(tiers=("gpu", "host"), host_bytes=16 * BLOCK,
                          block_bytes=BLOCK, **{kw: value})
    with pytest.raises(strata.InvalidArgumentError, match="_gpu_device"):
        strata.Engine(tiers=("host",), host_bytes=16 * BLOCK,
                      block_bytes=BLOCK, _gpu_device=object())
    dev = FakeDevice()
    with pytest.raises(strata.InvalidArgumentError, match="gpu_bytes"):
        open_engine(dev, tmp_path, gpu_blocks=0, gpu_bytes=12345)
    with pytest.raises(strata.InvalidArgumentError, match="gpu_fraction"):
        open_engine(dev, tmp_path, gpu_bytes=0, gpu_fraction=0)


def test_a_gpu_engine_without_a_gpu_says_why():
    if load_cudart() is not None:
        count = ctypes.c_int(0)
        if load_cudart().cudaGetDeviceCount(ctypes.byref(count)) == 0 and count.value:
            pytest.skip("this machine has a GPU")
    with pytest.raises(strata.Error) as err:
        strata.Engine(tiers=("gpu", "host"), host_bytes=16 * BLOCK, block_bytes=BLOCK)
    assert err.value.code in (strata.StatusCode.FAILED_PRECONDITION,
                              strata.StatusCode.UNIMPLEMENTED)
    assert "gpu" in err.value.message


# --- stream order, over the double (a held stream stands for a busy GPU) ---


@pytest.fixture
def fake(tmp_path):
    device = FakeDevice()
    engine = open_engine(device, tmp_path, gpu_blocks=1)
    yield engine, device.dev
    gc.collect()
    engine.close()


def pin_in_thread(engine, t, b):
    result = {}

    def run():
        try:
            with engine.pin(t, b, tier="gpu"):
                result["ok"] = True
        except Exception as e:  # reported by the test
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.parametrize("stream_arg", ["created", None])
def test_a_frame_is_not_reused_before_the_consumers_stream_finished(fake, stream_arg):
    engine, dev = fake
    t = engine.create_tensor("s", "uint8", (2 * BLOCK,))
    write_host(engine, t, 0, 7)
    write_host(engine, t, 1, 9)
    stream = dev.create_stream() if stream_arg == "created" else LEGACY_STREAM
    dev.hold(stream)  # the consumer's stream is busy with earlier work
    with engine.pin(t, 0, tier="gpu") as pin:
        arg = None if stream_arg is None else stream
        view = fake_gpu.consume(pin.__dlpack__(stream=arg))
    kernel = dev.read(stream, view.data, BLOCK)
    view.delete()  # torch dropped its tensor: the kernel has not run yet
    assert pinned(engine) == 0
    thread, result = pin_in_thread(engine, t, 1)  # needs block 0's frame
    assert dev.await_waiters(1, 10)
    assert not kernel.done and not result
    assert dev.copies_to_device() == 1  # block 0's only
    dev.release(stream)
    thread.join()
    assert result == {"ok": True}
    assert kernel.bytes == bytes([7]) * BLOCK  # not block 1's bytes


def test_an_async_pin_returns_before_its_copy_and_its_views_wait(fake):
    engine, dev = fake
    t = engine.create_tensor("w", "uint8", (BLOCK,))
    write_host(engine, t, 0, 5)
    copies = dev.copy_stream_to_device()
    dev.hold(copies)  # the copy into VRAM is still on its way
    stream = dev.create_stream()
    pin = engine.pin(t, 0, tier="gpu", wait=False)  # returns all the same
    view = fake_gpu.consume(pin.__dlpack__(stream=stream))
    kernel = dev.read(stream, view.data, BLOCK)
    assert not kernel.done  # the consumer's stream waits for the copy
    assert dev.copies_to_device() == 0
    dev.release(copies)
    assert kernel.done and kernel.bytes == bytes([5]) * BLOCK
    pin.synchronize()
    view.delete()
    pin.release()
    assert pinned(engine) == 0


def test_two_consumer_streams_both_fence_the_frame(fake):
    engine, dev = fake
    t = engine.create_tensor("d", "uint8", (2 * BLOCK,))
    write_host(engine, t, 0, 3)
    streams = [dev.create_stream(), dev.create_stream()]
    for s in streams:
        dev.hold(s)
    with engine.pin(t, 0, tier="gpu") as pin:
        views = [fake_gpu.consume(pin.__dlpack__(stream=s)) for s in streams]
    kernels = [dev.read(s, v.data, BLOCK) for s, v in zip(streams, views)]
    for v in views:
        v.delete()
    thread, result = pin_in_thread(engine, t, 1)
    assert dev.await_waiters(1, 10)
    dev.release(streams[0])
    assert kernels[0].done and not kernels[1].done
    assert dev.copies_to_device() == 1 and not result
    dev.release(streams[1])
    thread.join()
    assert result == {"ok": True}
    assert all(k.bytes == bytes([3]) * BLOCK for k in kernels)


def test_stream_minus_one_orders_nothing(fake):
    engine, dev = fake
    t = engine.create_tensor("m", "uint8", (2 * BLOCK,))
    stream = dev.create_stream()
    dev.hold(stream)
    with engine.pin(t, 0, tier="gpu") as pin:
        fake_gpu.consume(pin.__dlpack__(stream=-1)).delete()
    # Nothing waits for the held stream: block 1 takes the frame at once.
    with engine.pin(t, 1, tier="gpu"):
        pass
    assert dev.copies_to_device() == 2
    dev.release(stream)


# --- torch on a real GPU ---


def test_torch_from_dlpack_of_a_gpu_pin(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    device = cuda_device_or_skip()
    engine = open_engine(device, tmp_path)
    try:
        t = engine.create_tensor("t", torch.float32, (BLOCK // 4,))
        with engine.pin(t, 0, tier="gpu", access="overwrite") as pin:
            x = torch.from_dlpack(pin)
        assert x.is_cuda and x.numel() == BLOCK // 4
        x.fill_(2.5)
        x.mul_(2)
        del x  # the pin ends after the kernels on torch's current stream
        torch.cuda.synchronize()
        assert (read_host(engine, t, 0) == 5.0).all()
    finally:
        gc.collect()
        engine.close()
