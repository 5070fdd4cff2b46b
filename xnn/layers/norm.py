"""Instance normalisation (Ulyanov, Vedaldi & Lempitsky 2016), as in fast style-transfer networks."""
from __future__ import annotations

import numpy

from .base import Layer
from .layout import like, row_parts


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
        xp, dev = self.xp, self.device
        scale = 1.0 / (x.shape[2] * x.shape[3])
        # three sweeps, each in bands of rows side by side (row_parts): the sums, the centred copy
        # and its squares, the scaling.  Sums over H, W by einsum: one pass in any memory order
        # (mean(axis=(2, 3)) is 3x slower on channels-last memory)
        parts = row_parts(dev, x)
        mu = (sum(dev.parallel_map(lambda s: xp.einsum("nchw->nc", x[s]), parts)) * scale)
        mu = mu.astype(x.dtype, copy=False)[:, :, None, None]
        xhat = like(xp, x)

        def centre(s):
            d = xp.subtract(x[s], mu, out=xhat[s])
            return xp.einsum("nchw,nchw->nc", d, d)
        var = (sum(dev.parallel_map(centre, parts)) * scale)[:, :, None, None]
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        self._xhat, self._inv_std = xhat, inv_std
        y = like(xp, x)
        gamma = self.params["gamma"].reshape(1, -1, 1, 1) if self.affine else None

        def scale_band(s):
            xhat[s] *= inv_std
            if gamma is None:
                y[s] = xhat[s]
            else:
                xp.multiply(xhat[s], gamma, out=y[s])
                y[s] += self.params["beta"].reshape(1, -1, 1, 1)
        dev.parallel_map(scale_band, parts)
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
