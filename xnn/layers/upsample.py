"""Nearest-neighbour upsampling by an integer factor."""
from __future__ import annotations

from .base import Layer


class Upsample2d(Layer):
    """Repeat every pixel ``s`` times along H and W: (N, C, H, W) -> (N, C, sH, sW).

    Forward: y[n, c, i, j] = x[n, c, i // s, j // s]  (PyTorch's mode="nearest"
    for an integer factor).
    Backward: each input pixel fed an s x s block, so
    dx[n, c, i, j] = sum_{a, b < s} dy[n, c, i*s + a, j*s + b].

    Both are one broadcast / one reshaped sum, no loops.  The work is done on the
    channels-last view (N, H, W, C) and the result handed back as an NCHW view of
    channels-last memory, the layout :class:`Conv2d` produces and reads fastest.
    """

    def __init__(self, scale: int = 2, device=None):
        super().__init__(device)
        if int(scale) != scale or scale < 1:
            raise ValueError(f"Upsample2d scale must be a positive integer, got {scale!r}")
        self.scale = int(scale)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"Upsample2d expects (N, C, H, W) input, got {tuple(x.shape)}")
        s = self.scale
        n, c, h, w = x.shape
        xt = x.transpose(0, 2, 3, 1)[:, :, None, :, None, :]          # (N, H, 1, W, 1, C)
        y = self.xp.broadcast_to(xt, (n, h, s, w, s, c)).reshape(n, h * s, w * s, c)
        return y.transpose(0, 3, 1, 2)

    def backward(self, dy):
        s = self.scale
        n, c, hs, ws = dy.shape
        g = dy.transpose(0, 2, 3, 1).reshape(n, hs // s, s, ws // s, s, c)
        return g.sum(axis=(2, 4)).transpose(0, 3, 1, 2)
