"""Element-wise and row-wise activations."""
from __future__ import annotations

from .base import Layer
from .layout import flat_views, in_layout_of, like, row_parts


class ReLU(Layer):
    """y = max(x, 0);  dx = dy * [x > 0].  Any shape; y and dx keep x's memory order.

    Only the boolean mask (1 byte per element) is kept for backward.  A dy whose
    memory order differs from x's (an NCHW gradient injected into a channels-last conv
    output) is first copied into x's order, so dx stays channels-last for the conv below.
    The work is the device's (``relu`` / ``relu_backward``: compiled loops on the CPU), on
    1-D views in memory order where the arrays allow (``flat_views``), large arrays in bands
    side by side (``row_parts``).
    """

    def __init__(self, device=None):
        super().__init__(device)
        self._mask = None

    def forward(self, x):
        xp, dev = self.xp, self.device
        mask, y = like(xp, x, bool), like(xp, x)
        xs, ys, ms = flat_views(x, y, mask)
        dev.parallel_map(lambda s: dev.relu(xs[s], ys[s], ms[s]), row_parts(dev, xs))
        self._mask = mask
        return y

    def backward(self, dy):
        xp, dev, mask = self.xp, self.device, self._mask
        dy = in_layout_of(xp, dy, mask)
        dx = like(xp, mask, dy.dtype)
        ds, ms, dxs = flat_views(dy, mask, dx)
        dev.parallel_map(lambda s: dev.relu_backward(ds[s], ms[s], dxs[s]), row_parts(dev, dxs))
        return dx

    def _clear_cache(self):
        self._mask = None


class Softmax(Layer):
    """Row-wise softmax over axis 1 (the class axis).

    Forward: y_i = exp(x_i - max x) / sum_j exp(x_j - max x)   (stable).
    Backward: dx = y * (dy - sum_j dy_j y_j).
    """

    def __init__(self, device=None):
        super().__init__(device)
        self._y = None

    def forward(self, x):
        xp = self.xp
        e = xp.exp(x - x.max(axis=1, keepdims=True))
        self._y = e / e.sum(axis=1, keepdims=True)
        return self._y

    def backward(self, dy):
        y = self._y
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))

    def _clear_cache(self):
        self._y = None
