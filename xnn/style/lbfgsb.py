"""L-BFGS-B's step on the device: the compact limited-memory matrix, the generalised Cauchy
point and the subspace minimisation (Byrd, Lu, Nocedal & Zhu 1995, with the projection of
Morales & Nocedal 2011), vectorised over the n variables.

The quadratic model at x with gradient g is m(z) = g.(z - x) + 1/2 (z - x)' B (z - x), with
the compact form of the L-BFGS matrix from the k newest pairs s_i = x_{i+1} - x_i,
y_i = g_{i+1} - g_i (Byrd, Nocedal & Schnabel 1994):

    B = theta I - W M W',   W = [Y', theta S'] (n x 2k),   theta = y.y / s.y (newest pair)
    M^-1 = K = [[-D, L'], [L, theta S S']],  D = diag(s_i.y_i),  L_ij = s_i.y_j for i > j

Only k x k products of the pairs are kept (S S', S Y', Y Y'), updated with two matrix-vector
products per new pair; every product with W is one matrix-vector product with the stacked
(2 m, n) pair buffer.  The 2k x 2k algebra runs in float64 on the host.

Generalised Cauchy point: the first local minimum of m along the projected gradient path
x(t) = clip(x - t g, lo, hi).  The path bends where a variable reaches its bound, at
t_i = (x_i - hi_i) / g_i (g_i < 0) or (x_i - lo_i) / g_i (g_i > 0).  Between breakpoints m is
a parabola in t whose slope f' and curvature f'' change by closed-form terms (Byrd et al.'s
algorithm CP); here the terms of all breakpoints up to the minimum are computed at once with
cumulative sums over the sorted breakpoints instead of one at a time.

Subspace minimisation: with the variables at their bounds at the Cauchy point fixed, the model
is minimised over the free ones (the direct primal method, whose 2k x 2k matrix needs W's
Gram over the free variables: all pairs' Gram minus that of the fixed ones, whichever set is
smaller is gathered).  The minimiser is projected into the box if that still gives a descent
direction, else the step is cut at the box (Morales & Nocedal's change to L-BFGS-B 2.1).
"""
from __future__ import annotations

import numpy

from ..backends import to_numpy


#: the Cauchy point's search first sorts the breakpoints up to REACH times the unbent path's
#: minimum, then REACH times further each round (a speed setting: any value > 1 is exact)
REACH = 2.0


class PairMemory:
    """The newest ``m`` pairs (s, y) of n-vectors on the device and their products on the host.

    Slot q holds y in buf[q, 0] and s in buf[q, 1].  Slots are taken lowest first and reused only
    once all m are taken, so the slots in use are always buf[:span]: every product with W reads
    only those (one contiguous block of 2 span rows), not the whole buffer, while it fills.
    """

    def __init__(self, xp, n: int, m: int, dtype):
        self.xp, self.m = xp, m
        self.buf = xp.zeros((m, 2, n), dtype=dtype)
        self.order: list[int] = []                      # slots, oldest first
        self.yy = numpy.zeros((m, m))
        self.sy = numpy.zeros((m, m))                   # sy[i, j] = s_i . y_j
        self.ss = numpy.zeros((m, m))
        self.theta = 1.0

    def __len__(self):
        return len(self.order)

    def clear(self):
        self.order.clear()
        self.theta = 1.0

    @property
    def span(self) -> int:
        """1 + the highest slot in use (0 when empty)."""
        return max(self.order) + 1 if self.order else 0

    def _rows(self, span: int):
        """The first ``span`` slots as (2 span, n) rows y_0, s_0, y_1, s_1, ... (a view)."""
        return self.buf[:span].reshape(2 * span, self.buf.shape[2])

    def add(self, s, y, sy: float, yy: float):
        """Store the pair (a slot is freed when full); sy = s.y > 0 and yy = y.y given."""
        free = [q for q in range(self.m) if q not in self.order]
        q = free[0] if free else self.order.pop(0)
        self.buf[q, 0] = y
        self.buf[q, 1] = s
        span = max(self.span, q + 1)
        both = _to_host(self._rows(span) @ self.buf[q].T).reshape(span, 2, 2)   # one pass: [y_i s_i] . [y s]
        self.yy[q, :span] = self.yy[:span, q] = both[:, 0, 0]
        self.sy[q, :span] = both[:, 0, 1]               # s_q . y_j
        self.sy[:span, q] = both[:, 1, 0]               # s_i . y_q
        self.ss[q, :span] = self.ss[:span, q] = both[:, 1, 1]
        self.sy[q, q], self.yy[q, q] = sy, yy
        self.order.append(q)
        self.theta = yy / sy

    # -------------------------------------------------- products with W = [Y', theta S']
    def wt(self, v):
        """W' v (2k, host float64)."""
        both = _to_host(self._rows(self.span) @ v).reshape(-1, 2)
        o = self.order
        return numpy.concatenate([both[o, 0], self.theta * both[o, 1]])

    def w(self, u):
        """W u (n, device) for u (2k, host)."""
        k, full = len(self.order), numpy.zeros((self.span, 2))
        full[self.order, 0] = u[:k]
        full[self.order, 1] = self.theta * u[k:]
        return self.xp.asarray(full.reshape(-1).astype(self.buf.dtype)) @ self._rows(self.span)

    def rows(self, idx):
        """W's rows at the variables idx (len(idx), 2k, host float64)."""
        o = self.order
        cols = _to_host(self.buf[:self.span, :, idx])   # (span, 2, len(idx)): only the slots in use
        return numpy.concatenate([cols[o, 0], self.theta * cols[o, 1]]).T

    def gram(self):
        """W' W (2k x 2k)."""
        o, t = self.order, self.theta
        yy, sy, ss = (a[numpy.ix_(o, o)] for a in (self.yy, self.sy, self.ss))
        return numpy.block([[yy, t * sy.T], [t * sy, t * t * ss]])

    def middle(self):
        """K = M^-1, the 2k x 2k middle matrix's inverse."""
        o, t = self.order, self.theta
        sy = self.sy[numpy.ix_(o, o)]
        low = numpy.tril(sy, -1)
        return numpy.block([[-numpy.diag(numpy.diag(sy)), low.T], [low, t * self.ss[numpy.ix_(o, o)]]])


def _to_host(a):
    return numpy.asarray(to_numpy(a), dtype=numpy.float64)


def breakpoints(xp, x, g, lo, hi):
    """t_i at which x_i - t g_i reaches its bound (inf where g_i = 0; 0 where it sits there)."""
    safe = xp.where(g == 0, 1, g)
    t = xp.where(g < 0, (x - hi) / safe, (x - lo) / safe)
    t = xp.where(g == 0, xp.inf, t)
    return xp.maximum(t, 0, out=t)


def _solve(K, v):
    """K^-1 v, tolerating a singular K (least squares)."""
    try:
        return numpy.linalg.solve(K, v)
    except numpy.linalg.LinAlgError:
        return numpy.linalg.lstsq(K, v, rcond=None)[0]


def cauchy_point(xp, x, g, lo, hi, mem: PairMemory):
    """(x_cp, t, t_star, c): the generalised Cauchy point, the breakpoints, the path parameter
    where it lies and c = W' (x_cp - x), for the subspace step."""
    theta = mem.theta
    t = breakpoints(xp, x, g, lo, hi)
    d = xp.where(t > 0, -g, 0)
    inside = (t > 0) & (t < xp.inf)
    # d.d, the number of breakpoints and the first: one copy to the host
    dd, nb, tmin = _to_host(xp.stack([a.astype(xp.float64) for a in (
        xp.vdot(d, d), xp.count_nonzero(inside), xp.min(xp.where(inside, t, xp.inf)))]))
    dd, nb, tmin = float(dd), int(nb), float(tmin)
    p0 = mem.wt(d)                                      # empty without pairs, as is K
    Kmat = mem.middle()
    f1_0, f2_0 = -dd, theta * dd - p0 @ _solve(Kmat, p0)
    dtm0 = -f1_0 / f2_0 if f2_0 > 0 else numpy.inf
    if f1_0 >= 0 or dtm0 < tmin or nb == 0:
        # the minimum lies before the first breakpoint (the common case: no sort), or there is
        # no descent, or the model is not convex along a path that never bends: stay at x
        t_star = float(dtm0) if f1_0 < 0 and dtm0 < tmin else 0.0
        return xp.clip(x - t_star * g, lo, hi), t, t_star, t_star * p0
    # the breakpoints up to a bound on the path parameter, sorted; the bound grows until the
    # minimum is found among them (it usually lies within the first few)
    reach = REACH * (dtm0 if numpy.isfinite(dtm0) else tmin)
    while True:
        part = xp.nonzero(inside & (t <= reach))[0]
        complete = len(part) == nb
        idx = part[xp.argsort(t[part])]
        tb, gb = _to_host(t[idx]), _to_host(g[idx])
        wb = mem.rows(idx)
        dt = numpy.diff(tb, prepend=0.0)
        gw = gb[:, None] * wb
        p_before = p0 + numpy.cumsum(gw, axis=0) - gw          # p before each breakpoint
        c_after = numpy.cumsum(dt[:, None] * p_before, axis=0)  # c once the breakpoint is reached
        mw = _solve(Kmat, wb.T).T                              # rows M w_b (M symmetric)
        q_c = numpy.einsum("ij,ij->i", mw, c_after)
        q_p = numpy.einsum("ij,ij->i", mw, p_before)
        q_w = numpy.einsum("ij,ij->i", mw, wb)
        g2 = gb * gb
        f2 = f2_0 + numpy.cumsum(-theta * g2 - 2 * gb * q_p - g2 * q_w)
        f2_before = numpy.concatenate([[f2_0], f2[:-1]])
        f1 = f1_0 + numpy.cumsum(dt * f2_before + g2 - theta * tb * g2 - gb * q_c)
        # stage j >= 1 (after j breakpoints) ends at the next breakpoint, the last one at infinity
        # when every breakpoint is among those selected
        nxt = numpy.append(dt[1:], numpy.inf if complete else numpy.nan)
        dtm = numpy.where(f2 > 0, -f1 / numpy.where(f2 > 0, f2, 1.0), numpy.inf)   # inf: not convex
        stop = (f1 >= 0) | (dtm < nxt)
        hits = numpy.flatnonzero(stop)
        if len(hits) or complete:
            j = hits[0] if len(hits) else len(tb) - 1
            step = 0.0 if f1[j] >= 0 or not numpy.isfinite(dtm[j]) else dtm[j]
            t_star = float(tb[j] + step)                      # a Python float keeps x's dtype
            c = c_after[j] + step * (p_before[j] + gw[j])
            return xp.clip(x - t_star * g, lo, hi), t, t_star, c
        reach *= REACH


def subspace_point(xp, x, g, lo, hi, mem: PairMemory, x_cp, t, t_star, c):
    """The model's minimiser over the variables free at the Cauchy point, kept in the box."""
    theta, k = mem.theta, len(mem)
    free = t > t_star
    n_free = int(xp.count_nonzero(free))
    if k == 0 or n_free == 0:
        return x_cp
    Kmat = mem.middle()
    # r = Z'(g + B (x_cp - x)) = Z'(q - W M c) with q = g + theta (x_cp - x); then
    # du = -r / theta - Z' W v / theta^2 = Z'(-q / theta + W (M c / theta - v / theta^2)),
    # and W_Z' r = W'(Z q) - (W_Z' W_Z) M c: one product with W' and one with W.
    q = xp.where(free, g + theta * (x_cp - x), 0)
    if x.size - n_free <= n_free:                           # Gram over the free = all - fixed
        fixed = xp.nonzero(~free)[0]
        wa = mem.rows(fixed) if len(fixed) else numpy.zeros((0, 2 * k))
        gram_free = mem.gram() - wa.T @ wa
    else:
        wf = mem.rows(xp.nonzero(free)[0])
        gram_free = wf.T @ wf
    mc = _solve(Kmat, c)
    v = _solve(Kmat, mem.wt(q) - gram_free @ mc)
    v = _solve(numpy.eye(2 * k) - _solve(Kmat, gram_free) / theta, v)
    du = xp.where(free, mem.w(mc / theta - v / theta ** 2) - q / theta, 0)
    x_bar = xp.clip(x_cp + du, lo, hi)
    if float(xp.vdot(g, x_bar - x)) < 0:                   # the projected step still descends
        return x_bar
    room = xp.where(du > 0, hi - x_cp, lo - x_cp) / xp.where(du == 0, 1, du)   # to the bound du heads for
    alpha = min(1.0, float(xp.min(xp.where(du == 0, xp.inf, room))))
    return x_cp + max(alpha, 0.0) * du
