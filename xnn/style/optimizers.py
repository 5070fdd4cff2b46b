"""The image optimisers: L-BFGS-B (on the device, or SciPy's on the host) and Adam.

All three take ``fun_and_grad(x) -> (losses, grad)``: ``x`` the image on the
device, ``losses`` a number, a 0-d array or a dict with a "total" entry (e.g.
:meth:`StyleTransferObjective.loss_and_grad`), ``grad`` d total / dx on the device.
All call ``callback(it, x, losses)`` for it = 0 (the starting image) and after
each iteration it = 1, 2, ..., with the losses OF THAT x; the callback may return
True to stop.  ``should_stop()`` (e.g. an :class:`xnn.stop.StopFlag` set by Ctrl-C) is polled
at every evaluation and iteration.  A stop is not an error: the result says so.
Bounds ``(lo, hi)`` (None, scalars or arrays broadcastable to x) keep pixels in
the valid range of the model's input space.

:func:`lbfgs_device_minimize` (the style experiment's default) runs L-BFGS-B itself on the
image's device (:mod:`xnn.style.lbfgsb`): float32 vectors, no host copy of the image, a few
scalars and 2k x 2k matrices on the host; per iteration it is SciPy's method.
:func:`lbfgs_minimize` runs SciPy's L-BFGS-B on a float64 host copy of the flattened image, so
every evaluation costs one host->device copy of x and one device->host copy of the gradient,
and its bookkeeping runs on one CPU core: about 0.13 s per iteration for a 512x341 image with
bounds, against 0.03 s for the device one with the same 10 pairs (docs/benchmarks.md).
An iteration may take more than one evaluation (line search); ``max_iter`` bounds the
iterations.
"""
from __future__ import annotations

import dataclasses

import numpy
import scipy.optimize

from ..backends import device_of, to_numpy
from ..optim import Adam
from . import lbfgsb


@dataclasses.dataclass
class MinimizeResult:
    x: object              # the image on the device (lbfgs: the best evaluated point)
    losses: object         # losses at x, as fun_and_grad returned them
    iterations: int        # completed iterations (L-BFGS iterations / Adam updates)
    evaluations: int       # calls of fun_and_grad
    stopped: bool          # True when stopped by the callback, should_stop or an interrupt
    message: str


class _Stop(Exception):
    """Raised inside SciPy's loop to leave it early; never escapes this module."""


def _stop_message(e: BaseException, catch_interrupt: bool) -> str:
    """Why an optimiser loop ended early; a KeyboardInterrupt goes on up unless caught."""
    if isinstance(e, KeyboardInterrupt):
        if not catch_interrupt:
            raise e
        return "interrupted"
    return str(e)


def total_of(losses) -> float:
    """The scalar a loss report stands for: losses["total"] for a dict."""
    return float(losses["total"] if isinstance(losses, dict) else losses)


def clip_to_range(x, lo=None, hi=None):
    """Clip x in place to [lo, hi] (scalars or arrays on x's device that broadcast); returns x."""
    xp = device_of(x).xp
    if lo is not None:
        xp.maximum(x, lo, out=x)
    if hi is not None:
        xp.minimum(x, hi, out=x)
    return x


def _report(callback, should_stop, it, x, losses):
    if callback is not None and callback(it, x, losses) is True:
        raise _Stop("stopped by the callback")
    if should_stop is not None and should_stop():
        raise _Stop("stopped on request")


def _flat_bound(xp, b, shape, dtype, default):
    """A bound as a flat array of ``dtype`` in ``xp``: ``default`` everywhere for None, else b
    (a scalar or an array of xp's kind) broadcast to ``shape``."""
    full = xp.full(shape, default, dtype=dtype)
    if b is not None:
        full[...] = xp.asarray(b, dtype=dtype)
    return full.reshape(-1)


def lbfgs_minimize(fun_and_grad, x0, *, bounds=None, max_iter=100, max_fun=None, callback=None,
                   should_stop=None, history=10, ftol=2.2e-9, gtol=1e-5,
                   catch_interrupt=False) -> MinimizeResult:
    """Minimise with scipy.optimize.minimize(method="L-BFGS-B"); x0 is not modified.

    bounds: (lo, hi), each None, a scalar or an array broadcastable to x0's shape
    (host or device), e.g. the valid pixel range in the model's input space.
    max_fun defaults to 3 * max_iter + 20.  history is L-BFGS's memory (maxcor).
    Returns the best evaluated point (lowest total), also when stopped early.
    With ``catch_interrupt`` a KeyboardInterrupt is treated as a stop.
    """
    dev = device_of(x0)
    shape, dtype = x0.shape, x0.dtype
    lo, hi = bounds if bounds is not None else (None, None)
    lo, hi = (_flat_bound(numpy, None if b is None else to_numpy(b), shape, numpy.float64, default)
              for b, default in ((lo, -numpy.inf), (hi, numpy.inf)))
    start = numpy.clip(numpy.asarray(to_numpy(x0), numpy.float64).reshape(-1), lo, hi)
    st = {"nfev": 0, "nit": 0, "best": None, "best_f": numpy.inf, "best_losses": None,
          "last": None}

    def to_device(z):
        return dev.asarray(z.reshape(shape).astype(dtype))

    def evaluate(z):
        """fun_and_grad at the flat host point z; remembers the last and the best point."""
        xd = to_device(z)
        losses, grad = fun_and_grad(xd)
        st["nfev"] += 1
        f = total_of(losses)
        st["last"] = (z.copy(), xd, losses)
        if f < st["best_f"] or st["best"] is None:
            st["best"], st["best_f"], st["best_losses"] = z.copy(), f, losses
        return xd, losses, f, grad

    def fun(z):
        if should_stop is not None and should_stop():
            raise _Stop("stopped on request")
        xd, losses, f, grad = evaluate(z)
        if st["nfev"] == 1:
            _report(callback, should_stop, 0, xd, losses)
        return f, numpy.array(to_numpy(grad), dtype=numpy.float64, order="C").reshape(-1)

    def on_iteration(zk):
        st["nit"] += 1
        last_z, xd, losses = st["last"]
        if not numpy.array_equal(zk, last_z):  # SciPy's last evaluation is normally x_k
            xd, losses, _, _ = evaluate(zk)
        _report(callback, should_stop, st["nit"], xd, losses)

    stopped = False
    try:
        if max_iter <= 0:
            fun(start)
            message = "no iterations requested"
        else:
            res = scipy.optimize.minimize(
                fun, start, jac=True, method="L-BFGS-B", callback=on_iteration,
                bounds=scipy.optimize.Bounds(lo, hi),
                options={"maxiter": int(max_iter), "maxfun": int(max_fun or 3 * max_iter + 20),
                         "maxcor": int(history), "ftol": ftol, "gtol": gtol})
            message = str(res.message)
    except (_Stop, KeyboardInterrupt) as e:
        stopped, message = True, _stop_message(e, catch_interrupt)
    if st["best"] is None:  # stopped before the first evaluation
        return MinimizeResult(to_device(start), None, 0, 0, stopped, message)
    return MinimizeResult(to_device(st["best"]), st["best_losses"], st["nit"], st["nfev"],
                          stopped, message)


def _interpolated_step(step, f0, d0, f1, d1):
    """The minimiser in [0.1 step, 0.5 step] of the cubic through phi(0) = f0, phi'(0) = d0,
    phi(step) = f1, phi'(step) = d1 (Nocedal & Wright eq. 3.59); a halving when it has none."""
    z = d0 + d1 - 3 * (f1 - f0) / step
    disc = z * z - d0 * d1
    if disc >= 0 and numpy.isfinite(disc):
        w = disc ** 0.5
        denom = d1 - d0 + 2 * w
        new = step - step * (d1 + w - z) / denom if denom != 0 else 0.5 * step
    else:
        new = 0.5 * step
    if not numpy.isfinite(new):
        new = 0.5 * step
    return min(max(new, 0.1 * step), 0.5 * step)


def lbfgs_device_minimize(fun_and_grad, x0, *, bounds=None, max_iter=100, callback=None,
                          should_stop=None, history=10, ftol=2.2e-9, gtol=1e-5, max_step_evals=20,
                          catch_interrupt=False) -> MinimizeResult:
    """L-BFGS-B on the device (xnn.style.lbfgsb): the same method as SciPy's, vectorised.

    Each iteration: the generalised Cauchy point along the projected gradient path, the
    quadratic model's minimiser over the variables still free there (projected into the box
    while that descends, else cut at the box), then a line search from x towards that point:
    the full step first (on the first iteration, unless every variable has both bounds,
    1 / |d|: SciPy's rule), accepted
    when f(x + t d) <= f(x) + 1e-3 t g.d, else a safeguarded cubic step in [0.1 t, 0.5 t], at most
    ``max_step_evals`` evaluations.  A pair is kept when s.y > 2.2e-16 y.y.  When the search
    fails, or the direction does not descend, the memory is dropped and the iteration
    retried from the gradient; the run ends when even that fails, when the projected gradient's
    largest entry is <= ``gtol``, or when an iteration lowers f by <= ftol * max(|f|, 1)
    (SciPy's defaults).  Vectors stay on the device in x's dtype; 2k x 2k algebra in float64
    on the host, a few scalar copies per iteration.  x0 is not modified; the result is the best
    evaluated image.
    """
    dev = device_of(x0)
    xp = dev.xp
    shape, dtype = x0.shape, x0.dtype
    lo, hi = bounds if bounds is not None else (None, None)
    lo, hi = (_flat_bound(xp, b, shape, dtype, default) for b, default in ((lo, -numpy.inf), (hi, numpy.inf)))
    x = xp.clip(xp.array(x0, dtype=dtype, order="C", copy=True).reshape(-1), lo, hi)
    boxed = bool(xp.isfinite(lo).all() and xp.isfinite(hi).all())
    mem = lbfgsb.PairMemory(xp, x.size, history, dtype)
    it, nfev, stopped, message = 0, 0, False, f"{max_iter} iterations done"
    best, best_losses = x.reshape(shape), None

    def evaluate(z):
        nonlocal nfev
        if should_stop is not None and should_stop():
            raise _Stop("stopped on request")
        losses, grad = fun_and_grad(z.reshape(shape))
        nfev += 1
        return losses, xp.ascontiguousarray(grad, dtype=dtype).reshape(-1), total_of(losses)

    try:
        losses, g, f = evaluate(x)
        best, best_f, best_losses = x.reshape(shape), f, losses
        _report(callback, should_stop, 0, best, losses)
        while it < max_iter:
            if float(xp.max(xp.abs(xp.clip(x - g, lo, hi) - x))) <= gtol:
                message = "converged: projected gradient <= gtol"
                break
            x_cp, t, t_star, c = lbfgsb.cauchy_point(xp, x, g, lo, hi, mem)
            d = lbfgsb.subspace_point(xp, x, g, lo, hi, mem, x_cp, t, t_star, c) - x
            gd = float(xp.vdot(g, d))
            accepted = False
            if gd < 0:
                step = 1.0 if it or boxed else min(1.0, 1.0 / float(xp.linalg.norm(d)))
                for _ in range(max_step_evals):
                    x_new = xp.clip(x + step * d, lo, hi)
                    losses_new, g_new, f_new = evaluate(x_new)
                    if f_new < best_f:
                        best, best_f, best_losses = x_new.reshape(shape), f_new, losses_new
                    if f_new <= f + 1e-3 * step * gd:
                        accepted = True
                        break
                    step = _interpolated_step(step, f, gd, f_new, float(xp.vdot(g_new, d)))
            if not accepted:
                if len(mem):          # a bad quasi-Newton model: restart from the gradient
                    mem.clear()
                    continue
                message = "stalled: no decrease along the projected gradient"
                break
            s_k, y_k = x_new - x, g_new - g
            sy, yy = (float(v) for v in xp.stack([xp.vdot(s_k, y_k), xp.vdot(y_k, y_k)]).tolist())
            if sy > 2.2e-16 * yy:
                mem.add(s_k, y_k, sy, yy)
            f_old = f
            x, g, f, losses, it = x_new, g_new, f_new, losses_new, it + 1
            _report(callback, should_stop, it, x.reshape(shape), losses)
            if f_old - f <= ftol * max(abs(f_old), abs(f), 1.0):
                message = "converged: relative reduction <= ftol"
                break
    except (_Stop, KeyboardInterrupt) as e:
        stopped, message = True, _stop_message(e, catch_interrupt)
    return MinimizeResult(best, best_losses, it, nfev, stopped, message)


def adam_minimize(fun_and_grad, x, *, lr, max_iter, bounds=None, callback=None, should_stop=None,
                  optimizer=None, start_iter=0, losses_fn=None,
                  catch_interrupt=False) -> MinimizeResult:
    """Adam on the image, updating x IN PLACE and clipping it to ``bounds`` after each step.

    bounds: (lo, hi), each None, a scalar or an array broadcastable to x (host
    arrays are copied to x's device once).  ``optimizer`` (an xnn.optim.Adam over
    {"image": x}) and ``start_iter`` resume a checkpointed run; by default a fresh
    Adam(lr).  ``losses_fn(x)`` (e.g. objective.losses, forward only) gives the
    losses of the final image; without it one more fun_and_grad call does.
    For one host sync per logged step only, pass a fun_and_grad that returns
    device scalars (loss_and_grad(x, to_host=False)) and convert in the callback.
    """
    dev = device_of(x)
    lo, hi = bounds if bounds is not None else (None, None)
    lo, hi = [b if b is None or isinstance(b, (int, float)) else dev.asarray(b) for b in (lo, hi)]
    opt = optimizer if optimizer is not None else Adam({"image": x}, lr=lr)
    if opt.params.get("image") is not x:
        raise ValueError("the optimizer must hold x as its 'image' parameter")
    clip_to_range(x, lo, hi)
    nfev, it, losses, stopped, message = 0, start_iter, None, False, f"{max_iter} iterations done"
    try:
        while True:               # a stop is taken in _report: after the callback of the image it stops at
            if it >= max_iter:
                losses = losses_fn(x) if losses_fn is not None else fun_and_grad(x)[0]
                nfev += losses_fn is None
                if callback is not None:
                    callback(it, x, losses)
                break
            losses, grad = fun_and_grad(x)
            nfev += 1
            _report(callback, should_stop, it, x, losses)
            opt.step({"image": grad})
            clip_to_range(x, lo, hi)
            it, losses = it + 1, None
    except (_Stop, KeyboardInterrupt) as e:
        stopped, message = True, _stop_message(e, catch_interrupt)
        clip_to_range(x, lo, hi)  # an interrupt may land between a step and its clip
    return MinimizeResult(x, losses, it - start_iter, nfev, stopped, message)
