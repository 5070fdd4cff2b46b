"""Data parallelism on one device: a batch cut into parts, each part run through a twin of the
model on a worker of its own, the gradients summed.

    dp = DataParallel(net, SoftmaxCrossEntropy(check_labels=False), parts=2)
    loss, logits = dp.forward_backward(x, labels)     # the whole batch's mean loss and its logits
    opt.step(dp.grads)                                # the gradient of that mean loss

    y = DataParallel(frozen_net, parts=2).forward(x)  # inference: the batch's output, parts side by side

Why.  On the CPU, xnn's layers split large arrays into bands for the device's workers, but the
arrays of a small network (the MNIST CNN: 64 images of 28x28) are too small for that to pay:
handing a band to a thread costs about 0.1 ms.  Cutting the batch instead gives each worker
whole layers to run, one hand-off a step.  On 2 cores the MNIST CNN's training step in two parts
took 0.67-0.80 of the time of the whole batch through one model, and a whole epoch 0.75-0.86
(docs/mnist.md); the MLP's step took 2.5x as long (its GEMMs use the BLAS's own threads
better), so ``configs/mnist_*.yaml`` use it for the CNN only.  Frozen, for inference
(:meth:`DataParallel.forward`), it runs the fast style network's video batches: four 512x288
frames in two parts took 0.77-0.89 of the time (docs/fast_style.md).

The maths.  The loss must be a mean over the batch's samples (``SoftmaxCrossEntropy`` is).
Part k (n_k of the N samples) computes L_k, the mean over its own samples, and its backward
starts from dloss = n_k / N, so its gradients are those of (n_k / N) L_k.  The batch's loss is
L = sum_k (n_k / N) L_k, and its gradient the sum of the parts' gradients: the whole batch
through one model, up to float rounding (the sums are taken in another order).

The parts run through ``device.parallel_map``: on the CPU backend on its worker threads, each
with a one-thread BLAS (the layers inside run their own chunks in order); the generic backend
(CuPy, whose kernels are asynchronous anyway) runs them one after another, which only makes
each kernel smaller: use ``parts=1`` there.  The twins share the model's parameter arrays
(:meth:`xnn.layers.Layer.replica`), so an optimiser stepping the model's parameters in place
steps every twin; make the ``DataParallel`` after moving the model to its device.
"""
from __future__ import annotations

from functools import reduce
from operator import add


def default_parts(device) -> int:
    """The part count ``auto`` means: one per worker of a CPU device, 1 elsewhere (a GPU's kernels
    gain nothing from smaller batches run one after another)."""
    return device.workers if device.kind == "cpu" else 1


def sum_by_key(dicts) -> dict:
    """{key: the sum over ``dicts`` of dict[key]} for the keys of the first: the parts' gradients."""
    dicts = list(dicts)
    return {k: reduce(add, (d[k] for d in dicts)) for k in dicts[0]}


def part_bounds(n: int, parts: int):
    """[(start, stop)] of the non-empty parts when a batch of ``n`` is cut into ``parts``: sizes differ
    by at most one."""
    cuts = [k * n // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class DataParallel:
    """``parts`` twins of ``model`` and ``criterion``; :meth:`forward_backward` fills :attr:`grads`,
    :meth:`forward` is the batch's output (a ``criterion`` is only needed for training)."""

    def __init__(self, model, criterion=None, parts: int = 1):
        if int(parts) != parts or parts < 1:
            raise ValueError(f"parts must be a positive integer, got {parts!r}")
        self.model, self.parts = model, int(parts)
        self.twins = [(model, criterion)] + [(model.replica(), None if criterion is None else criterion.replica())
                                             for _ in range(self.parts - 1)]
        #: "layer.param" -> the gradient of the last batch's mean loss (the keys of ``model.grads``)
        self.grads: dict = {}

    def bounds(self, n: int):
        """[(start, stop)] of the non-empty parts of a batch of ``n``: sizes differ by at most one."""
        return part_bounds(n, self.parts)

    @property
    def device(self):
        return self.model.device

    def map_parts(self, fn, n: int) -> list:
        """[fn(model, criterion, start, stop)] over the non-empty parts of a batch of ``n``, each part
        with its own twins, run side by side on the device's workers."""
        return self.device.parallel_map(lambda job: fn(*job[0], *job[1]), list(zip(self.twins, self.bounds(n))))

    def forward(self, x):
        """The model's output for the batch x, its parts run side by side and joined along axis 0."""
        return self.device.xp.concatenate(self.map_parts(lambda net, _, a, b: net.forward(x[a:b]), x.shape[0]))

    __call__ = forward

    def forward_backward(self, x, labels):
        """(mean loss, logits) of the batch (x, labels); the batch's gradients go to :attr:`grads`."""
        if self.twins[0][1] is None:
            raise ValueError("DataParallel.forward_backward needs the criterion (a loss) given when it was made")
        n = x.shape[0]

        def run(net, crit, a, b):
            logits = net.forward(x[a:b])
            loss = crit.forward(logits, labels[a:b])
            net.backward(crit.backward((b - a) / n))
            return loss * ((b - a) / n), logits, net.grads

        results = self.map_parts(run, n)
        self.grads = sum_by_key(r[2] for r in results)
        loss = reduce(add, (r[0] for r in results))
        logits = self.device.xp.concatenate([r[1] for r in results])
        return loss, logits
