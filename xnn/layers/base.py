"""The layer contract.

    y = layer.forward(x)       # caches what backward needs
    dx = layer.backward(dy)    # (re)fills layer.grads[name] unless the layer is frozen
    layer.params, layer.grads  # dicts name -> array on layer.device

Parameters are made on the host with a seeded NumPy generator (so the CPU and the
GPU start from the same numbers) and then copied once to the layer's device.
"""
from __future__ import annotations

import copy

import numpy

from ..backends import Device, cpu, device as get_device


def he_normal(rng: numpy.random.Generator, shape, fan_in: int, dtype=numpy.float32):
    """He et al. 2015: N(0, 2 / fan_in), for layers followed by ReLU."""
    return (rng.standard_normal(shape) * numpy.sqrt(2.0 / fan_in)).astype(dtype)


def xavier_uniform(rng: numpy.random.Generator, shape, fan_in: int, fan_out: int, dtype=numpy.float32):
    """Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    a = numpy.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(dtype)


def init_weight(init: str | None, rng, shape, fan_in: int, fan_out: int, dtype):
    """He or Xavier values, or zeros for ``init=None`` (weights about to be loaded)."""
    if init is None:
        return numpy.zeros(shape, dtype)
    if init == "he":
        return he_normal(rng, shape, fan_in, dtype)
    if init == "xavier":
        return xavier_uniform(rng, shape, fan_in, fan_out, dtype)
    raise ValueError(f"unknown initialiser {init!r}; choose 'he' or 'xavier'")


def pair(v, what: str) -> tuple:
    """(a, b) of an int or a pair of ints (kernel sizes, strides); ValueError otherwise."""
    t = (v, v) if isinstance(v, (int, numpy.integer)) and not isinstance(v, bool) else v
    try:
        a, b = t
    except (TypeError, ValueError):
        a = b = None
    if not all(isinstance(u, (int, numpy.integer)) and not isinstance(u, bool) and u >= 1 for u in (a, b)):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return int(a), int(b)


def same_padding(v, what: str) -> int:
    """Padding p of an int or an (p, p) pair; xnn pads H and W equally, so (ph, pw) with ph != pw
    and negative values are refused with a ValueError that says so."""
    t = (v, v) if isinstance(v, (int, numpy.integer)) and not isinstance(v, bool) else v
    try:
        a, b = t
    except (TypeError, ValueError):
        a = b = None
    if not all(isinstance(u, (int, numpy.integer)) and not isinstance(u, bool) and u >= 0 for u in (a, b)) \
            or a != b:
        raise ValueError(f"{what} must be an int >= 0 or a pair (p, p) of equal ints (H and W are padded "
                         f"alike), got {v!r}")
    return int(a)


def column_sums(xp, a):
    """sum_n a[n, :] of a 2-D array (a bias gradient) as one product with a vector of ones: a GEMV,
    which on (25088, 32) float32 took 0.05 ms against 0.41 for ``a.sum(axis=0)`` (NumPy adds the rows
    one by one there) and rounds less (the BLAS sums in blocks).  ``xp.dot``, not ``@``: see
    :func:`product`."""
    return product(xp, xp.ones(a.shape[0], dtype=a.dtype), a)


def product(xp, a, b):
    """a @ b by ``xp.dot``: the weight and bias gradients' products, whose results can be small.

    NumPy's ``matmul`` (``@``) keeps the GIL when its result has fewer than 500 elements, however
    long the sum behind each one: MNIST's conv1 weight gradient, (9 x 25088) @ (25088 x 32), ran
    one thread at a time when the batch's parts ran on two (``xnn.DataParallel``); ``dot`` calls
    the same BLAS and lets the GIL go."""
    return xp.dot(a, b)


def as_rng(seed_or_rng) -> numpy.random.Generator:
    if isinstance(seed_or_rng, numpy.random.Generator):
        return seed_or_rng
    return numpy.random.default_rng(seed_or_rng)


class Layer:
    """Base class: parameter bookkeeping, freezing and device moves."""

    def __init__(self, device: Device | str | None = None):
        self.device = cpu if device is None else get_device(device)
        self.params: dict = {}
        self.grads: dict = {}
        self.frozen = False
        #: False lets a first layer skip computing the gradient of its input.
        self.needs_input_grad = True

    @property
    def xp(self):
        return self.device.xp

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        self.device.check(x, f"input of {type(self).__name__}")
        return self.forward(x)

    def _set_params(self, **host_arrays):
        self.params = {k: self.device.asarray(v) for k, v in host_arrays.items()}
        self.grads = {}

    def zero_grad(self):
        self.grads = {}

    def freeze(self):
        self.frozen = True
        self.grads = {}
        return self

    def unfreeze(self):
        self.frozen = False
        return self

    def to(self, device=None, dtype=None):
        """Move parameters to another device and/or dtype (an explicit copy)."""
        new = self.device if device is None else get_device(device)
        moved = {}
        for k, v in self.params.items():
            host = self.device.to_numpy(v)
            moved[k] = new.asarray(host if dtype is None else host.astype(dtype))
        self.device = new
        self.params = moved
        self.grads = {}
        self._clear_cache()
        return self

    def _clear_cache(self):
        """Drop cached forward state (arrays of the old device)."""

    def replica(self):
        """A twin of this layer for another part of the same batch (:class:`xnn.DataParallel`).

        It shares the parameter arrays themselves (an optimiser's in-place step, or
        ``load_state_dict``, reaches both) and has its own parameter dict, gradients and forward
        caches, so two threads can run the twins at once.  Layers held by this one (an
        ``UpsampleConv2d``'s inner convolution) get twins of their own.  ``to()`` gives the
        layer new arrays, which its twins do not see: make twins after moving a model.
        """
        twin = copy.copy(self)
        twin.params = dict(self.params)
        twin.grads = {}
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                setattr(twin, name, value.replica())
        twin._clear_cache()
        return twin

    def __repr__(self):
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"
