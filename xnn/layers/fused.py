"""A convolution followed by ReLU and max pooling, as one layer (the MNIST CNN's blocks)."""
from __future__ import annotations

from .conv import Conv2d
from .layout import in_layout_of, row_ranges


class ConvReLUMaxPool2d(Conv2d):
    """y = maxpool_k(relu(conv(x))): a :class:`Conv2d` whose output goes through ReLU and a k x k
    max pool with stride k (floor mode: a remainder row or column of the conv output is dropped).

    Shapes: x (N, C, H, W), W (O, C, kh, kw), b (O,); the conv output z (N, O, Ho, Wo) as
    :class:`Conv2d`; y (N, O, Ho // k, Wo // k).  The parameters, their names, initialisation
    and checkpoints are the conv's, so ``[conv, ReLU, MaxPool2d(k)]`` and this layer are the same
    function with the same weights.

    Forward: ReLU and max pooling commute (ReLU is monotone), so y = relu(max over the window of z),
    and the window offset that wins where the maximum is > 0 is kept (one byte an output;
    ``dev.relu_max_pool``).  Backward: the conv's gradient dz is dy at each window's winning offset
    and 0 elsewhere, then the conv's backward (dW = X^T dz, db = sum dz, dx by the transposed conv).

    Fused path: where the layer needs no input gradient (a network's first layer), the stride is 1,
    the padding zeros, kh * kw * C is small (:data:`FUSED_MAX_TAPS`) and the device offers it
    (``dev.offers_conv_relu_max_pool``), the three run in one pass (``dev.conv_relu_max_pool``: a
    compiled loop on the CPU, for a 3x3 kernel and pool 2) that never stores z,
    and the weight gradients come from the winners alone: dW[a, b, c, o] = sum over windows of
    dy * xpad[winning pixel + (a, b), c], db[o] = sum of the passing dy.  Same maths as the
    three steps, other rounding (the tests compare the two).
    """

    #: the most taps x input channels for the fused path (a direct loop: a GEMM wins on wider inputs)
    FUSED_MAX_TAPS = 36

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=0, pool: int = 2, **conv):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, **conv)
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise ValueError(f"ConvReLUMaxPool2d pool must be a positive int, got {pool!r}")
        self.pool = pool

    def _clear_cache(self):
        super()._clear_cache()
        self._winner = self._zshape = None

    def _fusable(self, x) -> bool:
        (kh, kw), c = self.kernel_size, self.in_channels
        return (not self.needs_input_grad and self.stride == (1, 1) and self.padding_mode == "zeros"
                and kh * kw * c <= self.FUSED_MAX_TAPS and x.dtype == self.params["W"].dtype
                and self.device.offers_conv_relu_max_pool(self.kernel_size, self.pool, x.dtype))

    def forward(self, x):
        xp, dev, k = self.xp, self.device, self.pool
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            return super().forward(x)                              # its error message
        n, _, h, w = x.shape
        ho, wo = self.output_shape(h, w)
        if ho // k < 1 or wo // k < 1:
            raise ValueError(f"ConvReLUMaxPool2d: the {ho}x{wo} conv output of a {h}x{w} input is "
                             f"smaller than its {k}x{k} pool")
        o, p = self.out_channels, self.padding
        y = xp.empty((n, ho // k, wo // k, o), dtype=x.dtype)     # channels-last, as a conv output
        winner = xp.empty(y.shape, dtype=xp.uint8)
        if self._fusable(x):
            xpad = xp.zeros((n, h + 2 * p, w + 2 * p, self.in_channels), dtype=x.dtype)
            xpad[:, p:p + h, p:p + w] = x.transpose(0, 2, 3, 1)
            wk = xp.ascontiguousarray(self.params["W"].transpose(2, 3, 1, 0))
            b = self.params["b"] if "b" in self.params else xp.zeros(o, dtype=x.dtype)
            dev.parallel_map(lambda r: dev.conv_relu_max_pool(xpad, wk, b, y, winner, k, r), row_ranges(dev, y, axis=1))
            self._xpad = None if self.frozen else xpad
            self._xshape, self._zshape, self._winner = (n, h, w, self.in_channels), None, winner
            return y.transpose(0, 3, 1, 2)
        z = super().forward(x)                                     # (N, O, Ho, Wo), channels-last memory
        y, winner = y.transpose(0, 3, 1, 2), winner.transpose(0, 3, 1, 2)
        dev.parallel_map(lambda r: dev.relu_max_pool(z, y, winner, k, k, r), row_ranges(dev, y))
        self._zshape, self._winner = z.shape, winner
        return y

    def backward(self, dy):
        xp, dev, k, winner = self.xp, self.device, self.pool, self._winner
        if self._zshape is not None:                               # the three steps
            dy = in_layout_of(xp, dy, winner)
            n, o, ho, wo = self._zshape                            # dz channels-last, as z was
            dz = xp.empty((n, ho, wo, o), dtype=dy.dtype).transpose(0, 3, 1, 2)
            dz[:, :, dy.shape[2] * k:] = 0                         # the floor-mode remainder
            dz[:, :, :, dy.shape[3] * k:] = 0
            dev.parallel_map(lambda r: dev.relu_max_pool_backward(dy, winner, dz, k, k, r), row_ranges(dev, dy))
            return super().backward(dz)
        if self.frozen:                                            # fused, nothing to compute
            return None
        dy = xp.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        (kh, kw), c, o = self.kernel_size, self.in_channels, self.out_channels
        bands = row_ranges(dev, dy, axis=1)
        parts = [(xp.zeros((kh, kw, c, o), dtype=dy.dtype), xp.zeros(o, dtype=dy.dtype)) for _ in bands]
        dev.parallel_map(lambda i: dev.conv_relu_max_pool_grads(self._xpad, dy, winner, *parts[i], k, bands[i]),
                         range(len(bands)))
        dw, db = parts[0]
        for more_w, more_b in parts[1:]:
            dw += more_w
            db += more_b
        self.grads["W"] = dw.transpose(3, 2, 0, 1)
        if "b" in self.params:
            self.grads["b"] = db
        return None
