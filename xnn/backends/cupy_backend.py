"""The NVIDIA GPU backend: CuPy arrays, cuBLAS GEMMs.

CuPy is imported only when a GPU device is made, so ``import xnn`` works without it.
The device takes the namespace as an argument (``CupyDevice()`` imports ``cupy``);
the test suite builds the same class on a strict host-memory stand-in for CuPy
(``tests/standin``), so this file's code runs in CI without a GPU.
"""
from __future__ import annotations

import os

import numpy

from ..errors import DeviceMismatchError
from .base import Device


class CupyDevice(Device):
    kind = "gpu"
    #: fresh element-wise results are C-ordered on CuPy: layers that must keep a
    #: channels-last layout write into ``empty_like`` outputs (``out=``)
    keeps_layout = False
    #: GEMMs are cheap to launch but each launch costs ~10 us: few, large chunks
    chunk_bytes = 512 * 2**20

    def __init__(self, cupy_module=None, name: str = "gpu"):
        if cupy_module is None:
            import cupy as cupy_module
        self.xp = cupy_module
        self.name = name
        self.array_type = cupy_module.ndarray
        self.id = cupy_module.cuda.Device().id
        # TF32 tensor-core GEMMs are opt-in (XNN_TF32=1, which sets CuPy's own
        # CUPY_TF32 before CuPy is imported; see xnn.backends.device).
        self.tf32 = os.environ.get("CUPY_TF32", "0") == "1"

    def asarray(self, host, dtype=None):
        xp = self.xp
        if isinstance(host, xp.ndarray):
            return host if dtype is None else host.astype(dtype, copy=False)
        if not isinstance(host, (numpy.ndarray, numpy.generic, int, float, list, tuple)):
            raise DeviceMismatchError(
                f"cannot put a {type(host).__module__}.{type(host).__name__} on the {self.name} device")
        return xp.asarray(host, dtype=dtype)

    def to_numpy(self, array):
        self.check(array)
        return self.xp.asnumpy(array)

    def rng(self, seed):
        return self.xp.random.default_rng(seed)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def elapsed(self, fn):
        """(seconds, fn()) timed with CUDA events: one sync, at the end."""
        cuda = self.xp.cuda
        start, end = cuda.Event(), cuda.Event()
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return cuda.get_elapsed_time(start, end) / 1000.0, result

    def memory_available(self):
        free, _total = self.xp.cuda.runtime.memGetInfo()
        return free + self.xp.get_default_memory_pool().free_bytes()

    def as_strided(self, x, shape, strides):
        return self.xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
