"""The batched perceptual losses (xnn.style.perceptual): values against direct float64 loops and
gradients against finite differences, on every backend."""
import numpy
import pytest

import xnn
from xnn.style.losses import content_loss
from xnn.style.perceptual import gram_batch, style_loss_batch

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
    loss, g = content_loss(F, P, "jcjohnson")
    assert float(loss) == pytest.approx(((xnn.to_numpy(F) - xnn.to_numpy(P)) ** 2).mean(), rel=1e-12)
    assert rel_error(xnn.to_numpy(g), numerical_grad(lambda: content_loss(F, P, "jcjohnson")[0], F)) < 1e-7


def test_messages():
    with pytest.raises(ValueError, match=r"^style Gram \(2, 2\) does not fit 3-channel features$"):
        style_loss_batch(numpy.zeros((1, 3, 2, 2)), numpy.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"differ in shape"):
        content_loss(numpy.zeros((1, 3, 2, 2)), numpy.zeros((1, 3, 2, 3)), "jcjohnson")


def tiny_vgg(dev):
    from xnn.models import vgg19
    vgg = vgg19(weights=None, device=dev, include_top=False, channels=(4, 4, 4, 4, 4), seed=2)
    vgg.truncate("relu3_1")
    vgg.net.to(dev, numpy.float64)
    return vgg


def test_objective_gradient_against_finite_differences(dev, rng):
    from xnn.style.perceptual import PerceptualObjective
    vgg = tiny_vgg(dev)
    obj = PerceptualObjective(vgg, ["relu2_1"], ["relu1_1", "relu2_1", "relu3_1"], content_weight=2.0,
                              style_weight=30.0, tv_weight=1e-3)
    obj.set_style(dev.asarray(rng.uniform(-100, 100, (1, 3, 12, 12))))
    x = dev.asarray(rng.uniform(0, 255, (2, 3, 8, 12)))
    y = dev.asarray(rng.uniform(0, 255, (2, 3, 8, 12)))
    terms, dy = obj.loss_and_grad(y, x)
    assert set(terms) == {"content", "style", "tv", "total"} and float(terms["style"]) > 0
    assert float(terms["total"]) == pytest.approx(float(terms["content"]) + float(terms["style"]) +
                                                  float(terms["tv"]), rel=1e-12)
    num = numerical_grad(lambda: obj.loss_and_grad(y, x)[0]["total"], y, eps=1e-4)
    assert rel_error(xnn.to_numpy(dy), num) < 1e-6


def test_target_normalisation_weighs_each_style_layer_by_its_target(dev, rng):
    """style_normalisation="target": each layer's Gram error divided by mean(A_l^2) of its own target, in the
    value (against the per-layer losses computed directly) and in the gradient (finite differences)."""
    from xnn.style.perceptual import PerceptualObjective
    vgg = tiny_vgg(dev)
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    obj = PerceptualObjective(vgg, ["relu2_1"], layers, content_weight=2.0, style_weight=30.0,
                              style_normalisation="target")
    obj.set_style(dev.asarray(rng.uniform(-100, 100, (1, 3, 12, 12))))
    x = dev.asarray(rng.uniform(0, 255, (2, 3, 8, 12)))
    y = dev.asarray(rng.uniform(0, 255, (2, 3, 8, 12)))
    feats = vgg.features(y - obj._mean, layers)
    want = 0.0
    for name in layers:
        A = xnn.to_numpy(obj.style_grams[name])
        assert obj.style_layer_weights[name] == pytest.approx(1.0 / (A ** 2).mean(), rel=1e-12)
        G = gram_loops(xnn.to_numpy(feats[name]))
        want += ((G - A) ** 2).mean() / (A ** 2).mean()
    terms, dy = obj.loss_and_grad(y, x)
    assert float(terms["style"]) == pytest.approx(30.0 * want, rel=1e-10)
    num = numerical_grad(lambda: obj.loss_and_grad(y, x)[0]["total"], y, eps=1e-4)
    assert rel_error(xnn.to_numpy(dy), num) < 1e-6
    plain = PerceptualObjective(vgg, ["relu2_1"], layers, style_normalisation="none")
    plain.set_style(dev.asarray(rng.uniform(-100, 100, (1, 3, 12, 12))))
    assert set(plain.style_layer_weights.values()) == {1.0}
    with pytest.raises(ValueError, match="style_normalisation 'gram'"):
        PerceptualObjective(vgg, ["relu2_1"], layers, style_normalisation="gram")


def test_adam_steps_on_a_small_transformer_lower_the_objective(rng):
    """The training step a fast-style run repeats: transformer forward, objective, one backward through
    VGG and the transformer, Adam; on a tiny network and batch the total falls."""
    from xnn.models import fast_style
    from xnn.optim import Adam
    from xnn.style.perceptual import PerceptualObjective
    dev = xnn.device("cpu")
    vgg = tiny_vgg(dev)
    vgg.net.to(dev, numpy.float32)
    net = fast_style.transformer(1 / 8, seed=1)
    obj = PerceptualObjective(vgg, ["relu2_1"], ["relu1_1", "relu2_1", "relu3_1"], content_weight=1.0,
                              style_weight=1e3, tv_weight=0)
    obj.set_style(vgg.preprocess(rng.integers(0, 255, (16, 16, 3)).astype(numpy.uint8)))
    x = rng.uniform(0, 255, (2, 3, 16, 16)).astype(numpy.float32)
    opt = Adam(net.trainable_params(), lr=1e-2)
    totals = []
    for _ in range(15):
        y = net.forward(x)
        terms, dy = obj.loss_and_grad(y, x)
        totals.append(float(terms["total"]))
        net.backward(dy)
        opt.step(net.grads)
    assert totals[-1] < 0.5 * totals[0], totals
