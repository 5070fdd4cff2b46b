"""Tiles with halos: evaluating a convolutional network on an image piece by piece, exactly.

A feature at index k of a layer reached through convolutions and pools sees input pixels
[k*J - P, k*J - P + R - 1] (J the layer's jump in input pixels, P the padding it has
accumulated, R its receptive field; :func:`receptive_field`).  A tile that owns input
rows [y0, y1) is run on rows [y0 - halo, y1 + halo] (clipped to the image); when

    halo >= P  and  halo >= R - P - J,    and y0, y1, halo are multiples of the deepest J,

the features the tile owns, rows [y0/J, y1/J), equal the whole image's bit for bit
(in exact arithmetic): no tile border padding reaches them, and every pool window is the
same as in the whole image.  Backward through the tile from gradients injected on its own
features only gives exactly those features' share of the input gradient, so summing over
tiles gives the whole image's gradient.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction


@dataclasses.dataclass(frozen=True)
class Geometry:
    jump: Fraction     # input pixels per feature step (below 1 after upsampling)
    offset: Fraction   # P: padding accumulated in input pixels
    field: Fraction    # R: receptive field in input pixels

    @property
    def halo(self) -> int:
        """Whole input pixels a tile needs beyond its own region on each side (rounded up)."""
        return math.ceil(max(self.offset, self.field - self.offset - self.jump, 0))


@dataclasses.dataclass(frozen=True)
class Window:
    """A layer's sliding window (square), for :func:`receptive_field` from a table of layers
    without building them: the fields it reads of Conv2d and the pools."""
    kernel_size: tuple
    stride: tuple
    padding: int


def receptive_field(layers) -> Geometry:
    """Geometry after a sequence of layers (objects with kernel_size / stride / padding, like
    Conv2d and the pools; ReflectionPad2d's ``p``; Upsample2d's ``scale``; anything else is
    point-wise)."""
    jump, offset, field = Fraction(1), Fraction(0), Fraction(1)
    for layer in layers:
        if hasattr(layer, "kernel_size"):
            k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding
        elif type(layer).__name__ == "ReflectionPad2d":
            k, s, p = 1, 1, layer.p
        elif type(layer).__name__ == "Upsample2d":
            jump /= layer.scale
            continue
        else:
            continue
        field += (k - 1) * jump
        offset += p * jump
        jump *= s
    return Geometry(jump, offset, field)


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


@dataclasses.dataclass(frozen=True)
class Tile:
    own: tuple        # (y0, y1, x0, x1): input pixels this tile is responsible for
    extent: tuple     # (Y0, Y1, X0, X1): input pixels it is run on (own + halo, clipped)

    def slices(self):
        y0, y1, x0, x1 = self.extent
        return slice(y0, y1), slice(x0, x1)

    def own_features(self, jump: int):
        """(rows, cols) slices of the tile's own features in a layer of this jump, in the
        tile's local feature coordinates (floor division: VGG-style same-padding convs and
        floor-mode pools, feature size = floor(input size / jump))."""
        (y0, y1, x0, x1), (ey0, _, ex0, _) = self.own, self.extent
        return (slice(y0 // jump - ey0 // jump, y1 // jump - ey0 // jump),
                slice(x0 // jump - ex0 // jump, x1 // jump - ex0 // jump))


def plan(height: int, width: int, tile: int, halo: int, align: int) -> list[Tile]:
    """Tiles whose own regions (``tile`` x ``tile``, the last ones shorter) cover the image.

    ``tile`` and ``halo`` are rounded up to multiples of ``align`` (the deepest jump), so
    every own region and every extent starts on the pooling grid.
    """
    tile, halo = round_up(max(tile, align), align), round_up(halo, align)

    def spans(size):
        return [(a, min(a + tile, size), max(0, a - halo), min(size, a + tile + halo))
                for a in range(0, size, tile)]

    return [Tile((y0, y1, x0, x1), (ey0, ey1, ex0, ex1))
            for y0, y1, ey0, ey1 in spans(height) for x0, x1, ex0, ex1 in spans(width)]


def largest_tile(free_bytes, fixed_bytes: float, bytes_per_pixel: float, halo: int, align: int,
                 min_tile: int = 64) -> int:
    """The side of the largest square tile (a multiple of ``align``) whose run, the tile and its
    halo on every side, fits in 90 % of ``free_bytes`` beside ``fixed_bytes``, at
    ``bytes_per_pixel`` of the run's pixels; 0 when not even ``min_tile`` fits.  The one
    planner of style transfer (:func:`xnn.style.memory.plan_tiles`) and AdaIN
    (:func:`xnn.style.feedforward.tile_for`); each says first whether the whole image fits."""
    budget = 0.9 * free_bytes
    side = math.sqrt(max(budget - fixed_bytes, 0) / bytes_per_pixel) - 2 * halo
    tile = int(side // align) * align
    return tile if tile >= min_tile else 0
