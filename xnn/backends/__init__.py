"""Backend selection: the only package in xnn that knows NumPy from CuPy.

    dev = xnn.device("auto")     # "cpu" | "gpu" | "auto"
    x = dev.asarray(host_array)  # explicit host -> device copy
    xnn.to_numpy(x)              # any backend array -> NumPy

Asking for "gpu" where none is usable falls back to the CPU with one warning line
that says why, unless ``strict=True`` (or the environment variable
``XNN_STRICT_DEVICE=1``) is given, which turns that into an :class:`XnnError`.

``register(device)`` adds a device under its own name (the test suite registers
"standin", xnn's CuPy backend built on a strict host-memory stand-in for CuPy);
``device(name)`` and ``device_of(array)`` then know it.
"""
from __future__ import annotations

import os
import sys

import numpy

from ..errors import XnnError
from .base import Device
from .numpy_backend import NumpyDevice

__all__ = ["Device", "device", "to_numpy", "device_of", "gpu_status", "cpu", "register", "gpu_install_hint"]

cpu = NumpyDevice()
_gpu = None          # the CupyDevice once made
_gpu_reason = None   # why no GPU is usable, once known
_warned = False
_registered: dict = {}   # name -> Device added by register()
_GPU_NAMES = ("gpu", "cuda", "cupy")


def register(dev: Device) -> Device:
    """Make ``dev`` known to :func:`device` (by ``dev.name``) and :func:`device_of`."""
    if dev.name in ("cpu", "numpy", "auto") + _GPU_NAMES:
        raise ValueError(f"device name {dev.name!r} is reserved")
    _registered[dev.name] = dev
    return dev


def gpu_install_hint() -> str:
    """The pip command for this machine's CUDA major version (from nvidia-smi's driver, if any)."""
    major = _cuda_driver_major()
    if major is None:
        return "pip install 'xnn[cuda12]' (CUDA 12 drivers) or 'xnn[cuda13]' (CUDA 13)"
    extra = "cuda13" if major >= 13 else "cuda12"
    return f"pip install 'xnn[{extra}]' (this machine's driver supports CUDA {major})"


def _cuda_driver_major():
    """CUDA major version the installed driver supports, or None when no driver is found."""
    import ctypes
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        version = ctypes.c_int()
        try:
            if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
                return version.value // 1000
        except AttributeError:
            pass
    return None


def gpu_status():
    """(CupyDevice or None, reason string or None). Imports CuPy lazily, once."""
    global _gpu, _gpu_reason
    if _gpu is not None or _gpu_reason is not None:
        return _gpu, _gpu_reason
    if os.environ.get("XNN_TF32") == "1":
        os.environ.setdefault("CUPY_TF32", "1")
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        _gpu_reason = f"CuPy is not installed ({e.msg}); install it with: {gpu_install_hint()}"
        return None, _gpu_reason
    except Exception as e:  # a broken CuPy install or CUDA libraries
        _gpu_reason = f"CuPy failed to import: {type(e).__name__}: {e}"
        return None, _gpu_reason
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count == 0:
            _gpu_reason = "no CUDA device is visible"
            return None, _gpu_reason
        cupy.zeros(1).sum().item()  # a real round trip through the driver
        from .cupy_backend import CupyDevice
        _gpu = CupyDevice()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        _gpu_reason = (f"the CUDA driver or device is not usable ({msg}); if the CuPy wheel does not "
                       f"match the driver, reinstall it: {gpu_install_hint()}")
    return _gpu, _gpu_reason


def device(name: str | Device = "auto", strict: bool | None = None) -> Device:
    """Return the device named "cpu", "gpu" or "auto" (GPU when usable, else CPU)."""
    global _warned
    if isinstance(name, Device):
        return name
    name = str(name).lower()
    if name in ("cpu", "numpy"):
        return cpu
    if name in _registered:
        return _registered[name]
    if name not in _GPU_NAMES + ("auto",):
        known = ", ".join(["cpu", "gpu", "auto", *_registered])
        raise XnnError(f"unknown device {name!r}; choose one of: {known}")
    if strict is None:
        strict = os.environ.get("XNN_STRICT_DEVICE", "") not in ("", "0")
    gpu, reason = gpu_status()
    if gpu is not None:
        return gpu
    if name == "auto":
        return cpu
    if strict:
        raise XnnError(f"GPU requested but not usable: {reason} "
                       "(strict mode: unset XNN_STRICT_DEVICE or use --device cpu)")
    if not _warned:
        print(f"xnn: warning: GPU requested but not usable: {reason}; using the CPU",
              file=sys.stderr)
        _warned = True
    return cpu


def device_of(array) -> Device:
    """The device an array lives on."""
    if isinstance(array, numpy.ndarray):
        return cpu
    if _gpu is not None and _gpu.owns(array):
        return _gpu
    for dev in _registered.values():
        if dev.owns(array):
            return dev
    raise XnnError(f"not an xnn array: {type(array).__module__}.{type(array).__name__}")


def to_numpy(array) -> numpy.ndarray:
    """Bring an array of any backend (or a scalar) to the host as a NumPy array."""
    if isinstance(array, (numpy.ndarray, numpy.generic, int, float)):
        return numpy.asarray(array)
    return device_of(array).to_numpy(array)
