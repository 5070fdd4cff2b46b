"""Max and average pooling over (N, C, H, W), with overlapping windows and ceil mode."""
from __future__ import annotations

import math

from .layout import in_layout_of, like, row_ranges
from .base import Layer, pair, same_padding


def pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length along one axis (PyTorch's rule: a last window that would start
    inside the right padding only is dropped)."""
    span = size + 2 * p - k
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding: int = 0, ceil_mode: bool = False, device=None):
        super().__init__(device)
        name = type(self).__name__
        k = pair(kernel_size, f"{name} kernel_size")
        s = k if stride is None else pair(stride, f"{name} stride")
        self.kernel_size, self.stride, self.ceil_mode = k, s, bool(ceil_mode)
        self.padding = same_padding(padding, f"{name} padding")
        if self.padding * 2 > min(k):
            raise ValueError("pool padding must be at most half the kernel size")

    def _geometry(self, h, w):
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        ho = pool_output_size(h, kh, sh, p, self.ceil_mode)
        wo = pool_output_size(w, kw, sw, p, self.ceil_mode)
        # padded extent that every window fits in: p before, the rest after
        hp, wp = max(h + 2 * p, (ho - 1) * sh + kh), max(w + 2 * p, (wo - 1) * sw + kw)
        return ho, wo, hp, wp

    def _offsets(self, ho, wo):
        """(a, b, slice_h, slice_w): the strided slice each kernel offset reads."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for a in range(kh):
            for b in range(kw):
                yield a, b, slice(a, a + sh * (ho - 1) + 1, sh), slice(b, b + sw * (wo - 1) + 1, sw)

    def _padded(self, x, hp, wp, fill):
        n, c, h, w = x.shape
        p = self.padding
        if (hp, wp) == (h, w):
            return x
        out = self.xp.full((n, c, hp, wp), fill, dtype=x.dtype)
        out[:, :, p:p + h, p:p + w] = x
        return out


class MaxPool2d(_Pool2d):
    """y[n, c, i, j] = max over the window at (i*sh, j*sw) of the (-inf padded) input;
    a NaN in a window makes its output NaN (as PyTorch).

    General path: a running maximum over the kh*kw strided slices that records which
    offset won (the first one on ties, a NaN over any number); backward routes dy to that offset,
    dx += dy * [winner == offset] for each offset (overlapping windows add up).
    Fast path, for non-overlapping windows without padding (kernel == stride, and sizes
    divisible in ceil mode: VGG's 2x2 pools, also on odd sizes): y is the element-wise
    maximum of the kh*kw slices, the input is kept (a reference, no copy), and the
    winners are found only in backward: offset (a, b) gets dy where
    x[a::kh, b::kw] == y (or is NaN: a NaN window's dy goes to its first NaN, where the general
    path and PyTorch pick its last) and no earlier offset has taken it (dy is first copied into
    y's memory order when they differ: mixed-layout element-wise ops are slow).  The fast
    path is the device's (``max_pool`` / ``max_pool_backward``: compiled loops on the CPU), in
    bands of output rows side by side (``row_ranges``).
    """

    def _side_by_side(self, h, w):
        """Windows that neither overlap nor reach outside the input (a floor-mode remainder
        of rows or columns is simply not read)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        whole = h % kh == 0 and w % kw == 0
        return (kh, kw) == (sh, sw) and self.padding == 0 and (whole or not self.ceil_mode)

    def forward(self, x):
        xp, dev = self.xp, self.device
        n, c, h, w = x.shape
        ho, wo, hp, wp = self._geometry(h, w)
        if self._side_by_side(h, w):
            kh, kw = self.kernel_size
            y = like(xp, x[:, :, :ho * kh:kh, :wo * kw:kw])     # the input's memory order: NHWC stays NHWC
            dev.parallel_map(lambda rows: dev.max_pool(x, y, kh, kw, rows), row_ranges(dev, y))
            self._x, self._y, self._winner = x, y, None
            return y
        xpad = self._padded(x, hp, wp, -xp.inf)
        y = winner = None
        for a, b, sa, sb in self._offsets(ho, wo):
            v = xpad[:, :, sa, sb]
            if y is None:
                y, winner = v.copy(), xp.zeros(v.shape, dtype=xp.uint8)
            else:
                better = xp.greater(v, y)
                better |= xp.isnan(v)          # NaN wins, as in PyTorch (v > NaN is never true)
                xp.copyto(y, v, where=better)
                xp.copyto(winner, a * self.kernel_size[1] + b, where=better)
        self._winner, self._shape, self._x = winner, (x.shape, hp, wp), None
        return y

    def backward(self, dy):
        xp = self.xp
        if self._x is not None:
            dev, x, y = self.device, self._x, self._y
            dy = in_layout_of(xp, dy, y)   # e.g. an NCHW dy from Flatten for a channels-last y
            dx = xp.empty_like(x)          # the windows cover x but for a remainder
            ho, wo = dy.shape[2:]
            (kh, kw), rest = self.kernel_size, (slice(None), slice(None))
            dx[rest + (slice(ho * kh, None),)] = 0
            dx[rest + (slice(None), slice(wo * kw, None))] = 0
            dev.parallel_map(lambda rows: dev.max_pool_backward(x, y, dy, dx, kh, kw, rows), row_ranges(dev, y))
            return dx
        (n, c, h, w), hp, wp = self._shape
        p = self.padding
        dx = xp.zeros((n, c, hp, wp), dtype=dy.dtype)
        ho, wo = dy.shape[2:]
        for a, b, sa, sb in self._offsets(ho, wo):
            dx[:, :, sa, sb] += dy * (self._winner == a * self.kernel_size[1] + b)
        return dx[:, :, p:p + h, p:p + w]

    def _clear_cache(self):
        self._winner = self._shape = self._x = self._y = None


class AvgPool2d(_Pool2d):
    """y = mean of each window over the pixels that lie inside the input.

    Padding and the ceil-mode overhang are excluded from the divisor (PyTorch's
    count_include_pad=False).  Backward: each in-window pixel gets dy / divisor.
    """

    def forward(self, x):
        n, c, h, w = x.shape
        ho, wo, hp, wp = self._geometry(h, w)
        xpad = self._padded(x, hp, wp, 0)
        ones = self._padded(self.xp.ones((1, 1, h, w), dtype=x.dtype), hp, wp, 0)
        total = count = 0
        for _, _, sa, sb in self._offsets(ho, wo):
            total = total + xpad[:, :, sa, sb]
            count = count + ones[:, :, sa, sb]
        self._inv_count, self._shape = 1 / count, (x.shape, hp, wp)
        return total * self._inv_count

    def backward(self, dy):
        (n, c, h, w), hp, wp = self._shape
        p = self.padding
        dx = self.xp.zeros((n, c, hp, wp), dtype=dy.dtype)
        g = dy * self._inv_count
        for _, _, sa, sb in self._offsets(*dy.shape[2:]):
            dx[:, :, sa, sb] += g
        return dx[:, :, p:p + h, p:p + w]

    def _clear_cache(self):
        self._inv_count = self._shape = None
