"""Element-wise and row-wise activations."""
from __future__ import annotations

from .base import Layer
from .layout import in_layout_of, like, row_parts


class ReLU(Layer):
    """y = max(x, 0);  dx = dy * [x > 0].  Any shape; y and dx keep x's memory order.

    Only the boolean mask (1 byte per element) is kept for backward.  A dy whose
    memory order differs from x's (an NCHW gradient injected into a channels-last conv
    output) is first copied into x's order, so dx stays channels-last for the conv below.
    Large arrays are done in bands of rows side by side (``row_parts``).
    """

    def __init__(self, device=None):
        super().__init__(device)
        self._mask = None

    def forward(self, x):
        xp = self.xp
        mask, y = like(xp, x, bool), like(xp, x)

        def band(s):
            xp.greater(x[s], 0, out=mask[s])
            xp.maximum(x[s], 0, out=y[s])
        self.device.parallel_map(band, row_parts(self.device, x))
        self._mask = mask
        return y

    def backward(self, dy):
        xp, mask = self.xp, self._mask
        dy = in_layout_of(xp, dy, mask)
        dx = like(xp, mask, dy.dtype)
        self.device.parallel_map(lambda s: xp.multiply(dy[s], mask[s], out=dx[s]), row_parts(self.device, dx))
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
