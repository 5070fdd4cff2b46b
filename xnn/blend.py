"""The one rule for style blend weights (Gatys style Grams, AdaIN statistics, the configs).

One finite weight >= 0 per style, not all 0; they are used normalised to sum 1.
None means equal weights.
"""
from __future__ import annotations

import math

from .errors import XnnError


def normalise_blend_weights(weights, count: int, name: str = "style_blend_weights") -> list:
    """Blend weights as Python floats summing to 1; a one-line XnnError naming ``name`` otherwise."""
    if weights is None:
        return [1.0 / count] * count
    try:
        weights = [float(v) for v in weights]
    except (TypeError, ValueError):
        raise XnnError(f"{name} must be a list of numbers, got {weights!r}") from None
    if len(weights) != count:
        raise XnnError(f"{name} has {len(weights)} weights for {count} style images; give one weight "
                       "per style image")
    if not all(math.isfinite(v) and v >= 0 for v in weights) or sum(weights) <= 0:
        raise XnnError(f"{name} must be finite numbers >= 0, not all 0; got {weights}")
    total = sum(weights)
    return [v / total for v in weights]
