"""A strict stand-in for the ``cupy`` namespace: host memory, CuPy's rules.

xnn's GPU backend (:class:`xnn.backends.cupy_backend.CupyDevice`) is built on this
module instead of CuPy, so CI runs the real GPU code path on a CPU and fails where
CuPy would fail, or would crawl:

* ``numpy.asarray(a)`` / ``a.__array__()`` raise TypeError, as CuPy does, and so
  does any ``numpy.*`` function given a device array (``numpy.sum(a)``): xnn's rule
  is that layers call ``xp``, never NumPy (stricter than CuPy, which dispatches).
* A host ``numpy.ndarray`` as an operand of a device op, or assigned into a device
  array, raises TypeError (stricter than CuPy's ``a[...] = host``, which copies
  silently).  NumPy scalars and Python numbers are fine, as in CuPy.
* Only names that CuPy 14 has are offered (``cupy_names.json``, frozen from
  ``dir(cupy)`` by ``freeze_cupy_names.py``); anything else is an AttributeError.
* Fresh results are C-ordered, as CuPy allocates them, except where CuPy keeps the
  input's layout (``order="K"``: ``*_like``, ``copy()``/``array()``/``astype``);
  reductions return 0-d device arrays, not host scalars.
* Transposing copies (``ascontiguousarray`` of a transposed array: a layout lost
  somewhere upstream) are recorded too, as ``relayout``.
* Device -> host synchronisations (``float``/``int``/``bool``/``.item()``/``.get()``/
  ``asnumpy``/``tolist``, boolean-mask indexing, ``synchronize()``) and host ->
  device copies (``asarray`` of host data, host index arrays) are recorded per call
  site while a :class:`Recorder` is active (see :func:`recording`).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time
import types
from collections import Counter

import numpy
from numpy.lib.stride_tricks import as_strided as _np_as_strided

_NAMES = json.loads(pathlib.Path(__file__).with_name("cupy_names.json").read_text())
NAMESPACE = frozenset(_NAMES["namespace"])
NDARRAY_ATTRS = frozenset(_NAMES["ndarray"])
CUPY_VERSION = _NAMES["cupy_version"]

#: functions whose fresh result keeps the input's memory order (CuPy's order="K" default)
_KEEP_LAYOUT = frozenset({"empty_like", "zeros_like", "ones_like", "full_like", "copy", "array", "astype"})


# ------------------------------------------------------------------ recording
class Recorder:
    """Counts of device->host syncs and host->device copies, per call site."""

    def __init__(self):
        self.events = Counter()   # (kind, what, site) -> count

    def add(self, kind, what, site):
        self.events[(kind, what, site)] += 1

    def count(self, kind: str) -> int:
        return sum(n for (k, _, _), n in self.events.items() if k == kind)

    @property
    def syncs(self) -> int:
        return self.count("sync")

    @property
    def copies(self) -> int:
        return self.count("copy")

    @property
    def relayouts(self) -> int:
        return self.count("relayout")

    def table(self, top: int = 12) -> str:
        """The worst call sites, one per line: count, kind, what, file:line (function)."""
        rows = sorted(self.events.items(), key=lambda kv: -kv[1])[:top]
        lines = [f"{n:6d}  {kind:8s}  {what:28s}  {site}" for (kind, what, site), n in rows]
        return "\n".join(["     n  kind      what                          call site"] + lines)


_active: list = []
_HERE = os.path.abspath(__file__)


def _site(depth: int = 2) -> str:
    """The first ``depth`` frames outside this module (and NumPy), innermost first:
    where xnn asked for it, and who called that."""
    frame, found = sys._getframe(2), []
    while frame is not None and len(found) < depth:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _HERE and f"{os.sep}numpy{os.sep}" not in path:
            try:
                path = os.path.relpath(path)
            except ValueError:
                pass
            found.append(f"{path}:{frame.f_lineno} ({frame.f_code.co_name})")
        frame = frame.f_back
    return " <- ".join(found) or "?"


def _event(kind: str, what: str):
    if _active:
        site = _site()
        for rec in _active:
            rec.add(kind, what, site)


@contextlib.contextmanager
def recording():
    """``with recording() as rec:`` counts syncs and copies made inside the block."""
    rec = Recorder()
    _active.append(rec)
    try:
        yield rec
    finally:
        _active.remove(rec)


# ------------------------------------------------------------------ wrapping
def _host_operand_error(x, where: str):
    return TypeError(f"a host numpy.ndarray {x.shape} {x.dtype} was used in {where} on the GPU; "
                     "copy it to the device explicitly (dev.asarray) first")


def _unwrap(x, where: str):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, numpy.ndarray):
        raise _host_operand_error(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    return x


def _wrap(r, inputs=(), keep_layout=False):
    """Device arrays of NumPy results: fresh arrays C-ordered (CuPy), views as they are."""
    if isinstance(r, numpy.ndarray):
        fresh = not any(isinstance(a, numpy.ndarray) and numpy.may_share_memory(r, a) for a in inputs)
        if fresh and not keep_layout and not r.flags.c_contiguous:
            r = numpy.ascontiguousarray(r)
        return ndarray(r)
    if isinstance(r, numpy.generic):
        return ndarray(numpy.asarray(r))       # CuPy reductions give 0-d device arrays
    if isinstance(r, tuple):
        return tuple(_wrap(v, inputs, keep_layout) for v in r)
    if isinstance(r, list):
        return [_wrap(v, inputs, keep_layout) for v in r]
    return r


def _flat_arrays(args):
    for a in args:
        if isinstance(a, numpy.ndarray):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _flat_arrays(a)


def _call(name, fn, args, kwargs, owner=None):
    """fn (a NumPy function, or a method of ``owner``'s array) on unwrapped device arguments;
    ``out=`` returns the out array itself."""
    where = f"xp.{name}"
    out = kwargs.get("out")
    a = _unwrap(args, where)
    kw = {k: _unwrap(v, where) for k, v in kwargs.items()}
    r = fn(*a, **kw)
    if out is not None:
        if isinstance(out, tuple):
            return out if len(out) > 1 else out[0]
        return out
    explicit_order = kwargs.get("order") not in (None, "K", "k")
    keep = name in _KEEP_LAYOUT or explicit_order
    inputs = tuple(_flat_arrays(a)) + tuple(_flat_arrays(tuple(kw.values())))
    return _wrap(r, inputs + ((owner,) if owner is not None else ()), keep)


def _function(name):
    fn = getattr(numpy, name)

    def device_function(*args, **kwargs):
        return _call(name, fn, args, kwargs)

    device_function.__name__ = device_function.__qualname__ = name
    return device_function


def _index(key):
    """Unwrap an index; boolean device masks need the host (a sync), host index arrays a copy."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        if key.dtype == bool:
            _event("sync", "boolean-mask indexing")
        return key._a
    if isinstance(key, (numpy.ndarray, list)):
        _event("copy", "host index array")
        return numpy.asarray(key)
    return key


def _is_advanced(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (numpy.ndarray, list)) for k in keys)


# ------------------------------------------------------------------ ndarray
class ndarray:
    """A device array of the stand-in: a NumPy array that refuses to be one on the host."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, a):
        if not isinstance(a, numpy.ndarray):
            raise TypeError("stand-in ndarray wraps a numpy.ndarray")
        self._a = a

    # -- the host boundary
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was given a GPU array; call the device's xp "
                        f"(xp.{func.__name__}) instead")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # reached by numpy scalars on the left (numpy.float32(2) * a): fine in CuPy too
        if method != "__call__":
            raise TypeError(f"numpy.{ufunc.__name__}.{method} was given a GPU array")
        return _call(ufunc.__name__, ufunc, inputs, kwargs)

    def get(self, stream=None, order="C", out=None):
        _event("sync", ".get()")
        return numpy.array(self._a, order=order)

    def __repr__(self):
        _event("sync", "repr()")
        return f"array({self._a!r}) [stand-in device]"

    __str__ = __repr__

    def __format__(self, spec):
        _event("sync", "format()")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    # -- metadata
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    mT = property(lambda self: ndarray(self._a.mT))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    device = property(lambda self: _current_device)

    @property
    def base(self):
        return None if self._a.base is None else ndarray(self._a.base)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield ndarray(self._a[i]) if self._a.ndim > 1 else ndarray(numpy.asarray(self._a[i]))

    # -- indexing
    def __getitem__(self, key):
        advanced = _is_advanced(key) or (isinstance(key, ndarray)) or (
            isinstance(key, tuple) and any(isinstance(k, ndarray) for k in key))
        r = self._a[_index(key)]
        if isinstance(r, numpy.generic):
            return ndarray(numpy.asarray(r))
        return ndarray(numpy.ascontiguousarray(r) if advanced else r)

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray):
            raise _host_operand_error(value, "an assignment into a device array")
        self._a[_index(key)] = _unwrap(value, "an assignment")

    # -- methods: only those cupy.ndarray has
    def __getattr__(self, name):
        if name.startswith("_") or name not in NDARRAY_ATTRS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} "
                                 f"(checked against CuPy {CUPY_VERSION})")
        method = getattr(self._a, name)

        def device_method(*args, **kwargs):
            return _call(name, method, args, kwargs, owner=self._a)

        return device_method

    def copy(self, order="C"):
        return ndarray(self._a.copy(order=order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray(self._a.astype(dtype, order=order, copy=copy))

    def fill(self, value):
        self._a.fill(_unwrap(value, "fill"))

    def set(self, host, stream=None):
        _event("copy", ".set()")
        self._a[...] = host

    def view(self, dtype=None):
        return ndarray(self._a.view() if dtype is None else self._a.view(dtype))


def _to_host(method_name, what):
    """A method that brings data to the host: a recorded sync, then NumPy's own method."""
    def to_host(self, *args):
        _event("sync", what)
        return getattr(self._a, method_name)(*args)
    return to_host


for _name, _what in [("item", ".item()"), ("tolist", ".tolist()"), ("__float__", "float()"),
                     ("__int__", "int()"), ("__index__", "index()"), ("__bool__", "bool()"),
                     ("__complex__", "complex()")]:
    setattr(ndarray, _name, _to_host(_name, _what))


def _binary(ufunc_name, reflected=False):
    def op(self, other):
        if not isinstance(other, (ndarray, numpy.ndarray, numpy.generic, int, float, bool, complex)):
            return NotImplemented
        args = (other, self) if reflected else (self, other)
        return _call(ufunc_name, getattr(numpy, ufunc_name), args, {})
    return op


def _inplace(ufunc_name):
    def op(self, other):
        if not isinstance(other, (ndarray, numpy.ndarray, numpy.generic, int, float, bool, complex)):
            return NotImplemented
        getattr(numpy, ufunc_name)(self._a, _unwrap(other, f"an in-place {ufunc_name}"), out=self._a)
        return self
    return op


for _dunder, _uf in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                     ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"),
                     ("matmul", "matmul"), ("and", "bitwise_and"), ("or", "bitwise_or"),
                     ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
    setattr(ndarray, f"__r{_dunder}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _inplace(_uf))
for _dunder, _uf in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                     ("eq", "equal"), ("ne", "not_equal")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
for _dunder, _uf in [("neg", "negative"), ("pos", "positive"), ("abs", "absolute"), ("invert", "invert")]:
    setattr(ndarray, f"__{_dunder}__", lambda self, _uf=_uf: _call(_uf, getattr(numpy, _uf), (self,), {}))


# ------------------------------------------------------------------ creation and transfer
def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    _event("copy", "asarray(host)")
    return ndarray(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        if not copy and (dtype is None or obj.dtype == dtype):
            return obj
        return ndarray(numpy.array(obj._a, dtype=dtype, order=order, copy=True, ndmin=ndmin))
    _event("copy", "array(host)")
    return ndarray(numpy.array(obj, dtype=dtype, order=order, copy=True, ndmin=ndmin))


def _permuted_dense(a) -> bool:
    """True when a's elements fill a block of memory in some axis order other than C's
    (a transposed array): making it C-contiguous is a transposing copy."""
    if a.flags.c_contiguous or a.ndim < 2:
        return False
    axes = sorted(range(a.ndim), key=lambda i: -abs(a.strides[i]))
    step = a.itemsize
    for i in reversed(axes):
        if a.shape[i] > 1 and a.strides[i] != step:
            return False
        step *= a.shape[i]
    return True


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        _event("copy", "ascontiguousarray(host)")
        return ndarray(numpy.array(a, dtype=dtype, order="C", copy=True))
    if _permuted_dense(a._a):
        _event("relayout", "transposing copy")
    return ndarray(numpy.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        _event("sync", "asnumpy()")
        return numpy.array(a._a, order=order)
    return numpy.asarray(a, order=order)


# ------------------------------------------------------------------ sub-namespaces
class _Stream:
    def synchronize(self):
        _event("sync", "stream.synchronize()")


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        _event("sync", "event.synchronize()")


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def synchronize(self):
        _event("sync", "device.synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _mem_get_info():
    total = 16 * 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return min(int(line.split()[1]) * 1024, total), total
    except OSError:
        pass
    return total // 2, total


_stream = _Stream()
_current_device = _Device()
cuda = types.SimpleNamespace(
    Device=_Device, Event=_Event,
    get_current_stream=lambda: _stream,
    get_elapsed_time=lambda start, end: (end.t - start.t) * 1000.0,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, memGetInfo=_mem_get_info),
)


class _MemoryPool:
    def free_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


class _Generator:
    """cupy.random.Generator: only the methods CuPy's has."""

    def __init__(self, seed):
        self._g = numpy.random.default_rng(seed)

    def __getattr__(self, name):
        if name not in _NAMES["random_generator"]:
            raise AttributeError(f"'cupy.random.Generator' has no attribute {name!r}")
        method = getattr(self._g, name)
        return lambda *a, **k: _wrap(method(*_unwrap(a, name), **k))


random = types.SimpleNamespace(default_rng=_Generator)
lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
    as_strided=lambda x, shape=None, strides=None: ndarray(_np_as_strided(x._a, shape, strides))))
linalg = types.SimpleNamespace()
for _n in _NAMES["linalg"]:
    if hasattr(numpy.linalg, _n):
        setattr(linalg, _n, (lambda fn, n: lambda *a, **k: _call(n, fn, a, k))(getattr(numpy.linalg, _n), _n))
fft = types.SimpleNamespace()
for _n in _NAMES["fft"]:
    if callable(getattr(numpy.fft, _n, None)):
        setattr(fft, _n, (lambda fn, n: lambda *a, **k: _call(n, fn, a, k))(getattr(numpy.fft, _n), _n))

_OWN = {"ndarray": ndarray, "asarray": asarray, "array": array, "ascontiguousarray": ascontiguousarray,
        "asnumpy": asnumpy, "cuda": cuda, "random": random, "lib": lib, "linalg": linalg, "fft": fft,
        "get_default_memory_pool": get_default_memory_pool}
_cache: dict = {}


def __getattr__(name):
    """Module attributes: NumPy's, for the names CuPy has, with device-array wrapping."""
    if name in _OWN:
        return _OWN[name]
    if name.startswith("__") or name not in NAMESPACE or not hasattr(numpy, name):
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (checked against CuPy {CUPY_VERSION})")
    if name in _cache:
        return _cache[name]
    value = getattr(numpy, name)
    if callable(value) and not isinstance(value, type):
        value = _function(name)
    _cache[name] = value
    return value
