"""Style-transfer losses, objective and image optimisers (xnn.style).

References are written from the maths with explicit loops in float64 NumPy;
gradients are checked against central finite differences.
"""
import signal

import numpy
import pytest
import scipy.optimize

import xnn
from tests.conftest import REPO, weights_path
from tests.gradcheck import numerical_grad, rel_error
from xnn.layers import AvgPool2d, Conv2d, MaxPool2d, ReLU
from xnn.style import (StopFlag, StyleTransferObjective, adam_minimize, blend_grams, clip_to_range,
                       content_loss, gram_backward, gram_matrix, lbfgs_device_minimize, lbfgs_minimize,
                       losses_to_host, style_loss, total_of, tv_loss)

F64 = numpy.float64


# ---------------------------------------------------------------- references
def ref_gram(F):
    """G[i, j] = sum_{h, w} F[0, i, h, w] F[0, j, h, w], by loops over channel pairs and pixels."""
    F = numpy.asarray(F, F64)
    c, h, w = F.shape[1:]
    G = numpy.zeros((c, c))
    for i in range(c):
        for j in range(c):
            s = 0.0
            for y in range(h):
                for x in range(w):
                    s += F[0, i, y, x] * F[0, j, y, x]
            G[i, j] = s
    return G


def ref_style(F, A):
    """E = sum (G / M - A)^2 / (4 N^2) with G from ref_gram; A is a Gram per position."""
    c, h, w = F.shape[1:]
    G = ref_gram(F) / (h * w)
    return float(((G - A) ** 2).sum() / (4.0 * c * c))


def ref_target(S):
    """A style image's Gram per position, G_s / M_s."""
    return ref_gram(S) / (S.shape[2] * S.shape[3])


def ref_tv(x):
    x = numpy.asarray(x, F64)
    h, w = x.shape[-2:]
    s = 0.0
    for c in range(x.shape[1]):
        for i in range(h):
            for j in range(w):
                if i + 1 < h:
                    s += (x[0, c, i + 1, j] - x[0, c, i, j]) ** 2
                if j + 1 < w:
                    s += (x[0, c, i, j + 1] - x[0, c, i, j]) ** 2
    return s


def small_vgg(dev, dtype=F64, seed=0):
    """A tiny VGG-shaped net with VGG layer names and random weights and biases."""
    rng = numpy.random.default_rng(seed)
    layers = []
    cin = 3
    for block, (cout, pool) in enumerate([(4, MaxPool2d), (5, AvgPool2d), (6, None)], start=1):
        for i in (1, 2) if pool else (1,):
            conv = Conv2d(cin, cout, 3, padding=1, seed=seed + 10 * block + i)
            conv.params["b"] = rng.standard_normal(cout).astype(numpy.float32) * 0.1
            layers += [(f"conv{block}_{i}", conv), (f"relu{block}_{i}", ReLU())]
            cin = cout
        if pool:
            layers.append((f"pool{block}", pool(2)))
    return xnn.Sequential(layers).to(dev, dtype)


def put(dev, a, dtype=F64):
    return dev.asarray(numpy.asarray(a, dtype))


def host(a):
    return numpy.asarray(xnn.to_numpy(a), F64)


# ---------------------------------------------------------------- single losses
def test_content_loss_value_and_grad(dev, rng):
    F, P = put(dev, rng.standard_normal((1, 3, 4, 5))), put(dev, rng.standard_normal((1, 3, 4, 5)))
    loss, grad = content_loss(F, P)
    assert float(loss) == pytest.approx(0.5 * ((host(F) - host(P)) ** 2).sum(), rel=1e-12)
    num = numerical_grad(lambda: content_loss(F, P)[0], F)
    assert rel_error(host(grad), num) < 1e-6


@pytest.mark.parametrize("channels_last_memory", [False, True])
def test_gram_matrix_against_loops(dev, rng, channels_last_memory):
    host_f = rng.standard_normal((1, 4, 3, 5))
    if channels_last_memory:  # the NCHW view of NHWC memory that xnn convolutions return
        F = put(dev, host_f.transpose(0, 2, 3, 1).copy()).transpose(0, 3, 1, 2)
    else:
        F = put(dev, host_f)
    G = host(gram_matrix(F))
    numpy.testing.assert_allclose(G, ref_gram(host_f), rtol=1e-12, atol=1e-12)


def test_gram_backward_matches_finite_differences(dev, rng):
    F = put(dev, rng.standard_normal((1, 3, 4, 4)))
    dG = put(dev, rng.standard_normal((3, 3)))  # not symmetric on purpose
    num = numerical_grad(lambda: (gram_matrix(F) * dG).sum(), F)
    assert rel_error(host(gram_backward(F, dG)), num) < 1e-6


def test_style_loss_value_against_loops(dev, rng):
    F = rng.standard_normal((1, 5, 3, 4))
    A = ref_target(rng.standard_normal((1, 5, 7, 2)))  # style image of another size
    loss, _ = style_loss(put(dev, F), put(dev, A))
    assert float(loss) == pytest.approx(ref_style(F, A), rel=1e-12)


def test_style_loss_does_not_depend_on_either_image_size(dev, rng):
    """A picture made of the style image twice over, or of its top half, has the style's
    statistics per position: its style loss is zero whatever the two sizes (the unnormalised
    Gatys target, which sums over the style's positions, gave 1/4 of the picture's own
    per-position Gram here)."""
    S = numpy.maximum(rng.standard_normal((1, 6, 4, 5)), 0)
    A = put(dev, ref_target(S))
    for picture in (numpy.concatenate([S, S], axis=3), numpy.concatenate([S, S, S], axis=2), S):
        loss, grad = style_loss(put(dev, picture), A)
        assert abs(float(loss)) < 1e-20 and float(abs(host(grad)).max()) < 1e-12
    # and one that differs is judged the same at any size: tiled k times, the same loss
    F = numpy.maximum(rng.standard_normal((1, 6, 3, 5)), 0)
    once = float(style_loss(put(dev, F), A)[0])
    assert once > 1e-3
    for k in (2, 3):
        assert float(style_loss(put(dev, numpy.concatenate([F] * k, axis=2)), A)[0]) == pytest.approx(once, rel=1e-12)


def test_style_loss_grad_matches_finite_differences(dev, rng):
    F = put(dev, rng.standard_normal((1, 4, 3, 5)))
    A = put(dev, ref_target(rng.standard_normal((1, 4, 5, 2))))
    _, grad = style_loss(F, A)
    num = numerical_grad(lambda: style_loss(F, A)[0], F)
    assert rel_error(host(grad), num) < 1e-6


def test_style_loss_is_float32_safe(dev, rng):
    """Large VGG-like activations: float32 loss and gradient agree with float64."""
    F = numpy.maximum(rng.standard_normal((1, 32, 48, 48)) * 300, 0)
    A = numpy.maximum(rng.standard_normal((1, 32, 40, 56)) * 500, 0)
    A = A[0].reshape(32, -1) @ A[0].reshape(32, -1).T / (40 * 56)
    l64, g64 = style_loss(put(dev, F), put(dev, A))
    l32, g32 = style_loss(put(dev, F, numpy.float32), put(dev, A, numpy.float32))
    assert g32.dtype == numpy.float32 and numpy.isfinite(float(l32))
    assert float(l32) == pytest.approx(float(l64), rel=1e-4)
    assert rel_error(host(g32), host(g64)) < 1e-4


def test_tv_loss_value_and_grad(dev, rng):
    x = put(dev, rng.standard_normal((1, 3, 5, 6)))
    loss, grad = tv_loss(x)
    assert float(loss) == pytest.approx(ref_tv(host(x)), rel=1e-12)
    assert rel_error(host(grad), numerical_grad(lambda: tv_loss(x)[0], x)) < 1e-6


def test_blend_grams_normalises_and_rejects_bad_weights(dev, rng):
    A1, A2 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    out = host(blend_grams([put(dev, A1), put(dev, A2)], [1, 3]))
    numpy.testing.assert_allclose(out, 0.25 * A1 + 0.75 * A2, rtol=1e-12)
    with pytest.raises(xnn.XnnError, match="one weight per style image"):
        blend_grams([put(dev, A1), put(dev, A2)], [1.0])
    with pytest.raises(xnn.XnnError, match=">= 0"):
        blend_grams([put(dev, A1), put(dev, A2)], [1.0, -0.5])


# ---------------------------------------------------------------- objective
CONTENT = ["relu1_2", "relu2_1"]
STYLE = ["relu1_1", "relu2_1", "relu3_1"]  # relu2_1 is both a content and a style layer


def make_objective(dev, rng, dtype=F64, size=8, **weights):
    net = small_vgg(dev, dtype)
    obj = StyleTransferObjective(net, CONTENT, STYLE, **weights)
    content = put(dev, rng.uniform(-1, 1, (1, 3, size, size)), dtype)
    styles = [put(dev, rng.uniform(-1, 1, (1, 3, size + 2, size + 2)), dtype),
              put(dev, rng.uniform(-1, 1, (1, 3, size - 2, size + 1)), dtype)]
    obj.set_targets(content, styles, blend_weights=[0.3, 0.9])
    x = put(dev, rng.uniform(-1, 1, (1, 3, size, size)), dtype)
    return obj, net, content, styles, x


def test_objective_gradient_matches_finite_differences(dev, rng):
    obj, _, _, _, x = make_objective(dev, rng)
    grads = {}
    for term in ("content", "style", "tv"):  # each term on its own ...
        obj.content_weight, obj.style_weight, obj.tv_weight = (float(t == term)
                                                               for t in ("content", "style", "tv"))
        _, g = obj.loss_and_grad(x)
        num = numerical_grad(lambda: obj.losses(x)["total"], x)
        assert rel_error(host(g), num) < 1e-6, term
        grads[term] = numpy.linalg.norm(num)
    # ... and all together, weighted so that each term matters
    obj.content_weight = 1.0
    obj.style_weight = grads["content"] / grads["style"]
    obj.tv_weight = grads["content"] / grads["tv"]
    losses, g = obj.loss_and_grad(x)
    assert losses["total"] == pytest.approx(losses["content"] + losses["style"] + losses["tv"], rel=1e-12)
    assert rel_error(host(g), numerical_grad(lambda: obj.losses(x)["total"], x)) < 1e-6


def test_objective_losses_against_independent_computation(dev, rng):
    cw, sw, tw = 0.7, 3.0, 0.05
    obj, net, content, styles, x = make_objective(dev, rng, content_weight=cw, style_weight=sw, tv_weight=tw)
    losses, _ = obj.loss_and_grad(x)
    feats = lambda img: {k: host(v) for k, v in net.features(img, CONTENT + STYLE).items()}  # noqa: E731
    fx, fc, fs = feats(x), feats(content), [feats(s) for s in styles]
    lc = sum(0.5 * ((fx[n] - fc[n]) ** 2).sum() for n in CONTENT)
    b = numpy.array([0.3, 0.9]) / 1.2
    ls = sum(ref_style(fx[n], b[0] * ref_target(fs[0][n]) + b[1] * ref_target(fs[1][n]))
             for n in STYLE) / len(STYLE)
    tv = ref_tv(host(x))
    expected = {"content": cw * lc, "style": sw * ls, "tv": tw * tv, "total": cw * lc + sw * ls + tw * tv}
    for k, v in expected.items():
        assert losses[k] == pytest.approx(v, rel=1e-10), k
        assert isinstance(losses[k], float)
    device_losses = obj.losses(x, to_host=False)
    assert all(type(v) is not float and v.dtype == F64 for v in device_losses.values())
    assert losses_to_host(device_losses)["total"] == pytest.approx(expected["total"], rel=1e-10)


def test_objective_runs_one_forward_and_one_backward(dev, rng):
    obj, net, _, _, x = make_objective(dev, rng)
    calls = {n: [0, 0] for n in net.names}
    for name, layer in net:
        def counted(fn, name=name, slot=0):
            def wrapper(a):
                calls[name][slot] += 1
                return fn(a)
            return wrapper
        layer.forward, layer.backward = counted(layer.forward), counted(layer.backward, slot=1)
    obj.loss_and_grad(x)
    deepest = net.names.index("relu3_1")
    for i, name in enumerate(net.names):
        assert calls[name] == ([1, 1] if i <= deepest else [0, 0]), name
    assert all(layer.frozen for _, layer in net)
    assert not net.grads  # frozen: no weight gradients
    for c in calls.values():
        c[:] = [0, 0]
    losses = obj.losses(x)                      # the terms only: one forward, no backward, floats
    for i, name in enumerate(net.names):
        assert calls[name] == ([1, 0] if i <= deepest else [0, 0]), name
    assert set(losses) == {"content", "style", "tv", "total"} and all(type(v) is float for v in losses.values())


def test_objective_with_content_or_style_only(dev, rng):
    net = small_vgg(dev)
    img = lambda: put(dev, rng.uniform(-1, 1, (1, 3, 8, 8)))  # noqa: E731
    content_only = StyleTransferObjective(net, ["relu2_1"], [], tv_weight=0.5).set_targets(img())
    style_only = StyleTransferObjective(net, [], "relu1_2").set_targets(style_xs=img())
    x = img()
    for obj, zero in ((content_only, "style"), (style_only, "content")):
        losses, g = obj.loss_and_grad(x)
        assert losses[zero] == 0 and losses["total"] > 0
        assert rel_error(host(g), numerical_grad(lambda: obj.losses(x)["total"], x)) < 1e-6


def test_objective_rejects_bad_configuration(dev, rng):
    net = small_vgg(dev)
    with pytest.raises(xnn.XnnError, match="unknown layer 'relu9_1'"):
        StyleTransferObjective(net, ["relu9_1"], STYLE)
    with pytest.raises(xnn.XnnError, match="style_weight must be >= 0"):
        StyleTransferObjective(net, CONTENT, STYLE, style_weight=-1)
    obj = StyleTransferObjective(net, CONTENT, STYLE)
    with pytest.raises(xnn.XnnError, match="set_targets"):
        obj.losses(put(dev, rng.standard_normal((1, 3, 8, 8))))
    with pytest.raises(xnn.XnnError, match="no style image"):
        obj.set_targets(put(dev, rng.standard_normal((1, 3, 8, 8))), [])


# ---------------------------------------------------------------- optimisers
def optim_problem(dev, rng):
    """A 16x16 float32 problem in 'pixel units' (values of a few tens)."""
    net = small_vgg(dev, numpy.float32, seed=3)
    obj = StyleTransferObjective(net, ["relu2_1"], ["relu1_1", "relu2_1", "relu3_1"],
                                 content_weight=1.0, style_weight=10.0, tv_weight=1e-2)
    img = lambda s: put(dev, rng.uniform(-50, 50, s), numpy.float32)  # noqa: E731
    obj.set_targets(img((1, 3, 16, 16)), [img((1, 3, 16, 16))])
    x0 = img((1, 3, 16, 16))
    lo = numpy.array([-40.0, -45.0, -50.0]).reshape(1, 3, 1, 1)
    return obj, x0, (lo, lo + 90.0)


def test_adam_reduces_the_loss_and_keeps_the_range(dev, rng):
    obj, x0, (lo, hi) = optim_problem(dev, rng)
    seen = []

    def callback(it, x, losses):
        seen.append((it, total_of(losses_to_host(losses))))
        assert total_of(losses_to_host(losses)) == pytest.approx(obj.losses(x)["total"], rel=1e-4)

    x = x0.copy()
    res = adam_minimize(lambda z: obj.loss_and_grad(z, to_host=False), x, lr=5.0, max_iter=10,
                        bounds=(lo, hi), callback=callback, losses_fn=obj.losses)
    assert res.x is x and res.iterations == 10 and not res.stopped
    assert [it for it, _ in seen] == list(range(11))
    assert seen[-1][1] < 0.7 * seen[0][1]
    hx = host(x)
    assert (hx >= lo - 1e-4).all() and (hx <= hi + 1e-4).all()


def test_adam_stop_and_resume_give_the_same_image(rng):
    dev = xnn.device("cpu")
    obj, x0, bounds = optim_problem(dev, rng)
    full = x0.copy()
    adam_minimize(obj.loss_and_grad, full, lr=2.0, max_iter=6, bounds=bounds)
    # stop after 3 updates, checkpoint image and optimiser state, resume in a fresh optimiser
    part = x0.copy()
    opt = xnn.optim.Adam({"image": part}, lr=2.0)
    res = adam_minimize(obj.loss_and_grad, part, lr=2.0, max_iter=6, bounds=bounds, optimizer=opt,
                        callback=lambda it, x, losses: it == 3)
    assert res.stopped and res.iterations == 3 and res.x is part
    image, state = part.copy(), opt.state_dict()
    resumed = image.copy()
    opt2 = xnn.optim.Adam({"image": resumed}, lr=2.0)
    opt2.load_state_dict(state)
    res = adam_minimize(obj.loss_and_grad, resumed, lr=2.0, max_iter=6, bounds=bounds,
                        optimizer=opt2, start_iter=3)
    assert res.iterations == 3 and not res.stopped
    numpy.testing.assert_array_equal(host(resumed), host(full))
    assert not numpy.array_equal(host(image), host(full))


def test_adam_stopped_during_a_step_reports_the_image_it_stops_at(rng):
    """A stop that lands inside opt.step: the result's iteration count, its losses and the
    callbacks agree (the callback of the image it stops at has run, as for L-BFGS)."""
    dev = xnn.device("cpu")
    obj, x, bounds = optim_problem(dev, rng)
    flag = StopFlag()

    class StopInStep(xnn.optim.Adam):
        def step(self, grads):
            super().step(grads)
            if self.t == 2:
                flag.set()
    seen = []
    res = adam_minimize(obj.loss_and_grad, x, lr=2.0, max_iter=6, bounds=bounds, should_stop=flag,
                        optimizer=StopInStep({"image": x}, lr=2.0),
                        callback=lambda it, z, losses: seen.append((it, losses["total"])))
    assert res.stopped and res.iterations == 2 and [it for it, _ in seen] == [0, 1, 2]
    assert res.losses["total"] == seen[-1][1] == obj.losses(x)["total"]


def test_stop_flag_turns_the_first_signal_into_a_stop_request():
    flag = StopFlag()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with flag.installed():
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is signal.getsignal(signal.SIGINT) and handler not in before
        assert not flag()
        handler(signal.SIGTERM, None)        # what Python runs on the first signal
        assert flag() and "SIGTERM" in flag.reason
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)     # a second one forces the stop
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_stop_flag_message_goes_to_the_stderr_file_descriptor(capfd, monkeypatch):
    """The handler writes with os.write: print() inside a signal handler can re-enter a
    stderr write (a progress bar's) that the signal interrupted and raise."""
    def reentrant(*args, **kwargs):
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")
    monkeypatch.setattr("builtins.print", reentrant)
    flag = StopFlag("stopping after this step")
    with flag.installed():
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    assert flag() and "stopping after this step" in capfd.readouterr().err


def test_lbfgs_reduces_the_loss_and_keeps_the_range(dev, rng):
    obj, x0, (lo, hi) = optim_problem(dev, rng)
    x0_host = host(x0)
    seen = []

    def callback(it, x, losses):
        seen.append((it, losses["total"]))
        assert losses["total"] == pytest.approx(obj.losses(x)["total"], rel=1e-5)

    res = lbfgs_minimize(obj.loss_and_grad, x0, bounds=(lo, hi), max_iter=5, callback=callback)
    assert [it for it, _ in seen] == list(range(6)) and res.iterations == 5 and not res.stopped
    assert res.losses["total"] < 0.5 * seen[0][1]
    assert res.losses["total"] <= min(t for _, t in seen)  # the best evaluated image
    assert res.x.dtype == numpy.float32 and res.x.shape == x0.shape and xnn.device_of(res.x) is dev
    hx = host(res.x)
    assert (hx >= lo - 1e-4).all() and (hx <= hi + 1e-4).all()
    numpy.testing.assert_array_equal(host(x0), x0_host)  # x0 untouched


def test_lbfgs_stops_early_and_returns_the_best_image(dev, rng):
    obj, x0, bounds = optim_problem(dev, rng)
    flag = StopFlag()
    totals = []

    def callback(it, x, losses):
        totals.append(losses["total"])
        if it == 2:
            flag.set("test")

    res = lbfgs_minimize(obj.loss_and_grad, x0, bounds=bounds, max_iter=50, callback=callback,
                         should_stop=flag)
    assert res.stopped and res.iterations == 2 and len(totals) == 3
    assert res.losses["total"] <= min(totals)
    assert obj.losses(res.x)["total"] == pytest.approx(res.losses["total"], rel=1e-5)


def test_lbfgs_zero_iterations_and_interrupts(rng):
    dev = xnn.device("cpu")
    obj, x0, bounds = optim_problem(dev, rng)
    res = lbfgs_minimize(obj.loss_and_grad, x0, bounds=bounds, max_iter=0)
    assert res.iterations == 0 and res.evaluations == 1
    start = clip_to_range(x0.copy(), *bounds)
    assert res.losses["total"] == pytest.approx(obj.losses(start)["total"], rel=1e-6)

    def interrupting(x):
        if interrupting.calls == 2:
            raise KeyboardInterrupt
        interrupting.calls += 1
        return obj.loss_and_grad(x)
    interrupting.calls = 0
    res = lbfgs_minimize(interrupting, x0, bounds=bounds, max_iter=10, catch_interrupt=True)
    assert res.stopped and res.message == "interrupted" and res.evaluations == 2
    interrupting.calls = 0
    with pytest.raises(KeyboardInterrupt):
        lbfgs_minimize(interrupting, x0, bounds=bounds, max_iter=10)


def test_lbfgs_reports_the_losses_of_the_iterate(monkeypatch):
    """When SciPy's last evaluation is not the iterate it reports, the adapter evaluates
    the iterate for the callback; the result is the best evaluated point."""
    dev = xnn.device("cpu")
    target = numpy.full((1, 1, 2, 2), 0.3)

    def fun_and_grad(x):
        return float(((x - target) ** 2).sum()), 2 * (x - target)

    def fake_minimize(fun, x0, jac, method, callback, bounds, options):
        fun(x0)
        fun(x0 * 0.5)
        callback(x0 * 0.25)
        return scipy.optimize.OptimizeResult(message="fake done")

    monkeypatch.setattr(scipy.optimize, "minimize", fake_minimize)
    seen = []
    x0 = put(dev, numpy.ones((1, 1, 2, 2)))
    res = lbfgs_minimize(fun_and_grad, x0, max_iter=3,
                         callback=lambda it, x, losses: seen.append((it, host(x).copy(), losses)))
    assert [it for it, _, _ in seen] == [0, 1] and res.evaluations == 3 and res.message == "fake done"
    numpy.testing.assert_array_equal(seen[1][1], numpy.full((1, 1, 2, 2), 0.25))
    assert seen[1][2] == pytest.approx(4 * 0.05 ** 2)
    numpy.testing.assert_array_equal(host(res.x), seen[1][1])  # 0.25 is the best of 1, 0.5, 0.25


@pytest.mark.parametrize("minimize, options", [(lbfgs_minimize, {"ftol": 1e-15, "gtol": 1e-12}),
                                               (lbfgs_device_minimize, {"ftol": 1e-15, "gtol": 1e-12})])
def test_lbfgs_solves_a_box_constrained_quadratic(dev, rng, minimize, options):
    """min sum d_i (x_i - t_i)^2 on the box [-1, 1] is x = clip(t, -1, 1)."""
    d = put(dev, rng.uniform(0.5, 3.0, (1, 2, 5, 5)))
    t = put(dev, rng.uniform(-2.0, 2.0, (1, 2, 5, 5)))

    def fun_and_grad(x):
        r = x - t
        return float((d * r * r).sum()), 2 * d * r

    res = minimize(fun_and_grad, put(dev, numpy.zeros((1, 2, 5, 5))), bounds=(-1.0, 1.0), max_iter=100,
                   **options)
    numpy.testing.assert_allclose(host(res.x), numpy.clip(host(t), -1, 1), atol=1e-6)


def test_device_lbfgs_reduces_the_loss_and_keeps_the_range(dev, rng):
    obj, x0, (lo, hi) = optim_problem(dev, rng)
    x0_host = host(x0)
    seen = []
    res = lbfgs_device_minimize(obj.loss_and_grad, x0, bounds=(lo, hi), max_iter=8,
                                callback=lambda it, x, losses: seen.append((it, losses["total"])))
    assert [it for it, _ in seen] == list(range(9)) and res.iterations == 8 and not res.stopped
    assert res.evaluations >= 9
    assert res.losses["total"] == min(t for _, t in seen) < 0.5 * seen[0][1]
    assert obj.losses(res.x)["total"] == pytest.approx(res.losses["total"], rel=1e-5)
    hx = host(res.x)
    assert (hx >= lo - 1e-4).all() and (hx <= hi + 1e-4).all()
    numpy.testing.assert_array_equal(host(x0), x0_host)
    flag = StopFlag()
    res = lbfgs_device_minimize(obj.loss_and_grad, x0, bounds=(lo, hi), max_iter=8, should_stop=flag,
                                callback=lambda it, x, losses: flag.set() if it == 3 else None)
    assert res.stopped and res.iterations == 3


# ---------------------------------------------------------------- real weights
def test_objective_gradient_through_real_vgg_weights(dev, rng):
    path = weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    from xnn.models import vgg19
    from PIL import Image
    model = vgg19(weights=str(path), device=dev, include_top=False)
    model.net.to(dev, F64)  # float64 for the finite differences
    photo = numpy.asarray(Image.open(REPO / "examples" / "chelsea.png").convert("RGB"))

    def crop(y, x, s):
        return model.preprocess(numpy.ascontiguousarray(photo[y:y + s, x:x + s])).astype(F64)

    # weights chosen so that the three terms have gradients of similar size here
    obj = StyleTransferObjective(model, ["relu1_2", "relu2_1"], ["relu1_1", "conv1_2", "relu2_1"],
                                 content_weight=1.0, style_weight=1.0, tv_weight=300.0)
    obj.set_targets(crop(100, 150, 12), [crop(20, 30, 12), crop(200, 300, 16)], blend_weights=[2, 1])
    x = crop(120, 170, 12) + put(dev, rng.normal(0, 5, (1, 3, 12, 12)))
    losses, g = obj.loss_and_grad(x)
    assert all(v > 0 for v in losses.values())
    g = host(g)
    eps = 1e-4  # losses ~1e8: smaller steps lose digits, larger ones risk crossing a ReLU kink
    idx = [tuple(int(rng.integers(s)) for s in x.shape) for _ in range(8)]
    num, ana = [], []
    for i in idx:
        old = float(host(x)[i])
        x[i] = old + eps
        plus = obj.losses(x)["total"]
        x[i] = old - eps
        minus = obj.losses(x)["total"]
        x[i] = old
        num.append((plus - minus) / (2 * eps))
        ana.append(g[i])
    assert rel_error(ana, num) < 1e-6, (ana, num)


def test_losses_to_host_mixes_device_scalars_and_floats_in_order():
    """On a CuPy device the scalars come over in one stacked copy; plain numbers pass through;
    the keys keep their order (run on the stand-in explicitly: the CPU takes the other branch)."""
    cupy_like = xnn.device("standin")
    losses = {"content": cupy_like.asarray(numpy.float64(1.5)), "style": 2,
              "tv": cupy_like.asarray(numpy.float64(-0.25)), "total": numpy.float32(3.5)}
    out = losses_to_host(losses)
    assert list(out) == ["content", "style", "tv", "total"]
    assert out == {"content": 1.5, "style": 2.0, "tv": -0.25, "total": 3.5}
    assert all(type(v) is float for v in out.values())
    assert losses_to_host({"a": 1.0, "b": cupy_like.asarray(numpy.float64(2.0))}) == {"a": 1.0, "b": 2.0}


def test_blend_grams_default_weights_and_messages(rng):
    A1, A2 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    numpy.testing.assert_allclose(blend_grams([A1, A2]), (A1 + A2) / 2, rtol=1e-15)
    numpy.testing.assert_allclose(blend_grams([A1, A2, A2]), (A1 + 2 * A2) / 3, rtol=1e-15)
    with pytest.raises(ValueError, match="^blend_grams needs at least one Gram matrix$"):
        blend_grams([])
    with pytest.raises(ValueError, match=r"^features must have shape \(1, C, H, W\), got \(2, 3, 4, 4\)$"):
        gram_matrix(numpy.ones((2, 3, 4, 4)))


# ---------------------------------------------------------------- exact contracts (mutation testing)
def test_loss_functions_default_to_gatys_and_their_messages_name_the_shapes(dev, rng):
    from xnn.layers.layout import channels_last
    from xnn.style.losses import style_target, style_terms
    G, A = put(dev, rng.standard_normal((3, 3))), put(dev, rng.standard_normal((3, 3)))
    numpy.testing.assert_allclose(host(style_target(G, 3, 10)), host(G) / 10, rtol=1e-15)
    loss, D, k = style_terms(G, A, 3, 10)
    numpy.testing.assert_allclose(host(D), (host(G) / 10 - host(A)) / 3, rtol=1e-13)
    assert float(loss) == pytest.approx(0.25 * ((host(G) / 10 - host(A)) ** 2).sum() / 9, rel=1e-12)
    assert k == pytest.approx(1 / 30)
    with pytest.raises(ValueError, match=r"^content features \(1, 3, 4, 5\) and target \(1, 3, 5, 4\) differ in shape$"):
        content_loss(put(dev, numpy.zeros((1, 3, 4, 5))), put(dev, numpy.zeros((1, 3, 5, 4))))
    with pytest.raises(ValueError, match=r"^style target Gram \(2, 2\) does not fit 3-channel features$"):
        style_loss(put(dev, numpy.zeros((1, 3, 4, 5))), put(dev, numpy.zeros((2, 2))))
    # the content gradient comes back in F's memory order even for a target of another order
    F = dev.asarray(rng.standard_normal((1, 4, 5, 3))).transpose(0, 3, 1, 2)     # channels-last
    P = put(dev, rng.standard_normal((1, 3, 4, 5)))                               # NCHW
    _, grad = content_loss(F, P)
    assert channels_last(grad)
    numpy.testing.assert_array_equal(host(grad), host(F) - host(P))


def test_objective_defaults_messages_and_layer_order(dev, rng):
    from xnn.layers.layout import channels_last
    net = small_vgg(dev)
    obj = StyleTransferObjective(net, ["relu2_1"], ["relu1_1", "conv1_1"])
    assert (obj.content_weight, obj.style_weight, obj.tv_weight) == (1.0, 1.0, 0.0)
    assert obj.layers == ["conv1_1", "relu1_1", "relu2_1"]                        # the model's order
    with pytest.raises(xnn.XnnError, match=r"^unknown layer 'relu9_1'; the model's layers are: "
                                           + ", ".join(net.names) + "$"):
        StyleTransferObjective(net, ["relu9_1"], STYLE)
    with pytest.raises(xnn.XnnError, match=r"^content_weight must be >= 0, got -1$"):
        StyleTransferObjective(net, CONTENT, STYLE, content_weight=-1)
    with pytest.raises(xnn.XnnError, match=r"^tv_weight must be >= 0, got -0.5$"):
        StyleTransferObjective(net, CONTENT, STYLE, tv_weight=-0.5)
    with pytest.raises(xnn.XnnError, match=r"^2 style layer weights for 3 style layers$"):
        StyleTransferObjective(net, CONTENT, STYLE, style_layer_weights=[1, 2])
    img = put(dev, rng.uniform(-1, 1, (1, 3, 8, 8)))
    with pytest.raises(xnn.XnnError, match=r"^content layers are set but no content image was given$"):
        obj.set_targets(None, img)
    with pytest.raises(xnn.XnnError, match=r"^style layers are set but no style image was given$"):
        obj.set_targets(img, None)
    obj.set_targets(img, img)
    assert channels_last(net.features(img, ["relu2_1"])["relu2_1"])
    assert channels_last(obj.content_targets["relu2_1"])                       # the features' memory order


def test_objective_works_with_a_model_without_layer_names(dev, rng):
    """Any model with features() and backward() will do; the loss layers are then taken in the
    order given (content, then style), each once."""
    net = small_vgg(dev)

    class Bare:
        def features(self, x, names):
            return net.features(x, names)

        def backward(self, inject):
            return net.backward(inject=inject)

    img = lambda: put(dev, rng.uniform(-1, 1, (1, 3, 8, 8)))  # noqa: E731
    bare = StyleTransferObjective(Bare(), ["relu2_1"], ["relu1_1", "relu2_1"])
    named = StyleTransferObjective(net, ["relu2_1"], ["relu1_1", "relu2_1"])
    assert bare.layers == ["relu2_1", "relu1_1"]
    content, style, x = img(), img(), img()
    bare.set_targets(content, style)
    named.set_targets(content, style)
    (lb, gb), (ln, gn) = bare.loss_and_grad(x), named.loss_and_grad(x)
    assert lb == pytest.approx(ln, rel=1e-12)
    numpy.testing.assert_allclose(host(gb), host(gn), rtol=1e-10, atol=1e-14)


def test_objective_weights_scale_the_gradient_and_zero_weights_skip_the_backward(dev, rng):
    obj, net, _, _, x = make_objective(dev, rng, style_weight=0.0)
    _, g1 = obj.loss_and_grad(x)
    obj.content_weight = 2.0
    _, g2 = obj.loss_and_grad(x)
    numpy.testing.assert_allclose(host(g2), 2 * host(g1), rtol=1e-12)
    calls = []
    for name, layer in net:
        layer.backward = (lambda fn, name: lambda a: calls.append(name) or fn(a))(layer.backward, name)
    obj.content_weight = 0.0
    losses, g = obj.loss_and_grad(x)                      # every term weighted 0: no backward at all
    assert calls == [] and losses["total"] == 0
    assert g.shape == x.shape and g.dtype == x.dtype and not host(g).any()
    obj.tv_weight = 0.5
    _, g = obj.loss_and_grad(x)                           # TV only: its gradient, still no backward
    assert calls == []
    numpy.testing.assert_allclose(host(g), 0.5 * host(tv_loss(x)[1]), rtol=1e-13)
    tv_only = StyleTransferObjective(net, [], [], tv_weight=0.5).set_targets()
    losses, g = tv_only.loss_and_grad(x)                  # no loss layers: no forward either
    assert losses["total"] == pytest.approx(0.5 * ref_tv(host(x)), rel=1e-12)
    numpy.testing.assert_allclose(host(g), 0.5 * host(tv_loss(x)[1]), rtol=1e-13)


def test_objective_style_layer_weight_zero_drops_the_layer(dev, rng):
    net = small_vgg(dev)
    img = lambda: put(dev, rng.uniform(-1, 1, (1, 3, 8, 8)))  # noqa: E731
    content, style, x = img(), img(), img()
    with_zero = StyleTransferObjective(net, CONTENT, STYLE, style_layer_weights=[0, 1, 2])
    without = StyleTransferObjective(net, CONTENT, STYLE[1:], style_layer_weights=[1, 2])
    (l0, g0), (l1, g1) = (o.set_targets(content, style).loss_and_grad(x) for o in (with_zero, without))
    assert l0 == pytest.approx(l1, rel=1e-12)
    numpy.testing.assert_allclose(host(g0), host(g1), rtol=1e-10, atol=1e-14)


def test_objective_loss_terms_keep_the_dtype_and_come_to_the_host_only_when_asked(dev, rng):
    obj, _, _, _, x = make_objective(dev, rng, dtype=numpy.float32, tv_weight=0.1)
    losses, _ = obj.loss_and_grad(x)
    assert all(type(v) is float for v in losses.values())
    on_device, g = obj.loss_and_grad(x, to_host=False)
    assert g.dtype == numpy.float32
    assert all(type(v) is not float and v.dtype == numpy.float32 for v in on_device.values())
    assert all(v.dtype == numpy.float32 for v in obj.losses(x, to_host=False).values())


def test_objective_says_when_the_model_gives_no_input_gradient(dev, rng):
    obj, net, _, _, x = make_objective(dev, rng)
    net["conv1_1"].needs_input_grad = False
    with pytest.raises(RuntimeError, match=r"^the model returned no input gradient \(its first layer has "
                                           r"needs_input_grad=False\)$"):
        obj.loss_and_grad(x)
