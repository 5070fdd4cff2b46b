"""Memory of a style-transfer run, and the largest tile that fits.

Two parts add up:

* one evaluation (a forward and a backward through VGG19 to relu5_1, float32) over the
  pixels it runs on: the whole image untiled, or one tile plus its halo.  Measured:
  FIXED_BYTES + EVAL_BYTES_PER_PIXEL * pixels is a line through the peaks of CPU runs at
  512 px (1.14 GB) and 1024 px (3.33 GB);
* the arrays that always span the whole image, per pixel: the image, its gradient and
  the TV gradient (float32, 3 channels: 36 B), the relu4_2 content target (512 channels
  at 1/64 of the pixels: 32 B), and the optimiser's state, counted from what each
  algorithm stores: Adam's two moments (24 B); the on-device L-BFGS-B's m (s, y) pairs
  (24 B each, float32) plus its iterate, gradients, breakpoints, Cauchy point and steps
  (168 B); SciPy's L-BFGS-B on the host in float64 (2 m n + 5 n + ... doubles for n = 3 per
  pixel: 48 B a pair plus about 170 B, 650 B for m = 10).
"""
from __future__ import annotations

import math

from ..errors import XnnError
from ..tiling import largest_tile

FIXED_BYTES = 400 * 2**20
EVAL_BYTES_PER_PIXEL = 4200
WHOLE_IMAGE_BYTES_PER_PIXEL = 68
#: per pixel of the device that runs the evaluation ("host": SciPy's L-BFGS-B state while a GPU
#: evaluates): (fixed, per L-BFGS pair)
OPTIMIZER_BYTES_PER_PIXEL = {"adam": (24, 0), "lbfgs-device": (168, 24), "lbfgs-scipy": (170, 48),
                             "host": (0, 0)}
#: the smallest tile worth running: below it the halo (80 px a side) dominates
MIN_TILE = 64


def whole_image_bytes(pixels: int, optimizer: str, history: int = 10) -> float:
    """Bytes of the arrays that span the whole image, with ``history`` L-BFGS pairs."""
    fixed, per_pair = OPTIMIZER_BYTES_PER_PIXEL[optimizer]
    return (WHOLE_IMAGE_BYTES_PER_PIXEL + fixed + per_pair * history) * pixels


def pairs_that_fit(pixels: int, optimizer: str, wanted: int, budget: float, least: int = 5) -> int:
    """``wanted`` L-BFGS pairs, or as many as keep the whole-image arrays within ``budget`` bytes
    (at least ``least``)."""
    fixed, per_pair = OPTIMIZER_BYTES_PER_PIXEL[optimizer]
    if per_pair == 0 or whole_image_bytes(pixels, optimizer, wanted) <= budget:
        return wanted
    fit = (budget / pixels - WHOLE_IMAGE_BYTES_PER_PIXEL - fixed) // per_pair
    return int(max(least, min(wanted, fit)))


def evaluation_bytes(pixels: int) -> float:
    return FIXED_BYTES + EVAL_BYTES_PER_PIXEL * pixels


def tile_extent(tile: int, halo: int, height: int, width: int) -> int:
    """Pixels of the largest tile plus its halo (clipped to the image)."""
    return min(tile + 2 * halo, height) * min(tile + 2 * halo, width)


def plan_tiles(height, width, free_bytes, optimizer, tile_size, halo, align, image_setting, style_shapes=(),
               history: int = 10):
    """The tile side to use (None: the whole image), or an XnnError that names what is too big.

    ``tile_size``: None (whole image), "auto" (whole image when it fits, else the largest
    tile that does) or an int.  ``style_shapes``: (h, w, setting, key) of the style images,
    whose targets are computed with the same tiles.  ``image_setting`` says how the output
    size was set, e.g. "image_size = 4096"; messages name the config key to change.
    """
    budget = 0.9 * (math.inf if free_bytes is None else free_bytes)
    free_gib = "unknown" if free_bytes is None else f"{free_bytes / 2**30:.1f}"
    whole = whole_image_bytes(height * width, optimizer, history)
    if whole + FIXED_BYTES > budget:
        raise XnnError(f"{image_setting}: a {height}x{width} px output needs about {whole / 2**30:.1f} GiB for its "
                       f"whole-image arrays (image, gradient, {optimizer} state) but only {free_gib} GiB are free; "
                       "use a smaller image_size" + (" or optimizer: adam" if optimizer != "adam" else "")
                       + (" or a smaller lbfgs_num_correction" if optimizer.startswith("lbfgs") else ""))
    shapes = [(height, width, image_setting, "image_size")] + list(style_shapes)
    if tile_size is None or tile_size == "auto":
        if all(evaluation_bytes(h * w) + whole <= budget for h, w, _, _ in shapes):
            return None
        if tile_size is None:
            h, w, setting, key = next(s for s in shapes if evaluation_bytes(s[0] * s[1]) + whole > budget)
            raise XnnError(f"{setting}: {h}x{w} px needs about {(evaluation_bytes(h * w) + whole) / 2**30:.1f} GiB "
                           f"untiled but only {free_gib} GiB are free; use a smaller {key} or tile_size: auto")
        tile = largest_tile(free_bytes, whole + FIXED_BYTES, EVAL_BYTES_PER_PIXEL, halo, align, MIN_TILE)
        if tile == 0:
            raise XnnError(f"{image_setting}: even a {MIN_TILE} px tile does not fit next to the whole-image arrays "
                           f"({whole / 2**30:.1f} GiB) in the {free_gib} GiB free; use a smaller image_size")
        return tile
    need = evaluation_bytes(tile_extent(tile_size, halo, height, width)) + whole
    if need > budget:
        raise XnnError(f"tile_size = {tile_size}: a tile with its {halo} px halo needs about {need / 2**30:.1f} GiB "
                       f"but only {free_gib} GiB are free; use a smaller tile_size or tile_size: auto")
    return tile_size
