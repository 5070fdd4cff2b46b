"""2-D convolution (cross-correlation, as in every framework) via im2col + one GEMM."""
from __future__ import annotations

import numpy

from .base import Layer, as_rng, init_weight
from .padding import pad_hw, pad_hw_backward


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Conv2d(Layer):
    """y[n, o, i, j] = b[o] + sum_{c, a, b} W[o, c, a, b] * xpad[n, c, i*s + a, j*s + b].

    Shapes: x (N, C, H, W), W (O, C, kh, kw) (OIHW, as PyTorch), b (O,),
    y (N, O, Ho, Wo) with Ho = (H + 2p - kh) // s + 1.

    Forward: the padded input is taken channels-last, unrolled to a column matrix
    X (N*Ho*Wo, kh*kw*C) with channels innermost, and multiplied once by
    Wm (kh*kw*C, O).  The output is returned as an NCHW-shaped view of NHWC
    memory, so the next layer's channels-last view costs nothing.
    Backward: dWm = X^T dY,  db = sum dY,  dX = dY Wm^T, folded back to pixels by
    col2im (the adjoint of im2col) and un-padded.  A frozen layer keeps no X and
    computes only dx.
    ``padding_mode`` is "zeros" or "reflect".
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, padding_mode: str = "zeros", init: str = "he", seed=0,
                 dtype=numpy.float32, device=None):
        super().__init__(device)
        kh, kw = _pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), _pair(stride), int(padding)
        self.padding_mode = padding_mode
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        params = {"W": init_weight(init, as_rng(seed), (out_channels, in_channels, kh, kw), fan_in, fan_out, dtype)}
        if bias:
            params["b"] = numpy.zeros(out_channels, dtype)
        self._set_params(**params)
        self._clear_cache()

    def _clear_cache(self):
        self._cols = self._xshape = self._wmat = None

    def _weight_matrix(self):
        """W as (kh*kw*C, O), matching the (a, b, c) order of the columns."""
        o = self.out_channels
        return self.params["W"].transpose(2, 3, 1, 0).reshape(-1, o)

    def output_shape(self, h: int, w: int):
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - kh) // sh + 1, (w + 2 * p - kw) // sw + 1

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        n, _, h, w = x.shape
        ho, wo = self.output_shape(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d input {h}x{w} is smaller than its {kh}x{kw} kernel")
        xpad = pad_hw(self.xp, x.transpose(0, 2, 3, 1), p, self.padding_mode)
        cols = self.device.im2col(xpad, kh, kw, sh, sw)
        wmat = self._weight_matrix()
        y = cols @ wmat
        if "b" in self.params:
            y += self.params["b"]
        self._xshape, self._wmat = xpad.shape, wmat
        self._cols = None if self.frozen else cols
        return y.reshape(n, ho, wo, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, dy):
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        n, o, ho, wo = dy.shape
        dy2 = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)
        if not self.frozen:
            c = self.in_channels
            self.grads["W"] = (self._cols.T @ dy2).reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
            if "b" in self.params:
                self.grads["b"] = dy2.sum(axis=0)
        if not self.needs_input_grad:
            return None
        dcols = (dy2 @ self._wmat.T).reshape(n, ho, wo, kh, kw, self.in_channels)
        dxpad = self.device.col2im(dcols, self._xshape, kh, kw, sh, sw)
        return pad_hw_backward(dxpad, p, self.padding_mode).transpose(0, 3, 1, 2)
