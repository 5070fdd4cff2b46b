"""Nearest-neighbour upsampling by an integer factor."""
from __future__ import annotations

import numpy

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


#: PHASE_TAPS[a, r, k]: output rows 2i + a of a 3x3 convolution over a x2 nearest-upsampled image read
#: kernel row k from low-resolution row i + r - 1 (r = 0, 1, 2): for a = 0 the kernel rows (0, 1, 2) fall
#: on rows (i - 1, i, i), for a = 1 on (i, i, i + 1).  The same holds for columns.
PHASE_TAPS = numpy.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],
                          [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], dtype=numpy.float64)


class UpsampleConv2d(Layer):
    """x2 nearest upsampling, then a 3x3 convolution with reflection padding 1, as one layer that
    never makes the upsampled image: (N, C, H, W) -> (N, O, 2H, 2W), W (O, C, 3, 3), no bias.

    Forward: each output phase (a, b) = (row, column) parity reads a 2x2 window of the low-resolution
    image, so the four phases are one 3x3 convolution of x (edge-padded by 1: reflection padding of the
    upsampled image is edge padding of x) with 4O output channels, W2[a, b, o] = P_a W[o] P_b^T
    (P = ``PHASE_TAPS``), followed by an interleave: y[n, o, 2i + a, 2j + b] = z[n, (a, b, o), i, j].
    Four times fewer pixels go through the convolution; the upsampled image's 9 taps per output become
    4 non-zero ones (the GEMM also multiplies the zeros, on a wider and shorter matrix).
    Backward: de-interleave dy into dz; the inner convolution gives dx_pad and dW2;
    dW[o] = sum_{a,b} P_a^T dW2[a, b, o] P_b, and dx is dx_pad with its border added onto the edge
    rows and columns it copied.  Equal to Upsample2d(2) then Conv2d(C, O, 3, padding=1,
    padding_mode="reflect", bias=False) up to float rounding (tested, forward and backward).
    """

    def __init__(self, in_channels: int, out_channels: int, seed=0, dtype=numpy.float32, device=None):
        super().__init__(device)
        from .conv import Conv2d
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = Conv2d(in_channels, 4 * out_channels, 3, padding=0, bias=False, device=self.device)
        ref = Conv2d(in_channels, out_channels, 3, padding=1, bias=False, seed=seed, dtype=dtype)
        self._set_params(W=ref.params["W"])     # the same initial weights as the two layers it replaces
        self._w2 = self._taps = None

    def _phase_taps(self, dtype):
        """PHASE_TAPS on the layer's device in ``dtype``: copied there once, not on every call."""
        if self._taps is None or self._taps.dtype != dtype:
            self._taps = self.device.asarray(PHASE_TAPS.astype(dtype))
        return self._taps

    def _phase_weights(self):
        """W2, rebuilt from W on every call (an optimiser may change W in place; it costs O*C*324
        multiply-adds) except while frozen, when it is kept with the inner convolution's caches."""
        w = self.params["W"]
        if self.frozen and self._w2 is not None and self._w2[0] is w:
            return self._w2[1]
        taps = self._phase_taps(w.dtype)
        w2 = self.xp.einsum("ark,bsl,ockl->abocrs", taps, taps, w).reshape(4 * self.out_channels,
                                                                          self.in_channels, 3, 3)
        self._w2 = (w, self.xp.ascontiguousarray(w2))
        return self._w2[1]

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UpsampleConv2d expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        n, _, h, w = x.shape
        o = self.out_channels
        self.conv.params["W"] = self._phase_weights()
        self.conv.needs_input_grad = self.needs_input_grad
        xpad = self.xp.pad(x.transpose(0, 2, 3, 1), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        z = self.conv.forward(xpad.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)     # (N, H, W, 4O) memory
        y = z.reshape(n, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, o)
        return y.transpose(0, 3, 1, 2)

    def backward(self, dy):
        n, o, h2, w2 = dy.shape
        h, w = h2 // 2, w2 // 2
        dz = dy.transpose(0, 2, 3, 1).reshape(n, h, 2, w, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, 4 * o)
        dxpad = self.conv.backward(dz.transpose(0, 3, 1, 2))
        if not self.frozen:
            taps = self._phase_taps(self.params["W"].dtype)
            dw2 = self.conv.grads["W"].reshape(2, 2, o, self.in_channels, 3, 3)
            self.grads["W"] = self.xp.einsum("ark,bsl,abocrs->ockl", taps, taps, dw2)
        if dxpad is None:
            return None
        g = dxpad.transpose(0, 2, 3, 1)                                    # (N, H+2, W+2, C)
        dx = self.xp.ascontiguousarray(g[:, 1:-1, 1:-1])
        dx[:, 0] += g[:, 0, 1:-1]
        dx[:, -1] += g[:, -1, 1:-1]
        dx[:, :, 0] += g[:, 1:-1, 0]
        dx[:, :, -1] += g[:, 1:-1, -1]
        dx[:, 0, 0] += g[:, 0, 0]
        dx[:, 0, -1] += g[:, 0, -1]
        dx[:, -1, 0] += g[:, -1, 0]
        dx[:, -1, -1] += g[:, -1, -1]
        return dx.transpose(0, 3, 1, 2)

    def freeze(self):
        self.conv.freeze()
        self._w2 = None
        return super().freeze()

    def unfreeze(self):
        self.conv.unfreeze()
        return super().unfreeze()

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self.conv.to(device, dtype)
        return self

    def _clear_cache(self):
        self._w2 = self._taps = None
