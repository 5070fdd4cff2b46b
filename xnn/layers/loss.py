"""Losses: ``loss = crit.forward(pred, target)`` (a 0-d array), ``dpred = crit.backward()``."""
from __future__ import annotations

from .base import Layer


class SoftmaxCrossEntropy(Layer):
    """Mean cross-entropy of softmax(logits) against integer labels.

    Forward: L = -(1/N) sum_n log softmax(x_n)[t_n], with the log-sum-exp shifted by
    the row max so large logits never overflow.
    Backward: dL/dx = (softmax(x) - onehot(t)) / N, scaled by ``dloss`` (default 1).
    Shapes: logits (N, K), labels (N,) integers in [0, K).  Anything else is refused
    with a ValueError: a negative label would silently pick class K - t, and on a GPU
    an out-of-range one would wrap around too.  The range check costs one
    device->host sync per call; a training loop whose labels were checked when they
    were loaded passes ``check_labels=False``.
    """

    def __init__(self, device=None, check_labels: bool = True):
        super().__init__(device)
        self.check_labels = check_labels
        self._p = self._t = None

    def _check(self, logits, labels):
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects (N, K) logits, got shape {tuple(logits.shape)}; "
                             "flatten other axes into N first")
        n, k = logits.shape
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must have shape ({n},) for logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
        if self.check_labels:
            bad = (labels < 0) | (labels >= k)
            if bad.any():
                raise ValueError(f"labels must lie in [0, {k}); found {int(labels[bad.argmax()])}")

    def forward(self, logits, labels):
        xp = self.xp
        self.device.check(labels, "labels")
        self._check(logits, labels)
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
