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


def test_negative_learning_rate_is_refused():
    with pytest.raises(ValueError):
        SGD({"w": numpy.zeros(1)}, lr=-1)
