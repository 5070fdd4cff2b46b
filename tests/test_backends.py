"""Device selection, the registry, and arrays that must not mix across devices."""
import numpy
import pytest

import xnn
import xnn.backends as backends
from xnn.layers import Linear


def test_cpu_device_surface():
    dev = xnn.device("cpu")
    assert dev.name == "cpu" and dev.xp is numpy and xnn.device("cpu") is dev
    a = dev.asarray([1.0, 2.0], dtype=numpy.float32)
    assert xnn.to_numpy(a) is a and xnn.device_of(a) is dev
    r1, r2 = dev.rng(5).standard_normal(4), dev.rng(5).standard_normal(4)
    numpy.testing.assert_array_equal(r1, r2)
    dev.synchronize()


def test_auto_is_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(backends, "gpu_status", lambda: (None, "CuPy is not installed"))
    assert xnn.device("auto") is backends.cpu


def test_gpu_request_falls_back_with_one_warning_line(monkeypatch, capsys):
    monkeypatch.setattr(backends, "gpu_status", lambda: (None, "no CUDA device is visible"))
    monkeypatch.setattr(backends, "_warned", False)
    monkeypatch.delenv("XNN_STRICT_DEVICE", raising=False)
    assert xnn.device("gpu") is backends.cpu
    assert xnn.device("gpu") is backends.cpu
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device is visible" in err and "using the CPU" in err


def test_strict_gpu_request_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, "gpu_status", lambda: (None, "CuPy is not installed"))
    with pytest.raises(xnn.XnnError, match="CuPy is not installed"):
        xnn.device("gpu", strict=True)
    monkeypatch.setenv("XNN_STRICT_DEVICE", "1")
    with pytest.raises(xnn.XnnError):
        xnn.device("gpu")


def test_unknown_device_name():
    with pytest.raises(xnn.XnnError, match="cpu, gpu, auto"):
        xnn.device("tpu")


def test_real_gpu_status_gives_a_reason_or_a_device():
    gpu, reason = backends.gpu_status()
    assert (gpu is None) != (reason is None)


def test_gpu_and_cpu_arrays_do_not_mix():
    gpu, reason = backends.gpu_status()
    if gpu is None:
        pytest.skip(f"no usable GPU: {reason}")
    layer = Linear(3, 2).to(gpu)
    with pytest.raises(xnn.DeviceMismatchError):
        layer(numpy.ones((1, 3), numpy.float32))
    with pytest.raises(xnn.DeviceMismatchError):
        backends.cpu.asarray(gpu.asarray(numpy.ones(3)))
