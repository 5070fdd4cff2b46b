"""Device selection, the registry, and arrays that must not mix across devices."""
import os
import pathlib
import platform
import subprocess
import sys

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


_FAULTS = """
import resource, numpy
from xnn.backends.numpy_backend import retain_freed_memory
print(retain_freed_memory())
a = numpy.ones(2**24, numpy.float32); del a            # 64 MB: above glibc's own mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = numpy.ones(2**24, numpy.float32); del a
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's")
def test_retained_memory_serves_the_next_large_array_without_page_faults():
    """With the setting, a freed 64 MB array's memory is reused by the next one (no page faults);
    with XNN_RETAIN_MEMORY=0 glibc maps each one afresh, which faults (the case the setting removes)."""
    def run(env):
        out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}, cwd=pathlib.Path(__file__).parents[1]).stdout.split()
        return out[0], float(out[1])
    applied, faults = run({"XNN_RETAIN_MEMORY": "1"})
    assert applied == "True" and faults == 0
    applied, faults = run({"XNN_RETAIN_MEMORY": "0"})
    assert applied == "False" and faults >= 1


def test_the_command_line_retains_freed_memory(monkeypatch, tmp_path):
    """run.py sets it for its own process before the experiment starts (a library import does not)."""
    import xnn.backends.numpy_backend as nb
    from xnn.cli import main
    calls = []
    monkeypatch.setattr(nb, "retain_freed_memory", lambda: calls.append(1) or True)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("experiment: mnist\nepochs: 0\n")
    main([str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert calls == [1]
