"""2-D convolution (cross-correlation, as in every framework): im2col or Winograd GEMMs."""
from __future__ import annotations

import numpy

from . import conv_algorithms as ca
from .base import Layer, as_rng, column_sums, init_weight, pair, same_padding
from .padding import pad_hw_backward


class Conv2d(Layer):
    """y[n, o, i, j] = b[o] + sum_{c, a, b} W[o, c, a, b] * xpad[n, c, i*s + a, j*s + b].

    Shapes: x (N, C, H, W), W (O, C, kh, kw) (OIHW, as PyTorch), b (O,),
    y (N, O, Ho, Wo) with Ho = (H + 2p - kh) // s + 1.

    Forward: the input is padded channels-last and convolved by one of
    :mod:`~xnn.layers.conv_algorithms` (``algorithm``: "auto" picks by a fixed rule
    of the shape, so a seed gives the same numbers every run; "autotune" times the
    applicable ones once per shape and process; "im2col", "winograd2", "winograd4", "winograd6",
    "tapsum", "fft" force one; the environment variable XNN_CONV_ALGO does the same for "auto" layers).  The output
    is an NCHW-shaped view of NHWC memory, so the next layer's channels-last view is free.
    Backward: dW = X^T dY (X the im2col matrix, rebuilt chunk by chunk from the kept
    padded input; after a Winograd forward with 128 channels or more in and out, Winograd's
    F(3x3, m x m) instead, :func:`conv_algorithms.weight_grad`), db = sum dY.  For stride 1 the input gradient is itself a
    convolution, dx = conv(pad(dY, k-1-p), W'), W'[c, o, a, b] = W[o, c, k-1-a, k-1-b],
    so it takes the same fast algorithms; other strides fold dY Wm^T back by col2im.
    A frozen layer keeps no input and caches its transformed weights, forward and
    input-gradient (dropped when
    ``params["W"]`` is replaced or the layer is frozen again; after writing into W
    in place call ``_clear_cache()``).  ``padding_mode`` is "zeros" or "reflect".
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, padding_mode: str = "zeros", init: str = "he", seed=0,
                 dtype=numpy.float32, device=None, algorithm: str = "auto"):
        super().__init__(device)
        kh, kw = pair(kernel_size, "Conv2d kernel_size")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = (kh, kw), pair(stride, "Conv2d stride")
        self.padding = same_padding(padding, "Conv2d padding")
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}; choose 'zeros' or 'reflect'")
        self.padding_mode = padding_mode
        if algorithm not in ca.CHOICES:
            raise ValueError(f"unknown conv algorithm {algorithm!r}; choose one of {', '.join(ca.CHOICES)}")
        if algorithm in ca.ALGORITHMS and not ca.applicable(algorithm, kh, kw, *self.stride):
            raise ValueError(f"conv algorithm {algorithm!r} needs {ca.requirement(algorithm)}; "
                             f"choose one of {', '.join(ca.CHOICES)}")
        self.algorithm = algorithm
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        params = {"W": init_weight(init, as_rng(seed), (out_channels, in_channels, kh, kw), fan_in, fan_out, dtype)}
        if bias:
            params["b"] = numpy.zeros(out_channels, dtype)
        self._set_params(**params)
        self._clear_cache()

    def _clear_cache(self):
        self._xpad = self._xshape = None
        self._wcache = {}
        self.last_algorithms = {}

    def freeze(self):
        self._wcache = {}
        return super().freeze()

    def output_shape(self, h: int, w: int):
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - kh) // sh + 1, (w + 2 * p - kw) // sw + 1

    # ------------------------------------------------------------ helpers
    def _weights(self, algorithm, direction):
        """Weights prepared for ``algorithm`` and ``direction`` ("fwd" or "dx").

        Both are cached while the layer is frozen (Winograd's are 1.8x / 4x the size of
        W, so a frozen VGG19 holds about 9x its weights): rebuilding the input-gradient
        ones on every backward cost about 5 % of a style step.
        """
        w = self.params["W"]
        hit = self._wcache.get((algorithm, direction))
        if self.frozen and hit is not None and hit[0] is w:
            return hit[1]
        prep = ca.prepare_weights(self.device, w if direction == "fwd" else ca.flipped_weights(w), algorithm)
        if self.frozen:
            self._wcache[(algorithm, direction)] = (w, prep)
        return prep

    def _conv(self, x, p, mode, direction, bias, stride):
        """(y, xpad, algorithm) of the channels-last x, by :func:`conv_algorithms.convolve`;
        xpad (kept for dW) only in the forward of a layer that is not frozen, else None."""
        out_channels = self.out_channels if direction == "fwd" else self.in_channels
        keep = direction == "fwd" and not self.frozen
        y, xpad, algo = ca.convolve(self.device, x, self.algorithm, lambda a: self._weights(a, direction),
                                    bias, self.kernel_size, stride, p, mode, out_channels, direction, keep)
        if self.algorithm == "autotune":     # keep only the chosen algorithm's weights
            self._wcache = {k: v for k, v in self._wcache.items() if k[1] != direction or k[0] == algo}
        self.last_algorithms[direction] = algo
        return y, xpad, algo

    # ------------------------------------------------------------ passes
    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        (kh, kw), p = self.kernel_size, self.padding
        n, _, h, w = x.shape
        ho, wo = self.output_shape(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d input {h}x{w} is smaller than its {kh}x{kw} kernel")
        y, xpad, _ = self._conv(x.transpose(0, 2, 3, 1), p, self.padding_mode, "fwd",
                                self.params.get("b"), self.stride)
        self._xshape = (n, h, w, self.in_channels)
        self._xpad = None if self.frozen else xpad
        return y.transpose(0, 3, 1, 2)

    def backward(self, dy):
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        n, o, ho, wo = dy.shape
        dy = self.xp.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        if not self.frozen:
            c = self.in_channels
            dwm = ca.weight_grad(self.device, self._xpad, dy, kh, kw, sh, sw, self.last_algorithms.get("fwd"))
            self.grads["W"] = dwm.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
            if "b" in self.params:
                self.grads["b"] = column_sums(self.xp, dy.reshape(-1, o))
        if not self.needs_input_grad:
            return None
        if (sh, sw) == (1, 1) and kh == kw and p <= kh - 1:
            if self.padding_mode == "zeros":
                dx, _, _ = self._conv(dy, kh - 1 - p, "zeros", "dx", None, (1, 1))
            else:
                dxpad, _, _ = self._conv(dy, kh - 1, "zeros", "dx", None, (1, 1))
                dx = pad_hw_backward(dxpad, p, self.padding_mode)
            return dx.transpose(0, 3, 1, 2)
        n, h, w, c = self._xshape
        dcols = (dy.reshape(-1, o) @ self._weights("im2col", "fwd").T).reshape(n, ho, wo, kh, kw, c)
        hp, wp = h + 2 * p, w + 2 * p
        dxpad = self.device.col2im(dcols, (n, hp, wp, c), kh, kw, sh, sw)
        return pad_hw_backward(dxpad, p, self.padding_mode).transpose(0, 3, 1, 2)
