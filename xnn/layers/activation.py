"""Element-wise and row-wise activations."""
from __future__ import annotations

from .base import Layer
from .layout import in_layout_of, like


class ReLU(Layer):
    """y = max(x, 0);  dx = dy * [x > 0].  Any shape; y and dx keep x's memory order.

    Only the boolean mask (1 byte per element) is kept for backward.  A dy whose
    memory order differs from x's (an NCHW gradient injected into a channels-last conv
    output) is first copied into x's order, so dx stays channels-last for the conv below.
    """

    def __init__(self, device=None):
        super().__init__(device)
        self._mask = None

    def forward(self, x):
        xp = self.xp
        self._mask = xp.greater(x, 0, out=like(xp, x, bool))
        return xp.maximum(x, 0, out=like(xp, x))

    def backward(self, dy):
        xp = self.xp
        dy = in_layout_of(xp, dy, self._mask)
        return xp.multiply(dy, self._mask, out=like(xp, self._mask, dy.dtype))

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
