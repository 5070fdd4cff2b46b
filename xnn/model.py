"""Sequential: an ordered container of named layers.

    net = Sequential([("fc1", Linear(784, 128)), ("relu1", ReLU()), ("fc2", Linear(128, 10))])
    y = net.forward(x)                       # whole net
    feats = net.features(x, ["relu1"])       # only as deep as needed, dict name -> output
    dx = net.backward(dy)                    # from the output
    dx = net.backward(inject={"relu1": g})   # gradients injected at named outputs,
                                             # summed on the way down in ONE pass
    net.params / net.grads                   # flat dicts "fc1.W" -> array
    net.save("model.npz"); net.load("model.npz")
"""
from __future__ import annotations

import copy

import numpy

from .backends import device as get_device
from .errors import XnnError
from .files import as_numbers, read_npz, save_npz
from .layers import layout
from .layers.base import Layer


class Sequential:
    def __init__(self, layers, device=None):
        named = []
        for i, item in enumerate(layers):
            name, layer = item if isinstance(item, tuple) else (f"{i}_{type(item).__name__.lower()}", item)
            if not isinstance(layer, Layer):
                raise TypeError(f"{name!r} is not an xnn layer")
            named.append((name, layer))
        names = [n for n, _ in named]
        if len(set(names)) != len(names):
            raise ValueError("layer names must be unique")
        self.layers = dict(named)
        self.names = names
        self._ran = 0  # how many layers the last forward ran
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------ access
    def __getitem__(self, name) -> Layer:
        return self.layers[name]

    def __iter__(self):
        return iter(self.layers.items())

    def __len__(self):
        return len(self.names)

    @property
    def device(self):
        return next(iter(self.layers.values())).device

    @property
    def params(self) -> dict:
        return {f"{n}.{k}": v for n, l in self.layers.items() for k, v in l.params.items()}

    @property
    def grads(self) -> dict:
        return {f"{n}.{k}": v for n, l in self.layers.items() for k, v in l.grads.items()}

    def trainable_params(self) -> dict:
        return {f"{n}.{k}": v for n, l in self.layers.items() if not l.frozen for k, v in l.params.items()}

    def to(self, device=None, dtype=None):
        dev = None if device is None else get_device(device)
        for layer in self.layers.values():
            layer.to(dev, dtype)
        return self

    def freeze(self):
        for layer in self.layers.values():
            layer.freeze()
        return self

    def zero_grad(self):
        for layer in self.layers.values():
            layer.zero_grad()

    def replica(self) -> "Sequential":
        """The same network of layer twins (:meth:`Layer.replica`): shared parameter arrays, its own
        gradients and caches; what :class:`xnn.DataParallel` runs on the other parts of a batch."""
        return Sequential([(name, layer.replica()) for name, layer in self.layers.items()])

    # ------------------------------------------------------------ passes
    def _index(self, name):
        try:
            return self.names.index(name)
        except ValueError:
            raise XnnError(f"no layer named {name!r}; layers are: {', '.join(self.names)}") from None

    def forward(self, x, until: str | None = None):
        """Run the layers in order (up to and including ``until``) and return the output."""
        stop = len(self.names) if until is None else self._index(until) + 1
        self.device.check(x, "model input")
        for name in self.names[:stop]:
            x = self.layers[name].forward(x)
        self._ran = stop
        return x

    __call__ = forward

    def features(self, x, names):
        """Outputs of the named layers; runs only as deep as the deepest of them."""
        names = [names] if isinstance(names, str) else list(names)
        want = {self._index(n) for n in names}
        stop = max(want) + 1
        self.device.check(x, "model input")
        out = {}
        for i, name in enumerate(self.names[:stop]):
            x = self.layers[name].forward(x)
            if i in want:
                out[name] = x
        self._ran = stop
        return out

    def backward(self, dy=None, inject: dict | None = None):
        """One backward pass from the deepest layer of the last forward.

        ``dy`` is the gradient of the last output (may be None when everything is
        injected); ``inject`` maps layer names to gradients of their outputs, which
        are added as the pass reaches them.  Returns the gradient of the input.
        """
        inject = dict(inject or {})
        for name in inject:
            if self._index(name) >= self._ran:
                raise ValueError(f"cannot inject at {name!r}: the last forward stopped before it")
        g = dy
        for name in reversed(self.names[:self._ran]):
            if name in inject:
                g = inject[name] if g is None else layout.add(self.device.xp, g, inject[name], self.device)
            if g is None:
                continue  # nothing flows yet above the deepest injection
            g = self.layers[name].backward(g)
        return g

    # ------------------------------------------------------------ files
    def state_dict(self) -> dict:
        """Host copies of every parameter, keyed "layer.param"."""
        return {k: self.device.to_numpy(v).copy() for k, v in self.params.items()}

    def load_state_dict(self, state: dict, strict: bool = True, source: str = "state"):
        """Copy host arrays into the parameters, checking every name and shape."""
        own = self.params
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise XnnError(f"{source} does not fit this model: missing {missing or 'none'}, "
                           f"unexpected {unexpected or 'none'}")
        for key, value in state.items():
            if key not in own:
                continue
            value = as_numbers(value, f"{source}: {key}")
            if tuple(value.shape) != tuple(own[key].shape):
                raise XnnError(f"{source}: {key} has shape {tuple(value.shape)}, "
                               f"the model expects {tuple(own[key].shape)}")
            # in place, so optimisers holding these arrays keep seeing the model's parameters
            own[key][...] = self.device.asarray(numpy.asarray(value, dtype=own[key].dtype))
        for layer in self.layers.values():
            layer._clear_cache()  # e.g. transformed weights cached by frozen convolutions
        return self

    def save(self, path):
        """Write the parameters to ``path`` (.npz) atomically: no half-written file."""
        save_npz(path, self.state_dict())

    def load(self, path, strict: bool = True):
        """Load parameters saved by :meth:`save`; any bad file is a one-line XnnError."""
        return self.load_state_dict(read_npz(path, "checkpoint"), strict, source=str(path))

    def __repr__(self):
        lines = [f"  ({n}): {l!r}" for n, l in self.layers.items()]
        return "Sequential(\n" + "\n".join(lines) + "\n)"


class Residual(Layer):
    """A skip connection around a stack of layers: y = x + body(x).

    Shapes: ``body`` (a list of layers or (name, layer) pairs, as :class:`Sequential` takes) must
    keep the shape of x.  Backward: dx = dy + body.backward(dy): the skip hands dy on unchanged and
    the body adds the gradient of its own input.  The parameters and gradients are the body's,
    named "layer.param" as in Sequential ("conv1.W"), the same arrays, so an optimiser and
    ``load_state_dict`` reach them; ``to``, ``freeze`` and ``zero_grad`` pass through.
    """

    def __init__(self, layers, device=None):
        self.body = Sequential(layers)
        super().__init__(self.body.device if device is None else device)
        if device is not None:
            self.body.to(device)

    # the body's parameters and gradients, under the body's names
    params = property(lambda self: self.body.params, lambda self, v: self._set_nothing(v))
    grads = property(lambda self: self.body.grads, lambda self, v: self._set_nothing(v))

    def replica(self):
        twin = copy.copy(self)
        twin.body = self.body.replica()
        return twin

    @staticmethod
    def _set_nothing(value):
        if value:       # Layer's own bookkeeping only ever assigns an empty dict
            raise AttributeError("Residual's parameters are its body's; set them on the body's layers")

    def forward(self, x):
        y = self.body.forward(x)
        if y.shape != x.shape:
            raise ValueError(f"Residual: the body maps {tuple(x.shape)} to {tuple(y.shape)}; it must keep the shape")
        return layout.add(self.xp, y, x, self.device)

    def backward(self, dy):
        dx = self.body.backward(dy)
        return layout.add(self.xp, dx, dy, self.device) if dx is not None else dy

    def to(self, device=None, dtype=None):
        self.body.to(device, dtype)
        self.device = self.body.device
        return self

    def freeze(self):
        self.frozen = True
        self.body.freeze()
        return self

    def unfreeze(self):
        self.frozen = False
        for layer in self.body.layers.values():
            layer.unfreeze()
        return self

    def zero_grad(self):
        self.body.zero_grad()

    def _clear_cache(self):
        for layer in self.body.layers.values():
            layer._clear_cache()
