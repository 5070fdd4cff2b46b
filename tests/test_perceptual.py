"""The batched perceptual losses (xnn.style.perceptual): values against direct float64 loops and
gradients against finite differences, on every backend."""
import numpy
import pytest

import xnn
from xnn.style.perceptual import content_loss_batch, gram_batch, style_loss_batch

from .gradcheck import numerical_grad, rel_error


def gram_loops(F):
    n, c, h, w = F.shape
    G = numpy.zeros((n, c, c))
    for s in range(n):
        for i in range(c):
            for j in range(c):
                G[s, i, j] = (F[s, i] * F[s, j]).sum() / (c * h * w)
    return G


@pytest.mark.parametrize("memory", ["nchw", "channels_last"])
def test_gram_and_style_loss_against_loops(dev, rng, memory):
    F = rng.standard_normal((3, 4, 5, 6))
    S = rng.standard_normal((1, 4, 7, 3))
    A = gram_loops(S)[0]
    Fd = dev.asarray(F.transpose(0, 2, 3, 1).copy()).transpose(0, 3, 1, 2) if memory == "channels_last" \
        else dev.asarray(F)
    numpy.testing.assert_allclose(xnn.to_numpy(gram_batch(Fd)), gram_loops(F), rtol=1e-12)
    loss, _ = style_loss_batch(Fd, dev.asarray(A))
    assert float(loss) == pytest.approx(((gram_loops(F) - A) ** 2).mean(), rel=1e-12)


def test_style_and_content_gradients(dev, rng):
    F = dev.asarray(rng.standard_normal((2, 3, 4, 5)))
    A = dev.asarray(gram_loops(rng.standard_normal((1, 3, 6, 6)))[0])
    _, g = style_loss_batch(F, A)
    assert rel_error(xnn.to_numpy(g), numerical_grad(lambda: style_loss_batch(F, A)[0], F)) < 1e-7
    P = dev.asarray(rng.standard_normal((2, 3, 4, 5)))
    loss, g = content_loss_batch(F, P)
    assert float(loss) == pytest.approx(((xnn.to_numpy(F) - xnn.to_numpy(P)) ** 2).mean(), rel=1e-12)
    assert rel_error(xnn.to_numpy(g), numerical_grad(lambda: content_loss_batch(F, P)[0], F)) < 1e-7


def test_messages():
    with pytest.raises(ValueError, match=r"^style Gram \(2, 2\) does not fit 3-channel features$"):
        style_loss_batch(numpy.zeros((1, 3, 2, 2)), numpy.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"differ in shape"):
        content_loss_batch(numpy.zeros((1, 3, 2, 2)), numpy.zeros((1, 3, 2, 3)))
