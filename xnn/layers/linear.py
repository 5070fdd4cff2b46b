"""Fully connected layer."""
from __future__ import annotations

import numpy

from .base import Layer, as_rng, column_sums, init_weight


class Linear(Layer):
    """y = x W + b.

    Shapes: x (N, in), W (in, out), b (out,), y (N, out).
    Backward: dx = dy W^T,  dW = x^T dy,  db = sum_n dy.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he",
                 seed=0, dtype=numpy.float32, device=None):
        super().__init__(device)
        self.in_features, self.out_features = in_features, out_features
        rng = as_rng(seed)
        params = {"W": init_weight(init, rng, (in_features, out_features), in_features, out_features, dtype)}
        if bias:
            params["b"] = numpy.zeros(out_features, dtype)
        self._set_params(**params)
        self._x = None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects (N, {self.in_features}) input, got {tuple(x.shape)}")
        if not self.frozen:
            self._x = x
        y = x @ self.params["W"]
        if "b" in self.params:
            y += self.params["b"]
        return y

    def backward(self, dy):
        if not self.frozen:
            self.grads["W"] = self._x.T @ dy
            if "b" in self.params:
                self.grads["b"] = column_sums(self.xp, dy)
        return dy @ self.params["W"].T if self.needs_input_grad else None

    def _clear_cache(self):
        self._x = None
