"""Spatial padding of channels-last arrays (zeros or reflection) and its adjoint.

Conv2d pads through these functions, and :class:`ReflectionPad2d` exposes
reflection padding as a layer of its own (NCHW at the API).
"""
from __future__ import annotations

import functools

import numpy

from .base import Layer
from .layout import row_parts


def pad_hw(xp, x, p: int, mode: str):
    """Pad axes 1 and 2 of an (N, H, W, C) array by ``p`` on each side.

    mode "zeros": zero padding.  mode "reflect": mirror without repeating the edge
    (row -1 = row 1), which needs p < H and p < W.
    """
    if p == 0:
        return x
    n, h, w, c = x.shape
    if mode == "zeros":
        out = xp.zeros((n, h + 2 * p, w + 2 * p, c), dtype=x.dtype)
        out[:, p:p + h, p:p + w, :] = x
        return out
    if mode == "reflect":
        if p >= h or p >= w:
            raise ValueError(f"reflection padding {p} needs an input larger than {p} pixels, got {h}x{w}")
        return xp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    raise ValueError(f"unknown padding mode {mode!r}; choose 'zeros' or 'reflect'")


def pad_to_extent(xp, x, p: int, mode: str, extent, dev=None):
    """x (N, H, W, C) padded by p (zeros or reflect), then with zeros after it up to
    ``extent`` = (rows, columns) in all (Winograd reads whole tiles).  Only the border
    of a fresh array is zeroed; the inside is one copy of x, in bands of rows on the
    workers of ``dev`` when given (one core copies about 10 GB/s: 12 % of a style step)."""
    n, h, w, c = x.shape
    eh, ew = max(extent[0], h + 2 * p), max(extent[1], w + 2 * p)
    if mode == "reflect" and p:
        x, p = pad_hw(xp, x, p, mode), 0
        h, w = x.shape[1:3]
    if p == 0 and (eh, ew) == (h, w):
        return x
    out = xp.empty((n, eh, ew, c), dtype=x.dtype)
    out[:, :p] = 0
    out[:, p + h:] = 0
    out[:, p:p + h, :p] = 0
    out[:, p:p + h, p + w:] = 0
    inside = out[:, p:p + h, p:p + w]
    if dev is None:
        inside[...] = x
        return out

    def band(s):
        inside[s] = x[s]
    dev.parallel_map(band, row_parts(dev, x, axis=1))
    return out


def padded_index(size: int, p: int, mode: str, extent: int):
    """Where each of ``extent`` positions of :func:`pad_to_extent`'s output comes from along one
    axis of length ``size``: a host int64 array of source indices, -1 for a zero.

    Position i is input i - p inside, its mirror (without repeating the edge) in a reflected
    border, and -1 in a zero border or the zeros after it up to ``extent``.  Read-only: the
    convolutions share them through :func:`cached_padded_index`.
    """
    q = numpy.arange(extent, dtype=numpy.int64) - p
    if mode == "reflect" and p:
        q = numpy.where(q < 0, -q, q)
        q = numpy.where((q >= size) & (q < size + p), 2 * (size - 1) - q, q)
        q[p + size + p:] = -1
    q[(q < 0) | (q >= size)] = -1
    q.setflags(write=False)
    return q


#: :func:`padded_index` made once per arguments: every convolution of every step asks again
cached_padded_index = functools.lru_cache(maxsize=256)(padded_index)


def _fold_reflect(g, p: int, axis: int):
    """Adjoint of reflection padding along one axis: add mirrored borders back in."""
    size = g.shape[axis] - 2 * p
    sl = [slice(None)] * g.ndim

    def take(start, stop, step=1):
        s = list(sl)
        s[axis] = slice(start, stop, step)
        return tuple(s)

    core = g[take(p, p + size)].copy()
    # padded index i < p came from input p - i; padded p + size + k from size - 2 - k
    core[take(1, p + 1)] += g[take(p - 1, None, -1)]
    core[take(size - 1 - p, size - 1)] += g[take(2 * p + size - 1, p + size - 1, -1)]
    return core


def pad_hw_backward(g, p: int, mode: str):
    """Gradient of :func:`pad_hw`: (N, H+2p, W+2p, C) -> (N, H, W, C)."""
    if p == 0:
        return g
    if mode == "zeros":
        return g[:, p:g.shape[1] - p, p:g.shape[2] - p, :]
    return _fold_reflect(_fold_reflect(g, p, 1), p, 2)


class ReflectionPad2d(Layer):
    """Mirror-pad H and W by ``p``: (N, C, H, W) -> (N, C, H+2p, W+2p).

    Backward adds the gradient of each mirrored pixel to its source pixel.
    """

    def __init__(self, p: int, device=None):
        super().__init__(device)
        self.p = p

    def forward(self, x):
        return pad_hw(self.xp, x.transpose(0, 2, 3, 1), self.p, "reflect").transpose(0, 3, 1, 2)

    def backward(self, dy):
        return pad_hw_backward(dy.transpose(0, 2, 3, 1), self.p, "reflect").transpose(0, 3, 1, 2)
