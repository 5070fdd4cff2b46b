"""Element-wise and row-wise activations."""
from __future__ import annotations

from .base import Layer


class ReLU(Layer):
    """y = max(x, 0);  dx = dy * [x > 0].  Any shape; y keeps x's memory order.

    Only the boolean mask (1 byte per element) is kept for backward.
    """

    def __init__(self, device=None):
        super().__init__(device)
        self._mask = None

    def forward(self, x):
        self._mask = x > 0
        return self.xp.maximum(x, 0)

    def backward(self, dy):
        return dy * self._mask

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
