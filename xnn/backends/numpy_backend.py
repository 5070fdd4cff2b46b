"""The CPU backend: NumPy arrays, OpenBLAS GEMMs."""
from __future__ import annotations

import os

import numpy
from numpy.lib.stride_tricks import as_strided

from ..errors import DeviceMismatchError
from .base import Device


class NumpyDevice(Device):
    name = "cpu"
    xp = numpy
    array_type = numpy.ndarray

    def asarray(self, host, dtype=None):
        if not isinstance(host, (numpy.ndarray, numpy.generic, int, float, list, tuple)):
            raise DeviceMismatchError(
                f"cannot put a {type(host).__module__}.{type(host).__name__} on the cpu device "
                "implicitly; bring it to the host with xnn.to_numpy(...) first")
        return numpy.asarray(host, dtype=dtype)

    def to_numpy(self, array):
        self.check(array)
        return array

    def memory_available(self):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None

    def as_strided(self, x, shape, strides):
        return as_strided(x, shape=shape, strides=strides, writeable=False)
