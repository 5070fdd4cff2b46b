"""Layers that only change shape."""
from __future__ import annotations

from .base import Layer


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W).

    ``order="chw"`` flattens channels-first (the NCHW memory order, as in Caffe /
    MatConvNet / PyTorch); ``order="hwc"`` flattens channels-last (as Keras' fc1
    expects: index = (h*W + w)*C + c).  Backward reshapes the gradient back.
    """

    def __init__(self, order: str = "chw", device=None):
        super().__init__(device)
        if order not in ("chw", "hwc"):
            raise ValueError(f"Flatten order must be 'chw' or 'hwc', got {order!r}")
        self.order = order
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        if self.order == "hwc" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        if self.order == "hwc" and len(self._shape) == 4:
            n, c, h, w = self._shape
            return dy.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return dy.reshape(self._shape)
