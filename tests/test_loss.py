"""SoftmaxCrossEntropy: value against an independent float64 computation, gradient, stability, refusals."""
import numpy
import pytest

import xnn
from xnn.layers import SoftmaxCrossEntropy

from .gradcheck import numerical_grad, rel_error


def randn(rng, *shape):
    return rng.standard_normal(shape)


def test_softmax_cross_entropy_gradient_and_value(dev, rng):
    crit = SoftmaxCrossEntropy().to(dev)
    logits = dev.asarray(randn(rng, 4, 5))
    labels = dev.asarray(numpy.array([0, 3, 4, 3]))
    crit.forward(logits, labels)
    analytic = xnn.to_numpy(crit.backward())
    numeric = numerical_grad(lambda: crit.forward(logits, labels), logits)
    assert rel_error(analytic, numeric) < 1e-6
    host = xnn.to_numpy(logits)
    expect = -numpy.mean([host[i, t] - numpy.log(numpy.exp(host[i]).sum()) for i, t in enumerate([0, 3, 4, 3])])
    assert abs(float(crit.forward(logits, labels)) - expect) < 1e-12


def test_softmax_cross_entropy_is_stable_for_huge_logits(dev):
    crit = SoftmaxCrossEntropy().to(dev)
    logits = dev.asarray(numpy.array([[1000.0, 0.0], [0.0, -1000.0]], numpy.float32))
    loss = float(crit.forward(logits, dev.asarray(numpy.array([0, 0]))))
    assert numpy.isfinite(loss) and loss < 1e-6
    assert numpy.isfinite(xnn.to_numpy(crit.backward())).all()


@pytest.mark.parametrize("labels,match", [
    ([0, -1, 2], r"labels must lie in \[0, 3\); found -1"),
    ([0, 3, 2], r"labels must lie in \[0, 3\); found 3"),
    ([0.0, 1.0, 2.0], "labels must be integers"),
    ([0, 1], r"labels must have shape \(3,\)"),
])
def test_softmax_cross_entropy_refuses_bad_labels(dev, labels, match):
    """A negative label would silently pick class K - t (NumPy wraps it, and CuPy wraps
    out-of-range ones too): refused instead."""
    crit = SoftmaxCrossEntropy().to(dev)
    logits = dev.asarray(numpy.zeros((3, 3)))
    with pytest.raises(ValueError, match=match):
        crit.forward(logits, dev.asarray(numpy.array(labels)))


def test_softmax_cross_entropy_refuses_logits_that_are_not_2d(dev):
    crit = SoftmaxCrossEntropy().to(dev)
    with pytest.raises(ValueError, match=r"^SoftmaxCrossEntropy expects \(N, K\) logits, got shape \(2, 3, 4\); "
                                         r"flatten other axes into N first$"):
        crit.forward(dev.asarray(numpy.zeros((2, 3, 4))), dev.asarray(numpy.zeros(2, numpy.int64)))


def test_softmax_cross_entropy_refuses_labels_of_another_device():
    crit = SoftmaxCrossEntropy()
    labels = xnn.device("standin").asarray(numpy.array([0, 1]))
    with pytest.raises(xnn.DeviceMismatchError, match="^labels is a .* runs on the cpu device"):
        crit.forward(numpy.zeros((2, 3)), labels)


def test_softmax_cross_entropy_backward_scales_by_dloss(rng):
    crit = SoftmaxCrossEntropy()
    logits, labels = rng.standard_normal((3, 4)), numpy.array([1, 0, 3])
    crit.forward(logits, labels)
    p = numpy.exp(logits) / numpy.exp(logits).sum(axis=1, keepdims=True)
    want = (p - numpy.eye(4)[labels]) / 3
    numpy.testing.assert_allclose(crit.backward(), want, rtol=1e-12)
    numpy.testing.assert_allclose(crit.backward(2.5), 2.5 * want, rtol=1e-12)
