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
        dx = s * (g - mean_hw(g) - xhat * mean_hw(g * xhat)).
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
        mu = x.mean(axis=(2, 3), keepdims=True)
        xhat = xp.subtract(x, mu, out=like(xp, x))
        var = (xhat * xhat).mean(axis=(2, 3), keepdims=True)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat *= inv_std
        self._xhat, self._inv_std = xhat, inv_std
        if not self.affine:
            return xhat.copy(order="K")
        y = xp.multiply(xhat, self.params["gamma"].reshape(1, -1, 1, 1), out=like(xp, x))
        y += self.params["beta"].reshape(1, -1, 1, 1)
        return y

    def backward(self, dy):
        xp, xhat = self.xp, self._xhat
        if self.affine and not self.frozen:
            self.grads["gamma"] = (dy * xhat).sum(axis=(0, 2, 3))
            self.grads["beta"] = dy.sum(axis=(0, 2, 3))
        g = dy * self.params["gamma"].reshape(1, -1, 1, 1) if self.affine else dy
        dx = xp.subtract(g, g.mean(axis=(2, 3), keepdims=True), out=like(xp, xhat))
        dx -= xhat * (g * xhat).mean(axis=(2, 3), keepdims=True)
        dx *= self._inv_std
        return dx
