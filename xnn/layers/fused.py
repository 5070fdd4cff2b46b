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
    function with the same weights, and give the same numbers bit for bit.

    Forward: z by the conv; then ReLU and the pool in one pass (``dev.relu_max_pool``): ReLU is
    monotone, so it commutes with the maximum, y = relu(max over the window of z), and one byte an
    output keeps the window offset the gradient goes to (255: none, the maximum was not > 0).  No
    ReLU output and no ReLU mask are stored.  Backward: dz = dy at each window's offset and 0
    elsewhere, in one pass (``dev.relu_max_pool_backward``), then the conv's backward (dW = X^T dz,
    db = sum dz, dx by the transposed conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=0, pool: int = 2, **conv):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, **conv)
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise ValueError(f"ConvReLUMaxPool2d pool must be a positive int, got {pool!r}")
        self.pool = pool

    def _clear_cache(self):
        super()._clear_cache()
        self._winner = None

    def forward(self, x):
        xp, dev, k = self.xp, self.device, self.pool
        if x.ndim == 4 and x.shape[1] == self.in_channels:         # else the conv's error message
            ho, wo = self.output_shape(*x.shape[2:])
            if ho // k < 1 or wo // k < 1:
                raise ValueError(f"ConvReLUMaxPool2d: the {ho}x{wo} conv output of a {x.shape[2]}x{x.shape[3]} "
                                 f"input is smaller than its {k}x{k} pool")
        z = super().forward(x)                                     # (N, O, Ho, Wo), channels-last memory
        n, o, ho, wo = z.shape
        y = xp.empty((n, ho // k, wo // k, o), dtype=z.dtype).transpose(0, 3, 1, 2)
        winner = xp.empty_like(y, dtype=xp.uint8)                  # y's memory order
        dev.parallel_map(lambda r: dev.relu_max_pool(z, y, winner, k, k, r), row_ranges(dev, y))
        self._winner = winner
        return y

    def backward(self, dy):
        xp, dev, k, winner = self.xp, self.device, self.pool, self._winner
        if dy.shape != winner.shape:                               # the compiled loops trust the shapes
            raise ValueError(f"ConvReLUMaxPool2d.backward expects dy of the output's shape {winner.shape}, "
                             f"got {tuple(dy.shape)}")
        dy = in_layout_of(xp, dy, winner)
        n, h, w, _ = self._xshape
        dz = xp.empty((n, *self.output_shape(h, w), self.out_channels), dtype=dy.dtype).transpose(0, 3, 1, 2)
        dz[:, :, dy.shape[2] * k:] = 0                             # the floor-mode remainder
        dz[:, :, :, dy.shape[3] * k:] = 0
        dev.parallel_map(lambda r: dev.relu_max_pool_backward(dy, winner, dz, k, k, r), row_ranges(dev, dy))
        return super().backward(dz)
