"""The NVIDIA GPU backend: CuPy arrays, cuBLAS GEMMs.

CuPy is imported only when this module is, and this module is imported only when a
GPU device is asked for, so ``import xnn`` works without CuPy.
"""
from __future__ import annotations

import os

import cupy
import numpy

from ..errors import DeviceMismatchError
from .base import Device


class CupyDevice(Device):
    name = "gpu"
    kind = "gpu"
    xp = cupy
    array_type = cupy.ndarray

    def __init__(self):
        self.id = cupy.cuda.Device().id
        # TF32 tensor-core GEMMs are opt-in (XNN_TF32=1, which sets CuPy's own
        # CUPY_TF32 before CuPy is imported; see xnn.backends.device).
        self.tf32 = os.environ.get("CUPY_TF32", "0") == "1"

    def asarray(self, host, dtype=None):
        if isinstance(host, cupy.ndarray):
            return host if dtype is None else host.astype(dtype, copy=False)
        if not isinstance(host, (numpy.ndarray, numpy.generic, int, float, list, tuple)):
            raise DeviceMismatchError(
                f"cannot put a {type(host).__module__}.{type(host).__name__} on the gpu device")
        return cupy.asarray(host, dtype=dtype)

    def to_numpy(self, array):
        self.check(array)
        return cupy.asnumpy(array)

    def rng(self, seed):
        return cupy.random.default_rng(seed)

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    def memory_available(self):
        free, _total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return free + pool.free_bytes()

    def as_strided(self, x, shape, strides):
        return cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
