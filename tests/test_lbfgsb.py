"""xnn.style.lbfgsb (L-BFGS-B's step on the device) against dense float64 references.

The references build the L-BFGS matrix B by the BFGS update formula one pair at a time (not
the compact form the module uses), walk the projected gradient path breakpoint by breakpoint
with B itself, and solve the subspace problem with B's free block: the module's cumulative
sums, its pair products and its 2k x 2k algebra are each checked by an independent route.
"""
import numpy
import pytest
import scipy.optimize

from xnn.style import lbfgs_device_minimize, lbfgs_minimize
from xnn.style import lbfgsb

from .test_style_losses import F64, host, put


def dense_bfgs(pairs):
    """B from B0 = theta I (theta = y.y / s.y of the newest pair), then one BFGS update per pair."""
    s_n, y_n = pairs[-1]
    B = numpy.eye(len(s_n)) * (y_n @ y_n) / (s_n @ y_n)
    for s, y in pairs:
        Bs = B @ s
        B = B - numpy.outer(Bs, Bs) / (s @ Bs) + numpy.outer(y, y) / (y @ s)
    return B


def memory_with_pairs(dev, rng, n, m, count):
    """A PairMemory of m slots fed ``count`` pairs y = A s (A SPD); the dense B of the kept ones."""
    q = rng.standard_normal((n, n))
    A = q @ q.T / n + numpy.diag(rng.uniform(0.5, 4.0, n))
    mem = lbfgsb.PairMemory(dev.xp, n, m, F64)
    pairs = []
    for _ in range(count):
        s = rng.standard_normal(n)
        y = A @ s
        mem.add(put(dev, s), put(dev, y), float(s @ y), float(y @ y))
        pairs.append((s, y))
    return mem, dense_bfgs(pairs[-m:]) if count else numpy.eye(n)


def compact_B(mem, n):
    """theta I - W M W', built column by column from the module's products."""
    cols = []
    for i in range(n):
        e = numpy.zeros(n)
        e[i] = 1.0
        if len(mem):
            we = mem.wt(mem.xp.asarray(e))
            cols.append(mem.theta * e - host(mem.w(numpy.linalg.solve(mem.middle(), we))))
        else:
            cols.append(e)
    return numpy.array(cols).T


@pytest.mark.parametrize("m, count", [(4, 3), (3, 5), (5, 5)])
def test_compact_matrix_equals_the_bfgs_updates(dev, rng, m, count):
    """Slots reused after the memory is full (count > m) keep the products right."""
    n = 9
    mem, B = memory_with_pairs(dev, rng, n, m, count)
    assert len(mem) == min(m, count)
    numpy.testing.assert_allclose(compact_B(mem, n), B, rtol=1e-9, atol=1e-9)
    W = numpy.array([mem.wt(put(dev, numpy.eye(n)[i])) for i in range(n)])          # rows of W
    numpy.testing.assert_allclose(mem.gram(), W.T @ W, rtol=1e-10, atol=1e-10)
    idx = dev.asarray(numpy.array([0, 4, 7]))
    numpy.testing.assert_allclose(mem.rows(idx), W[[0, 4, 7]], rtol=1e-12)


def test_products_read_only_the_slots_in_use(dev, rng):
    """While the memory fills, and after a restart (clear) that leaves old pairs in the buffer, W's
    products read only the slots in use: unused slots full of NaN change nothing."""
    n, m = 7, 5
    q = rng.standard_normal((n, n))
    A = q @ q.T / n + numpy.eye(n)
    mem = lbfgsb.PairMemory(dev.xp, n, m, F64)
    mem.buf[...] = numpy.nan
    pairs = [(s, A @ s) for s in rng.standard_normal((9, n))]
    for s, y in pairs[:3]:
        mem.add(put(dev, s), put(dev, y), float(s @ y), float(y @ y))
    assert mem.span == 3
    numpy.testing.assert_allclose(compact_B(mem, n), dense_bfgs(pairs[:3]), rtol=1e-9, atol=1e-9)
    for s, y in pairs[3:7]:                                  # full, then slots reused
        mem.add(put(dev, s), put(dev, y), float(s @ y), float(y @ y))
    mem.clear()
    for s, y in pairs[7:]:
        mem.add(put(dev, s), put(dev, y), float(s @ y), float(y @ y))
    assert mem.span == 2 and len(mem) == 2
    numpy.testing.assert_allclose(compact_B(mem, n), dense_bfgs(pairs[7:]), rtol=1e-9, atol=1e-9)
    assert host(mem.rows(dev.asarray(numpy.arange(n)))).shape == (n, 4)


def test_a_cleared_memory_is_a_fresh_one(dev, rng):
    """After a restart the Cauchy point is the one of a memory that never held a pair (theta = 1)."""
    n = 6
    mem, _ = memory_with_pairs(dev, rng, n, 3, 4)
    mem.clear()
    fresh = lbfgsb.PairMemory(dev.xp, n, 3, F64)
    x, g = rng.uniform(0, 1, n), rng.standard_normal(n)
    lo, hi = numpy.zeros(n), numpy.ones(n)
    got, want = (lbfgsb.cauchy_point(dev.xp, put(dev, x), put(dev, g), put(dev, lo), put(dev, hi), m)
                 for m in (mem, fresh))
    assert len(mem) == 0 and mem.theta == 1.0 and mem.span == 0
    numpy.testing.assert_allclose(host(got[0]), host(want[0]), rtol=1e-12)
    assert got[2] == want[2]


def test_pair_products_come_to_the_host_in_float64(rng):
    """float32 pairs (the image's dtype): the 2k x 2k algebra still gets float64 numbers."""
    import xnn
    dev = xnn.device("cpu")
    mem = lbfgsb.PairMemory(dev.xp, 6, 3, numpy.float32)
    s, y = rng.standard_normal(6).astype(numpy.float32), rng.standard_normal(6).astype(numpy.float32)
    mem.add(s, y + 3 * s, float(s @ (y + 3 * s)), float((y + 3 * s) @ (y + 3 * s)))
    v = rng.standard_normal(6).astype(numpy.float32)
    assert mem.wt(v).dtype == F64 and mem.rows(numpy.array([1, 2])).dtype == F64
    assert mem.w(numpy.ones(2)).dtype == numpy.float32


def ref_cauchy(x, g, lo, hi, B):
    """The first local minimum of the model along clip(x - t g, lo, hi), segment by segment."""
    n = len(x)
    with numpy.errstate(divide="ignore", invalid="ignore"):
        t = numpy.where(g < 0, (x - hi) / g, numpy.where(g > 0, (x - lo) / g, numpy.inf))
    t = numpy.maximum(t, 0)
    stops = sorted(set(t[(t > 0) & numpy.isfinite(t)]))
    t_a, p = 0.0, numpy.zeros(n)           # p = x(t_a) - x
    for t_b in stops + [numpy.inf]:
        d = numpy.where(t > t_a, -g, 0.0)  # the path's direction on (t_a, t_b)
        slope = g @ d + d @ B @ p          # m'(t_a+)
        curv = d @ B @ d
        if slope >= 0:
            return t_a
        if curv > 0 and t_a - slope / curv < t_b:
            return t_a - slope / curv
        p = p + (t_b - t_a) * d
        t_a = t_b
    return t_a


def box_problem(rng, n, spread):
    lo, hi = -numpy.ones(n), numpy.ones(n)
    x = rng.uniform(-1, 1, n)
    x[:3] = [-1.0, 1.0, -1.0]              # on a bound, pushed outwards or inwards
    g = rng.standard_normal(n) * spread
    g[:3] = [2.0, -1.5, -0.7]
    g[3] = 0.0                              # a variable the path never moves
    return x, g, lo, hi


@pytest.mark.parametrize("reach", [2.0, 1.05])
@pytest.mark.parametrize("count, spread", [(0, 0.3), (0, 30.0), (3, 0.3), (5, 30.0), (5, 3.0)])
def test_cauchy_point_is_the_first_minimum_along_the_path(dev, rng, monkeypatch, count, spread, reach):
    """Few breakpoints passed (small gradient) and many (large); with and without pairs; with the
    default search reach and one that grows slowly (many rounds over part of the breakpoints)."""
    monkeypatch.setattr(lbfgsb, "REACH", reach)
    n = 12
    mem, B = memory_with_pairs(dev, rng, n, 5, count)
    x, g, lo, hi = box_problem(rng, n, spread)
    x_cp, t, t_star, c = lbfgsb.cauchy_point(dev.xp, put(dev, x), put(dev, g), put(dev, lo), put(dev, hi), mem)
    want = ref_cauchy(x, g, lo, hi, B)
    assert isinstance(t_star, float)
    assert t_star == pytest.approx(want, rel=1e-9, abs=1e-12)
    numpy.testing.assert_allclose(host(x_cp), numpy.clip(x - want * g, lo, hi), rtol=1e-9, atol=1e-12)
    if count:
        numpy.testing.assert_allclose(c, mem.wt(put(dev, host(x_cp) - x)), rtol=1e-8, atol=1e-10)


def test_cauchy_point_stays_put_when_every_variable_is_blocked(dev, rng):
    """Each variable on a bound that the gradient pushes into: no path, x_cp = x, t* = 0."""
    mem, _ = memory_with_pairs(dev, rng, 4, 3, 3)
    x, g = numpy.array([-1.0, 1.0, -1.0, 0.3]), numpy.array([2.0, -1.0, 0.5, 0.0])
    args = [put(dev, a) for a in (x, g, -numpy.ones(4), numpy.ones(4))]
    x_cp, t, t_star, c = lbfgsb.cauchy_point(dev.xp, *args, mem)
    assert t_star == 0.0 and not c.any()
    numpy.testing.assert_array_equal(host(x_cp), x)
    x_bar = lbfgsb.subspace_point(dev.xp, *args, mem, x_cp, t, t_star, c)
    numpy.testing.assert_array_equal(host(x_bar), x)     # the only free variable has g = 0 and no pull


def test_cauchy_point_stays_put_when_the_model_is_not_convex_and_nothing_bends(dev, rng):
    """No bounds (no breakpoints) and a model with negative curvature along -g (theta forced negative,
    as float32 round-off could leave it): no step instead of an endless search."""
    mem, _ = memory_with_pairs(dev, rng, 6, 3, 3)
    mem.theta = -1e6
    x, g = rng.standard_normal(6), rng.standard_normal(6)
    inf = numpy.full(6, numpy.inf)
    x_cp, t, t_star, c = lbfgsb.cauchy_point(dev.xp, put(dev, x), put(dev, g), put(dev, -inf), put(dev, inf), mem)
    assert t_star == 0.0
    numpy.testing.assert_array_equal(host(x_cp), x)


def test_breakpoints_against_a_loop(dev):
    """g of +-1, 0 and others; variables on a bound; an infinite bound."""
    x = numpy.array([0.0, 0.5, -1.0, 1.0, 0.2, 0.2, 3.0, -0.5])
    g = numpy.array([1.0, -1.0, 1.0, -2.0, 0.0, 0.5, -1.0, 2.0])
    lo = numpy.array([-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -numpy.inf, -numpy.inf])
    hi = numpy.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, numpy.inf, 2.0])
    want = []
    for xi, gi, li, hi_ in zip(x, g, lo, hi):
        if gi == 0:
            want.append(numpy.inf)
        else:
            want.append(max((xi - (hi_ if gi < 0 else li)) / gi, 0.0))
    got = host(lbfgsb.breakpoints(dev.xp, *[put(dev, a) for a in (x, g, lo, hi)]))
    numpy.testing.assert_array_equal(got, want)


def test_singular_middle_matrix_is_solved_by_least_squares():
    K = numpy.array([[1.0, 1.0], [1.0, 1.0]])
    v = numpy.array([2.0, 4.0])
    numpy.testing.assert_allclose(lbfgsb._solve(K, v), numpy.linalg.pinv(K) @ v, rtol=1e-12)
    numpy.testing.assert_allclose(lbfgsb._solve(numpy.eye(2) * 2, v), [1.0, 2.0])


def ref_subspace(x, g, lo, hi, B, x_cp, free):
    """Minimise the model over the free variables with B's free block; projected when that
    descends, else cut at the box."""
    r = g + B @ (x_cp - x)
    Z = numpy.flatnonzero(free)
    du = numpy.zeros(len(x))
    du[Z] = numpy.linalg.solve(B[numpy.ix_(Z, Z)], -r[Z])
    x_bar = numpy.clip(x_cp + du, lo, hi)
    if g @ (x_bar - x) < 0:
        return x_bar
    with numpy.errstate(divide="ignore", invalid="ignore"):
        room = numpy.where(du > 0, (hi - x_cp) / du, numpy.where(du < 0, (lo - x_cp) / du, numpy.inf))
    return x_cp + min(1.0, room.min()) * du


@pytest.mark.parametrize("spread, n, count", [(0.3, 12, 6), (3.0, 12, 6), (30.0, 12, 6), (3.0, 40, 6),
                                             (3.0, 12, 0)])
def test_subspace_step_minimises_the_model_over_the_free_variables(dev, rng, spread, n, count):
    """n = 40: more variables free than fixed, so the free Gram is all pairs' minus the fixed ones'.
    No pairs: the step ends at the Cauchy point."""
    mem, B = memory_with_pairs(dev, rng, n, 5, count)
    x, g, lo, hi = box_problem(rng, n, spread)
    args = [put(dev, a) for a in (x, g, lo, hi)]
    x_cp, t, t_star, c = lbfgsb.cauchy_point(dev.xp, *args, mem)
    x_bar = lbfgsb.subspace_point(dev.xp, *args, mem, x_cp, t, t_star, c)
    free = host(t) > t_star
    assert 0 < free.sum() < n
    want = ref_subspace(x, g, lo, hi, B, host(x_cp), free) if count else host(x_cp)
    numpy.testing.assert_allclose(host(x_bar), want, rtol=1e-8, atol=1e-10)
    assert (host(x_bar) >= lo).all() and (host(x_bar) <= hi).all()


def quadratic(rng, n=300):
    q = rng.standard_normal((n, 40))
    H = q @ q.T / 40 + numpy.diag(rng.uniform(0.01, 3.0, n))
    b = rng.standard_normal(n) * 3
    return H, b


def test_device_lbfgsb_follows_scipy_on_a_box_constrained_quadratic(dev, rng):
    """The same method: the losses after each of the first 15 iterations agree with SciPy's
    L-BFGS-B to 1e-6 (float64), and both end at the box-constrained minimum."""
    H, b = quadratic(rng)

    def fun_and_grad(x):
        z = host(x).reshape(-1)
        g = H @ z - b
        return float(0.5 * z @ H @ z - b @ z), dev.asarray(g.reshape(x.shape))

    x0 = dev.asarray(numpy.zeros((1, 300)))
    runs = {}
    for name, minimize in (("scipy", lbfgs_minimize), ("device", lbfgs_device_minimize)):
        seen = []
        res = minimize(fun_and_grad, x0, bounds=(-0.5, 0.5), max_iter=15, history=10,
                       callback=lambda it, x, losses: seen.append(losses))
        runs[name] = (seen, res)
    numpy.testing.assert_allclose(runs["device"][0], runs["scipy"][0], rtol=1e-6)
    best = scipy.optimize.minimize(lambda z: (0.5 * z @ H @ z - b @ z, H @ z - b), numpy.zeros(300),
                                   jac=True, method="L-BFGS-B", bounds=[(-0.5, 0.5)] * 300,
                                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12}).fun
    res = lbfgs_device_minimize(fun_and_grad, x0, bounds=(-0.5, 0.5), max_iter=300, ftol=1e-15, gtol=1e-12)
    assert res.losses == pytest.approx(best, rel=1e-9)


def test_device_lbfgsb_keeps_the_image_dtype(rng):
    """float32 in, float32 out: a NumPy float64 scalar times the image would promote it (and
    double every later evaluation's cost)."""
    import xnn
    H, b = quadratic(rng, 50)

    def fun_and_grad(x):
        z = x.reshape(-1).astype(F64)
        return float(0.5 * z @ H @ z - b @ z), (H @ z - b).astype(numpy.float32).reshape(x.shape)

    res = lbfgs_device_minimize(fun_and_grad, xnn.device("cpu").asarray(numpy.zeros((1, 50), numpy.float32)),
                                bounds=(-0.5, 0.5), max_iter=40)
    assert res.x.dtype == numpy.float32 and res.iterations > 5 and not res.stopped
    best = scipy.optimize.minimize(lambda z: (0.5 * z @ H @ z - b @ z, H @ z - b), numpy.zeros(50),
                                   jac=True, method="L-BFGS-B", bounds=[(-0.5, 0.5)] * 50).fun
    assert res.losses == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("seed, case", [(982, "cut at a lower bound"), (1517, "cut at an upper bound"),
                                        (5, "projected onto an upper bound"), (0, "one variable free")])
def test_subspace_step_in_cases_found_by_search(dev, seed, case):
    """Rare cases of an ill-conditioned 3-variable model (seeds found by search): projecting the
    subspace minimiser gives an ascent direction, so the step is cut where it leaves the box
    (at a lower or an upper bound); the projection is a descent and clips at an upper bound;
    a single variable is free at the Cauchy point."""
    rng = numpy.random.default_rng(seed)
    n = 3
    q = rng.standard_normal((n, n))
    A = q @ q.T + 1e-3 * numpy.eye(n)
    mem, pairs = lbfgsb.PairMemory(dev.xp, n, 3, F64), []
    for _ in range(3):
        s = rng.standard_normal(n)
        y = A @ s
        mem.add(put(dev, s), put(dev, y), float(s @ y), float(y @ y))
        pairs.append((s, y))
    B = dense_bfgs(pairs)
    x, g = rng.uniform(-1, 1, n), rng.standard_normal(n) * 10 ** rng.uniform(-2, 1)
    lo, hi = -numpy.ones(n), numpy.ones(n)
    args = [put(dev, a) for a in (x, g, lo, hi)]
    x_cp, t, t_star, c = lbfgsb.cauchy_point(dev.xp, *args, mem)
    free = host(t) > t_star
    r = g + B @ (host(x_cp) - x)
    Z = numpy.flatnonzero(free)
    du = numpy.zeros(n)
    du[Z] = numpy.linalg.solve(B[numpy.ix_(Z, Z)], -r[Z])
    descends = g @ (numpy.clip(host(x_cp) + du, lo, hi) - x) < 0
    assert {"cut at a lower bound": not descends and (host(x_cp) + du < lo).any(),
            "cut at an upper bound": not descends and (host(x_cp) + du > hi).any(),
            "projected onto an upper bound": descends and (host(x_cp) + du > hi).any(),
            "one variable free": free.sum() == 1}[case]                    # the case this seed is for
    x_bar = lbfgsb.subspace_point(dev.xp, *args, mem, x_cp, t, t_star, c)
    numpy.testing.assert_allclose(host(x_bar), ref_subspace(x, g, lo, hi, B, host(x_cp), free),
                                  rtol=1e-8, atol=1e-10)
