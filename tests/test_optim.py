"""SGD and Adam against hand computations and an independent float64 reference, state round trips."""
import numpy
import pytest

import xnn
from xnn.optim import SGD, Adam


def quadratic(dev):
    target = dev.asarray(numpy.array([1.0, -2.0, 3.0]))
    p = {"w": dev.asarray(numpy.zeros(3))}
    return p, target


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.1),
    lambda p: SGD(p, lr=0.05, momentum=0.9),
    lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    lambda p: Adam(p, lr=0.1),
])
def test_optimisers_minimise_a_quadratic(dev, make):
    p, target = quadratic(dev)
    opt = make(p)
    for _ in range(300):
        opt.step({"w": 2 * (p["w"] - target)})
    numpy.testing.assert_allclose(xnn.to_numpy(p["w"]), xnn.to_numpy(target), atol=1e-3)


def test_sgd_momentum_and_weight_decay_match_hand_computation():
    p = {"w": numpy.array([1.0])}
    opt = SGD(p, lr=0.1, momentum=0.5, weight_decay=0.1)
    opt.step({"w": numpy.array([2.0])})   # g=2.1, v=2.1, w=1-0.21
    opt.step({"w": numpy.array([2.0])})   # g=2+0.079=2.079, v=1.05+2.079
    numpy.testing.assert_allclose(p["w"], [0.79 - 0.1 * (1.05 + 2.079)])


def test_adam_first_step_is_lr_times_sign():
    p = {"w": numpy.array([0.0, 0.0])}
    Adam(p, lr=0.01).step({"w": numpy.array([3.0, -0.5])})
    numpy.testing.assert_allclose(p["w"], [-0.01, 0.01], rtol=1e-6)


def gradient_sequence(steps, shape=(2, 3), seed=7):
    """A non-trivial gradient sequence: random signs and scales over five decades, a few zeros."""
    rng = numpy.random.default_rng(seed)
    gs = rng.standard_normal((steps,) + shape) * 10.0 ** rng.uniform(-3, 2, (steps,) + shape)
    gs[3, 0, 1] = 0.0
    return gs


def adam_reference(p0, grads, lr, b1, b2, eps, weight_decay=0.0):
    """Kingma & Ba (2015), Algorithm 1, in float64, one plain loop per step and element:
    m_t = b1 m + (1-b1) g,  v_t = b2 v + (1-b2) g^2,  m^ = m_t / (1-b1^t),  v^ = v_t / (1-b2^t),
    p_t = p - lr m^ / (sqrt(v^) + eps); weight decay (L2) adds weight_decay * p to g first."""
    p = [float(a) for a in numpy.ravel(p0)]
    m, v = [0.0] * len(p), [0.0] * len(p)
    history = []
    for t, g_t in enumerate(grads, start=1):
        for i, g in enumerate(numpy.ravel(g_t)):
            g = float(g) + weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            p[i] = p[i] - lr * m_hat / (v_hat ** 0.5 + eps)
        history.append(numpy.reshape(p, numpy.shape(p0)))
    return history


def sgd_reference(p0, grads, lr, momentum, weight_decay, nesterov):
    """PyTorch's SGD (Sutskever et al. momentum, dampening 0) in float64, element by element:
    g' = g + wd p;  b = g' at t = 1, else momentum b + g';  step = g' + momentum b (nesterov) or b."""
    p = [float(a) for a in numpy.ravel(p0)]
    buf = [None] * len(p)
    history = []
    for g_t in grads:
        for i, g in enumerate(numpy.ravel(g_t)):
            g = float(g) + weight_decay * p[i]
            if momentum:
                buf[i] = g if buf[i] is None else momentum * buf[i] + g
                g = g + momentum * buf[i] if nesterov else buf[i]
            p[i] = p[i] - lr * g
        history.append(numpy.reshape(p, numpy.shape(p0)))
    return history


@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6),
                                dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.1)])
def test_adam_follows_kingma_and_ba_over_many_steps(dev, kw):
    """25 steps on every backend against the float64 loop above: bias correction must follow t."""
    steps = 25
    grads = gradient_sequence(steps)
    p0 = numpy.random.default_rng(3).standard_normal((2, 3))
    b1, b2 = kw.get("betas", (0.9, 0.999))
    want = adam_reference(p0, grads, kw["lr"], b1, b2, kw.get("eps", 1e-8), kw.get("weight_decay", 0.0))
    p = {"w": dev.asarray(p0.copy())}
    opt = Adam(p, **kw)
    for t in range(steps):
        opt.step({"w": dev.asarray(grads[t])})
        assert opt.t == t + 1
        numpy.testing.assert_allclose(xnn.to_numpy(p["w"]), want[t], rtol=1e-12, atol=1e-13,
                                      err_msg=f"step {t + 1}")


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9),
                                dict(lr=0.05, momentum=0.9, nesterov=True),
                                dict(lr=0.02, momentum=0.7, weight_decay=0.3),
                                dict(lr=0.02, momentum=0.6, weight_decay=0.2, nesterov=True),
                                dict(lr=0.1, weight_decay=0.5)])
def test_sgd_follows_the_reference_over_many_steps(dev, kw):
    steps = 12
    grads = gradient_sequence(steps, seed=11)
    p0 = numpy.random.default_rng(5).standard_normal((2, 3))
    want = sgd_reference(p0, grads, kw["lr"], kw.get("momentum", 0.0), kw.get("weight_decay", 0.0),
                         kw.get("nesterov", False))
    p = {"w": dev.asarray(p0.copy())}
    opt = SGD(p, **kw)
    for t in range(steps):
        opt.step({"w": dev.asarray(grads[t])})
        numpy.testing.assert_allclose(xnn.to_numpy(p["w"]), want[t], rtol=1e-12, atol=1e-13,
                                      err_msg=f"step {t + 1}")


def test_sgd_does_not_alias_the_gradient_or_its_momentum():
    """The caller's gradient is never written into; parameters without a gradient stay put."""
    p = {"w": numpy.ones(2), "frozen": numpy.ones(2)}
    opt = SGD(p, lr=0.1, momentum=0.5)
    g = numpy.array([1.0, -2.0])
    opt.step({"w": g})
    opt.step({"w": g})
    numpy.testing.assert_array_equal(g, [1.0, -2.0])
    numpy.testing.assert_array_equal(p["frozen"], [1.0, 1.0])
    numpy.testing.assert_allclose(p["w"], 1 - 0.1 * numpy.array([1.0, -2.0]) * (1 + 1.5))


def test_optimiser_state_roundtrip():
    p = {"w": numpy.zeros(3)}
    opt = Adam(p, lr=0.1)
    opt.step({"w": numpy.ones(3)})
    p2 = {"w": p["w"].copy()}
    opt2 = Adam(p2, lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    opt.step({"w": numpy.ones(3)})
    opt2.step({"w": numpy.ones(3)})
    numpy.testing.assert_array_equal(p["w"], p2["w"])


@pytest.mark.parametrize("lr", [-1, 0])
def test_learning_rate_must_be_positive(lr):
    for cls in (SGD, Adam):
        with pytest.raises(ValueError, match="learning rate must be > 0"):
            cls({"w": numpy.zeros(1)}, lr=lr)


def test_default_hyperparameters():
    """SGD(lr=0.01, no momentum, no decay); Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, no decay)."""
    grads = gradient_sequence(6)
    p0 = numpy.random.default_rng(9).standard_normal((2, 3))
    for cls, want in ((SGD, sgd_reference(p0, grads, 0.01, 0.0, 0.0, False)),
                      (Adam, adam_reference(p0, grads, 1e-3, 0.9, 0.999, 1e-8))):
        p = {"w": p0.copy()}
        opt = cls(p)
        for t, g in enumerate(grads):
            opt.step({"w": g})
            numpy.testing.assert_allclose(p["w"], want[t], rtol=1e-12, atol=1e-13)
    tiny = {"w": numpy.zeros(1)}
    Adam(tiny).step({"w": numpy.array([1e-9])})        # eps 1e-8 is felt: the step is lr/11, not lr
    numpy.testing.assert_allclose(tiny["w"], [-1e-3 * 1e-9 / (1e-9 + 1e-8)], rtol=1e-6)


def test_state_dict_is_a_snapshot_and_names_may_hold_slashes():
    """state_dict copies (later steps do not change it); a parameter named "block/conv/W" round-trips."""
    p = {"block/conv/W": numpy.zeros(3), "b": numpy.zeros(2)}
    opt = SGD(p, lr=0.1, momentum=0.9)
    opt.step({"block/conv/W": numpy.ones(3), "b": numpy.ones(2)})
    state = opt.state_dict()
    assert sorted(state) == ["b/v", "block/conv/W/v", "t"] and int(state["t"]) == 1
    opt.step({"block/conv/W": numpy.ones(3), "b": numpy.ones(2)})
    numpy.testing.assert_array_equal(state["block/conv/W/v"], numpy.ones(3))
    fresh = SGD({k: v.copy() for k, v in p.items()}, lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.t == 2
    numpy.testing.assert_array_equal(fresh.slots["block/conv/W"]["v"], numpy.full(3, 1.9))
    numpy.testing.assert_array_equal(fresh.slots["b"]["v"], numpy.full(2, 1.9))


def test_load_state_dict_refuses_what_does_not_fit():
    params = {"w": numpy.zeros((2, 3)), "b": numpy.zeros(3)}
    adam = Adam(params, lr=0.1)
    adam.step({"w": numpy.ones((2, 3)), "b": numpy.ones(3)})
    state = adam.state_dict()
    Adam(dict(params), lr=0.1).load_state_dict(state)                       # fits
    with pytest.raises(xnn.XnnError, match="no step count 't'"):
        Adam(params).load_state_dict({k: v for k, v in state.items() if k != "t"})
    with pytest.raises(xnn.XnnError, match="state entry 'w/m' does not fit this optimiser"):
        SGD(params, momentum=0.9).load_state_dict(state)                    # Adam state into SGD
    with pytest.raises(xnn.XnnError, match=r"state 'w/m' has shape \(3, 2\), the parameter has \(2, 3\)"):
        Adam(params).load_state_dict({**state, "w/m": numpy.zeros((3, 2))})
    with pytest.raises(xnn.XnnError, match="'gone/m' does not fit"):
        Adam(params).load_state_dict({**state, "gone/m": numpy.zeros(3)})


def test_load_state_dict_messages_name_the_optimiser_and_list_what_fits():
    """The exact error texts: the optimiser's class, at most 6 state keys, at most 4 parameters
    (' ...' only past 4), the state slots per parameter ('none' for a stateless optimiser)."""
    from xnn.optim import Optimizer

    def message(opt, state):
        with pytest.raises(xnn.XnnError) as info:
            opt.load_state_dict(state)
        return str(info.value)

    seven = {f"k{i}": numpy.zeros(1) for i in range(7)}
    assert message(Adam({"w": numpy.zeros(1)}), seven) == \
        "Adam state has no step count 't' (keys: k0, k1, k2, k3, k4, k5)"
    four = {f"p{i}": numpy.zeros(1) for i in range(4)}
    five = {f"p{i}": numpy.zeros(1) for i in range(5)}
    stray = {"t": numpy.asarray(1), "x/v": numpy.zeros(1)}
    assert message(SGD(four, momentum=0.9), stray) == (
        "SGD state entry 'x/v' does not fit this optimiser (parameters: p0, p1, p2, p3; "
        "state per parameter: v)")
    assert message(Adam(five), stray) == (
        "Adam state entry 'x/v' does not fit this optimiser (parameters: p0, p1, p2, p3 ...; "
        "state per parameter: m, v)")

    class Stateless(Optimizer):
        def _update(self, name, p, g):
            p -= self.lr * g

    assert message(Stateless({"w": numpy.zeros(1)}, lr=0.1), {"t": numpy.asarray(0), "w/v": numpy.zeros(1)}) == (
        "Stateless state entry 'w/v' does not fit this optimiser (parameters: w; state per parameter: none)")
