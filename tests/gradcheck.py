"""Finite-difference gradient checks in float64 (used by the layer tests)."""
import numpy

import xnn


def rel_error(a, b) -> float:
    a, b = numpy.asarray(a, numpy.float64), numpy.asarray(b, numpy.float64)
    scale = max(numpy.linalg.norm(a), numpy.linalg.norm(b), 1e-12)
    return float(numpy.linalg.norm(a - b) / scale)


def central_difference(f, arr, idx, eps=1e-6) -> float:
    """(f(arr + eps e_idx) - f(arr - eps e_idx)) / 2 eps, arr changed in place and restored."""
    old = float(xnn.to_numpy(arr[idx]))
    arr[idx] = old + eps
    plus = float(f())
    arr[idx] = old - eps
    minus = float(f())
    arr[idx] = old
    return (plus - minus) / (2 * eps)


def numerical_grad(f, arr, eps=1e-6):
    """Central differences of the scalar f() with respect to each element of arr (in place)."""
    grad = numpy.zeros(arr.shape)
    for idx in numpy.ndindex(arr.shape):
        grad[idx] = central_difference(f, arr, idx, eps)
    return grad


def sampled_grad(f, arr, rng, count=12, eps=1e-6):
    """(flat indices, central differences of f at ``count`` random entries of arr): for large tensors."""
    idx = rng.choice(arr.size, size=min(count, arr.size), replace=False)
    return idx, numpy.array([central_difference(f, arr, numpy.unravel_index(i, arr.shape), eps) for i in idx])


def check_layer(layer, x, dev, seed=0, tol=1e-6, eps=1e-6):
    """Compare the backward of ``layer`` with finite differences of sum(y * r).

    Checks the input gradient and every parameter gradient (unless frozen).
    Returns the dict of relative errors.
    """
    layer.to(dev, numpy.float64)
    x = dev.asarray(numpy.asarray(x, numpy.float64))
    y = layer.forward(x)
    r = dev.asarray(numpy.random.default_rng(seed).standard_normal(y.shape))

    def loss():
        return (layer.forward(x) * r).sum()

    layer.forward(x)
    dx = layer.backward(r)
    analytic = {"x": xnn.to_numpy(dx)}
    analytic.update({k: xnn.to_numpy(v) for k, v in layer.grads.items()})
    errors = {"x": rel_error(analytic["x"], numerical_grad(loss, x, eps))}
    for name, p in layer.params.items():
        if not layer.frozen:
            errors[name] = rel_error(analytic[name], numerical_grad(loss, p, eps))
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"{type(layer).__name__} gradient check failed: {errors}"
    return errors
