"""Element-wise and row-wise activations."""
from __future__ import annotations

from .base import Layer


def channels_last(a) -> bool:
    """True for a 4-D (N, C, H, W) array whose memory is NHWC (a conv output)."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def in_layout_of(xp, a, ref):
    """``a`` (same shape as ``ref``) in ref's NHWC memory order when ref has it and ``a`` lacks it.

    An element-wise op between NCHW and NHWC operands walks one of them across its
    strides (NumPy: 70 ms for 16M floats); one transposing copy (27 ms) and a
    same-layout op (8 ms) are much cheaper.
    """
    if channels_last(ref) and not channels_last(a):
        return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return a


def like(xp, a, dtype=None):
    """An uninitialised array of a's shape in a's memory order (order "K" on every backend).

    Element-wise ops write into it with ``out=``: CuPy allocates fresh results in C order,
    which would turn a channels-last conv output into NCHW memory and cost the next
    conv a transposing copy.
    """
    return xp.empty_like(a, dtype=dtype)


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
