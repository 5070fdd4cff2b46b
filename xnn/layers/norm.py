"""Instance normalisation (Ulyanov, Vedaldi & Lempitsky 2016), as in fast style-transfer networks."""
from __future__ import annotations

import numpy

from .base import Layer
from .layout import like


class InstanceNorm2d(Layer):
    """y = gamma * xhat + beta, xhat = (x - mu) / sqrt(var + eps), per sample and channel.

    Shapes: x, y (N, C, H, W); gamma, beta (C,) (``affine``; else 1 and 0).  mu and var are
    the mean and the biased variance over the M = H*W pixels of each (n, c), as PyTorch's
    InstanceNorm2d computes them (no running statistics: training and inference are the same).

    Backward, with s = 1 / sqrt(var + eps) and g = dy * gamma:
        dbeta = sum_{n,h,w} dy,   dgamma = sum_{n,h,w} dy * xhat,
        dx = s * (g - mean_hw(g) - xhat * mean_hw(g * xhat))
           = gamma * s * (dy - mean_hw(dy) - xhat * mean_hw(dy * xhat)).
    y and dx keep x's memory order (channels-last stays channels-last).
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True, dtype=numpy.float32, device=None):
        super().__init__(device)
        self.channels, self.eps, self.affine = channels, float(eps), affine
        if affine:
            self._set_params(gamma=numpy.ones(channels, dtype), beta=numpy.zeros(channels, dtype))
        self._clear_cache()

    def _clear_cache(self):
        self._xhat = self._inv_std = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"InstanceNorm2d expects (N, {self.channels}, H, W) input, got {tuple(x.shape)}")
        xp = self.xp
        scale = 1.0 / (x.shape[2] * x.shape[3])
        # sums over H, W by einsum: one pass in any memory order (mean(axis=(2, 3)) is 3x slower on
        # channels-last memory)
        mu = (xp.einsum("nchw->nc", x) * scale)[:, :, None, None]
        xhat = xp.subtract(x, mu.astype(x.dtype, copy=False), out=like(xp, x))
        var = (xp.einsum("nchw,nchw->nc", xhat, xhat) * scale)[:, :, None, None]
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        xhat *= inv_std
        self._xhat, self._inv_std = xhat, inv_std
        if not self.affine:
            return xhat.copy(order="K")
        y = xp.multiply(xhat, self.params["gamma"].reshape(1, -1, 1, 1), out=like(xp, x))
        y += self.params["beta"].reshape(1, -1, 1, 1)
        return y

    def backward(self, dy):
        xp, xhat = self.xp, self._xhat
        scale = 1.0 / (xhat.shape[2] * xhat.shape[3])
        sum_dy = xp.einsum("nchw->nc", dy)                        # per sample: dbeta's terms
        sum_dy_xhat = xp.einsum("nchw,nchw->nc", dy, xhat)        # per sample: dgamma's terms
        if self.affine and not self.frozen:
            self.grads["gamma"] = sum_dy_xhat.sum(axis=0)
            self.grads["beta"] = sum_dy.sum(axis=0)
        a = self._inv_std
        if self.affine:
            a = a * self.params["gamma"].reshape(1, -1, 1, 1)
        # dx = gamma * s * (dy - mean(dy) - xhat * mean(dy * xhat)), the means over H, W
        dx = xp.multiply(xhat, (sum_dy_xhat * scale)[:, :, None, None].astype(xhat.dtype, copy=False),
                         out=like(xp, xhat))
        xp.subtract(dy, dx, out=dx)
        dx -= (sum_dy * scale)[:, :, None, None].astype(xhat.dtype, copy=False)
        dx *= a
        return dx
