"""The CPU backend: NumPy arrays, OpenBLAS GEMMs.

``parallel_map`` runs independent chunks of work (convolution row blocks) on
``workers`` Python threads, each with a single-threaded BLAS: NumPy's copies
(im2col, Winograd transforms) use one core, so two threads that each copy and
multiply keep both cores busy where one two-thread GEMM after a one-core copy
would not.  It needs threadpoolctl (``pip install threadpoolctl``) to pin BLAS to
one thread per worker; without it, or with ``XNN_THREADS=1``, chunks run in order.

Outside ``parallel_map`` xnn leaves the BLAS thread count alone: importing a library
should not change how the rest of a program's NumPy runs, and on an idle machine the
BLAS's own threads are the faster choice (MNIST MLP epoch on 2 idle cores: 0.80 s with
two BLAS threads, 0.88 s with one).  When another process shares the cores, OpenBLAS's
busy-waiting threads make small GEMMs collapse (the same epoch: 5.2 s with two threads
under load against 0.88 s with one); ``XNN_BLAS_THREADS=N`` then limits BLAS to N
threads for the whole process (needs threadpoolctl).

The Winograd tile transforms are compiled kernels (:mod:`.numpy_kernels`, Numba) that go
straight from the padded input to the transformed tiles and from the products to the output:
a 512 px style step took 0.74 (0.71-0.78) of the time of the generic gather-and-GEMM
transforms (docs/benchmarks.md).  ReLU and max pooling are compiled loops too (one pass over
memory where the ufuncs take two to twenty).  ``XNN_NUMBA=0`` selects the generic ones (for comparison).

The real FFTs are SciPy's (``scipy.fft``, 4x faster than ``numpy.fft`` on float32 here and
threaded): one thread inside ``parallel_map``, the workers outside it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy
import scipy.fft
from numpy.lib.stride_tricks import as_strided

from ..errors import DeviceMismatchError
from . import numpy_kernels
from .base import Device


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next array instead of giving it back to the
    system; True when set (glibc), False elsewhere or with ``XNN_RETAIN_MEMORY=0``.

    By default glibc maps every block of 32 MB or more afresh and unmaps it when freed, so each
    such array (a 64-channel activation of a 512 px image, a batch of video frames) costs page
    faults and the kernel's zeroing of every page, serialised across threads, on every step.
    Here every block comes from malloc's heaps (no per-block mappings), whose free memory is
    only given back above 1 GB: a 512 px style step took 0.81x the time, a 512x512 fast style
    picture 0.85x (docs/benchmarks.md).  Limiting the threads' heaps (arenas) as well cut the
    page faults further but made the fast style network and the MNIST CNN slower on 2 cores.
    It is a setting of the whole process, so ``import xnn`` does not make it: the command line
    (``run.py``, ``xnn studio``) does, and a program of one's own can call this once at its start.
    """
    if os.environ.get("XNN_RETAIN_MEMORY", "1").strip() == "0":
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):     # not glibc (macOS, musl, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1
               for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**30)))


def usable_cores() -> int:
    """The cores this process may run on: its affinity set (taskset, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class NumpyDevice(Device):
    name = "cpu"
    kind = "cpu"
    xp = numpy
    array_type = numpy.ndarray

    def __init__(self):
        try:
            self.workers = max(1, int(os.environ.get("XNN_THREADS", "0")) or usable_cores())
        except ValueError:
            self.workers = usable_cores()
        self._executor = None
        self._blas = None          # threadpoolctl controller, False when unavailable
        self._lock = threading.Lock()
        self._busy = False
        self._blas_limit = None
        #: compiled Winograd transforms (Numba) instead of the generic ones; XNN_NUMBA=0 turns them off
        self.compiled_kernels = (numpy_kernels.available()
                                 and os.environ.get("XNN_NUMBA", "1").strip() != "0")
        blas_threads = os.environ.get("XNN_BLAS_THREADS", "0").strip()
        if blas_threads not in ("", "0") and self._blas_controller():
            try:
                self._blas_limit = self._blas.limit(limits=int(blas_threads), user_api="blas")
            except ValueError:
                pass

    def _blas_controller(self):
        if self._blas is None:
            try:
                from threadpoolctl import ThreadpoolController
                self._blas = ThreadpoolController()
            except ImportError:
                self._blas = False
        return self._blas

    def parallel_map(self, fn, items):
        items = list(items)
        if self.workers < 2 or len(items) < 2 or not self._blas_controller():
            return [fn(item) for item in items]
        with self._lock:           # nested or concurrent calls run in order
            busy, self._busy = self._busy, True
        if busy:
            return [fn(item) for item in items]
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="xnn")
            with self._blas.limit(limits=1, user_api="blas"):
                return list(self._executor.map(fn, items))
        finally:
            self._busy = False

    @property
    def winograd_reads_padding(self):
        return self.compiled_kernels

    def winograd_input(self, sub, m, tr, tw, bt, rows=None, cols=None):
        if self.compiled_kernels and numpy_kernels.supports(m, sub.dtype):
            return numpy_kernels.winograd_input(sub, m, tr, tw, rows, cols)
        return super().winograd_input(sub, m, tr, tw, bt, rows, cols)

    def winograd_output(self, mm, m, at, bias, out, tr, tw):
        if self.compiled_kernels and numpy_kernels.supports(m, mm.dtype):
            return numpy_kernels.winograd_output(mm, m, bias, out, tr, tw)
        return super().winograd_output(mm, m, at, bias, out, tr, tw)

    def relu(self, x, y, mask):
        if self.compiled_kernels and numpy_kernels.elementwise_ok(x.dtype, x, y, mask) and y.dtype == x.dtype:
            return numpy_kernels.relu(x, y, mask)
        return super().relu(x, y, mask)

    def relu_backward(self, dy, mask, dx):
        if self.compiled_kernels and numpy_kernels.elementwise_ok(dy.dtype, dy, mask, dx) and dx.dtype == dy.dtype:
            return numpy_kernels.relu_backward(dy, mask, dx)
        return super().relu_backward(dy, mask, dx)

    def max_pool(self, x, y, kh, kw, rows):
        views = self._pool_views(x, y)
        if views is None:
            return super().max_pool(x, y, kh, kw, rows)
        return numpy_kernels.max_pool(*views, kh, kw, rows)

    def max_pool_backward(self, x, y, dy, dx, kh, kw, rows):
        views = self._pool_views(x, y, dy, dx)
        if views is None:
            return super().max_pool_backward(x, y, dy, dx, kh, kw, rows)
        return numpy_kernels.max_pool_backward(*views, kh, kw, rows)

    def relu_max_pool(self, x, y, winner, kh, kw, rows):
        views = self._pool_views(x, y, winner=winner)
        if views is None:
            return super().relu_max_pool(x, y, winner, kh, kw, rows)
        return numpy_kernels.relu_max_pool(*views, kh, kw, rows)

    def relu_max_pool_backward(self, dy, winner, dx, kh, kw, rows):
        views = self._pool_views(dy, dx, winner=winner)
        if views is None:
            return super().relu_max_pool_backward(dy, winner, dx, kh, kw, rows)
        dy, dx, winner = views
        return numpy_kernels.relu_max_pool_backward(dy, winner, dx, kh, kw, rows)

    def sgd_momentum(self, p, g, v, lr, momentum, weight_decay, nesterov):
        if self.compiled_kernels and p.flags.c_contiguous and v.flags.c_contiguous \
                and p.dtype == g.dtype == v.dtype and p.shape == g.shape == v.shape:
            flat = [a.reshape(-1) for a in (p, numpy.ascontiguousarray(g), v)]   # a conv's dW is a transposed view
            if numpy_kernels.elementwise_ok(p.dtype, *flat):
                return numpy_kernels.sgd_momentum(*flat, lr, momentum, weight_decay, nesterov)
        return super().sgd_momentum(p, g, v, lr, momentum, weight_decay, nesterov)

    def _pool_views(self, *arrays, winner=None):
        """The compiled pooling kernels' (N, H, W, C) views of the arrays (and of ``winner``, a uint8
        array of the same memory order, last), or None where they do not apply (XNN_NUMBA=0,
        another dtype, arrays of different memory orders)."""
        if not (self.compiled_kernels and numpy_kernels.compiled_for(arrays[0].dtype)) \
                or any(a.dtype != arrays[0].dtype for a in arrays):
            return None
        if winner is None:
            return numpy_kernels.channels_inner(*arrays)
        if winner.dtype != numpy.uint8:
            return None
        return numpy_kernels.channels_inner(*arrays, winner)

    def _fft_workers(self) -> int:
        return 1 if self._busy else self.workers

    def rfft2(self, x, shape, axes):
        return scipy.fft.rfft2(x, s=shape, axes=axes, workers=self._fft_workers())

    def irfft2(self, spectrum, shape, axes):
        return scipy.fft.irfft2(spectrum, s=shape, axes=axes, workers=self._fft_workers())

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
