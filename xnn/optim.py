"""Optimisers over named arrays: model parameters, or a raw image for style transfer.

    opt = Adam(net.trainable_params(), lr=1e-3)
    ...; net.backward(...); opt.step(net.grads)

Updates are in place, so layers see them without re-binding.  ``state_dict`` /
``load_state_dict`` give host copies for checkpoints (resume).
"""
from __future__ import annotations

import numpy

from .backends import device_of
from .errors import XnnError


class Optimizer:
    def __init__(self, params: dict, lr: float):
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.params = params
        self.lr = lr
        self.t = 0
        self.slots: dict = {}  # name -> dict of state arrays

    def step(self, grads: dict):
        self.t += 1
        for name, p in self.params.items():
            g = grads.get(name)
            if g is not None:
                self._update(name, p, g)

    def _update(self, name, p, g):
        raise NotImplementedError

    def state_dict(self) -> dict:
        out = {"t": numpy.asarray(self.t)}
        for name, slot in self.slots.items():
            for k, v in slot.items():
                out[f"{name}/{k}"] = device_of(v).to_numpy(v).copy()
        return out

    #: the state arrays this optimiser keeps per parameter
    SLOTS: tuple = ()

    def load_state_dict(self, state: dict):
        """Restore :meth:`state_dict` output; an XnnError names any key or shape that does not fit."""
        kind = type(self).__name__
        if "t" not in state:
            raise XnnError(f"{kind} state has no step count 't' (keys: {', '.join(sorted(state)[:6])})")
        slots = {}
        for key, value in state.items():
            if key == "t":
                continue
            name, _, k = key.rpartition("/")
            if name not in self.params or k not in self.SLOTS:
                raise XnnError(f"{kind} state entry {key!r} does not fit this optimiser (parameters: "
                               f"{', '.join(list(self.params)[:4])}{' ...' if len(self.params) > 4 else ''}; "
                               f"state per parameter: {', '.join(self.SLOTS) or 'none'})")
            if tuple(value.shape) != tuple(self.params[name].shape):
                raise XnnError(f"{kind} state {key!r} has shape {tuple(value.shape)}, the parameter has "
                               f"{tuple(self.params[name].shape)}")
            slots.setdefault(name, {})[k] = device_of(self.params[name]).asarray(value)
        self.t = int(state["t"])
        self.slots = slots


class SGD(Optimizer):
    """v <- momentum * v + (g + weight_decay * p);  p <- p - lr * v  (nesterov optional)."""

    SLOTS = ("v",)

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def _update(self, name, p, g):
        v = self.slots.get(name, {}).get("v")
        if v is not None:       # every step after the first: one device call (a compiled pass on the CPU)
            device_of(p).sgd_momentum(p, g, v, self.lr, self.momentum, self.weight_decay, self.nesterov)
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = self.slots.setdefault(name, {})["v"] = g.copy()
            g = g + self.momentum * v if self.nesterov else v
        p -= self.lr * g


class Adam(Optimizer):
    """Kingma & Ba 2015, with bias correction.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    ``weight_decay`` adds weight_decay * p to g (L2, not AdamW).
    """

    SLOTS = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def _update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        slot = self.slots.setdefault(name, {})
        if "m" not in slot:
            slot["m"] = g * 0
            slot["v"] = g * 0
        m, v = slot["m"], slot["v"]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * (g * g)
        c1 = 1 - self.b1 ** self.t
        c2 = 1 - self.b2 ** self.t
        p -= (self.lr / c1) * m / ((v / c2) ** 0.5 + self.eps)
