"""The image optimisers: L-BFGS-B (SciPy), L-BFGS on the device, and Adam.

All three take ``fun_and_grad(x) -> (losses, grad)``: ``x`` the image on the
device, ``losses`` a number, a 0-d array or a dict with a "total" entry (e.g.
:meth:`StyleTransferObjective.loss_and_grad`), ``grad`` d total / dx on the device.
All call ``callback(it, x, losses)`` for it = 0 (the starting image) and after
each iteration it = 1, 2, ..., with the losses OF THAT x; the callback may return
True to stop.  ``should_stop()`` (e.g. an :class:`xnn.stop.StopFlag` set by Ctrl-C) is polled
at every evaluation and iteration.  A stop is not an error: the result says so.
Bounds ``(lo, hi)`` (None, scalars or arrays broadcastable to x) keep pixels in
the valid range of the model's input space.

:func:`lbfgs_minimize` runs SciPy's L-BFGS-B on a float64 host copy of the
flattened image, so every evaluation costs one host->device copy of x and one
device->host copy of the gradient, and L-BFGS-B's own bookkeeping runs on one CPU
core: about 0.2 s per iteration for a 512x512 image with bounds (measured on
this project's 2-core machine), which dominates a GPU step.
:func:`lbfgs_device_minimize` keeps everything on the device (projected L-BFGS
with backtracking), for GPU runs.  An iteration may take more than one
evaluation (line search); ``max_iter`` bounds the iterations.
"""
from __future__ import annotations

import dataclasses

import numpy
import scipy.optimize

from ..backends import device_of, to_numpy
from ..optim import Adam


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


def _host_bound(b, shape, default):
    if b is None:
        return numpy.full(int(numpy.prod(shape)), default)
    return numpy.broadcast_to(numpy.asarray(to_numpy(b), numpy.float64), shape).reshape(-1).copy()


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
    lo, hi = _host_bound(lo, shape, -numpy.inf), _host_bound(hi, shape, numpy.inf)
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


def _two_loop(xp, pairs, g):
    """d = -H g by the L-BFGS two-loop recursion (Nocedal & Wright, alg. 7.4);
    pairs (s, y, rho = 1 / y.s) oldest first, H0 = s.y / y.y of the newest pair."""
    q = -g
    alphas = []
    for s_i, y_i, rho_i in reversed(pairs):
        a_i = rho_i * xp.vdot(s_i, q)
        q -= a_i * y_i
        alphas.append(a_i)
    s_n, y_n, _ = pairs[-1]
    q *= xp.vdot(s_n, y_n) / xp.vdot(y_n, y_n)
    for (s_i, y_i, rho_i), a_i in zip(pairs, reversed(alphas)):
        q += (a_i - rho_i * xp.vdot(y_i, q)) * s_i
    return q


def _free_mask(xp, x, g, lo, hi):
    """1 where a variable may move along -g, 0 where it sits on a bound that -g pushes into."""
    blocked = xp.zeros(x.shape, dtype=bool)
    if lo is not None:
        blocked |= (x <= lo) & (g > 0)
    if hi is not None:
        blocked |= (x >= hi) & (g < 0)
    return (~blocked).astype(x.dtype).reshape(-1)


def lbfgs_device_minimize(fun_and_grad, x0, *, bounds=None, max_iter=100, callback=None,
                          should_stop=None, history=10, lr=1.0, max_backtracks=10,
                          catch_interrupt=False) -> MinimizeResult:
    """L-BFGS that stays on the device, with bounds by projection and a backtracking line search.

    Direction: the two-loop recursion over the last ``history`` pairs
    s = x_{k+1} - x_k, y = g_{k+1} - g_k (pairs with y.s <= 1e-10 are skipped),
    restricted to the free variables (those not on a bound that -g pushes into).
    Step: x_new = clip(x + t d) with t = lr, or t = lr * min(1, 1 / sum|g|) when the
    history is empty (as torch.optim.LBFGS and Torch7's optim.lbfgs, which
    jcjohnson/neural-style uses); accepted when f(x_new) <= f(x) + 1e-4 g.(x_new - x),
    else halved up to ``max_backtracks`` times.  When that fails, or d is not a
    descent direction, the history is dropped and the iteration retried from the
    gradient; the run ends when even that fails.  Most iterations take one
    evaluation; the first ones take a few.  x0 is not modified; the result is the
    best evaluated image.  Per evaluation a few host syncs of scalars, no host copy
    of the image.
    """
    dev = device_of(x0)
    xp = dev.xp
    lo, hi = bounds if bounds is not None else (None, None)
    lo, hi = [b if b is None or isinstance(b, (int, float)) else dev.asarray(b) for b in (lo, hi)]
    x = clip_to_range(xp.array(x0, dtype=x0.dtype, order="C", copy=True), lo, hi)
    pairs = []
    best, best_losses = x, None
    it, nfev, stopped, message = 0, 0, False, f"{max_iter} iterations done"

    def evaluate(z):
        nonlocal nfev
        if should_stop is not None and should_stop():
            raise _Stop("stopped on request")
        losses, grad = fun_and_grad(z)
        nfev += 1
        return losses, xp.ascontiguousarray(grad).reshape(-1), total_of(losses)

    try:
        losses, g, f = evaluate(x)
        best, best_f, best_losses = x, f, losses
        _report(callback, should_stop, 0, x, losses)
        while it < max_iter:
            free = _free_mask(xp, x, g.reshape(x.shape), lo, hi)
            gf = g * free
            d = _two_loop(xp, pairs, gf) * free if pairs else -gf
            gtd = float(xp.vdot(gf, d))
            step = lr if pairs else lr * min(1.0, 1.0 / max(float(xp.abs(gf).sum()), 1e-30))
            accepted = False
            if gtd < 0:
                for _ in range(max_backtracks + 1):
                    x_new = clip_to_range(x + step * d.reshape(x.shape), lo, hi)
                    losses_new, g_new, f_new = evaluate(x_new)
                    s_k = (x_new - x).reshape(-1)
                    if f_new < best_f:
                        best, best_f, best_losses = x_new, f_new, losses_new
                    if f_new <= f + 1e-4 * float(xp.vdot(g, s_k)):
                        accepted = True
                        break
                    step *= 0.5
            if not accepted:
                if pairs:            # a bad quasi-Newton model: restart from the gradient
                    pairs.clear()
                    continue
                message = "stalled: no decrease along the gradient" if gtd < 0 else "converged: zero gradient"
                break
            y_k = g_new - g
            ys = xp.vdot(y_k, s_k)
            if float(ys) > 1e-10:
                pairs.append((s_k, y_k, 1.0 / ys))
                del pairs[:-history]
            x, g, f, losses, it = x_new, g_new, f_new, losses_new, it + 1
            _report(callback, should_stop, it, x, losses)
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
