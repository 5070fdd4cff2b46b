"""Losses: ``loss = crit.forward(pred, target)`` (a 0-d array), ``dpred = crit.backward()``."""
from __future__ import annotations

from .base import Layer


class SoftmaxCrossEntropy(Layer):
    """Mean cross-entropy of softmax(logits) against integer labels.

    Forward: L = -(1/N) sum_n log softmax(x_n)[t_n], with the log-sum-exp shifted by
    the row max so large logits never overflow.
    Backward: dL/dx = (softmax(x) - onehot(t)) / N, scaled by ``dloss`` (default 1).
    Shapes: logits (N, K), labels (N,) integers in [0, K).
    """

    def __init__(self, device=None):
        super().__init__(device)
        self._p = self._t = None

    def forward(self, logits, labels):
        xp = self.xp
        self.device.check(labels, "labels")
        z = logits - logits.max(axis=1, keepdims=True)
        lse = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        logp = z - lse
        self._p, self._t = xp.exp(logp), labels
        n = logits.shape[0]
        return -logp[xp.arange(n), labels].mean()

    def backward(self, dloss=1.0):
        xp = self.xp
        n = self._p.shape[0]
        d = self._p.copy()
        d[xp.arange(n), self._t] -= 1
        d *= dloss / n
        return d

    def _clear_cache(self):
        self._p = self._t = None
