"""loss_scaling="jcjohnson": neural-style's formulas, checked against an independent float64
computation and by finite differences, whole-image and tiled."""
import numpy
import pytest

import xnn
from xnn.models import vgg19
from xnn.style import StyleTransferObjective
from xnn.style.losses import content_loss, style_loss, style_target
from xnn.style.tiled import TiledStyleObjective

from .gradcheck import numerical_grad, rel_error


def gram_ref(F):
    """G = F F^T / (C H W) from the definition, float64."""
    _, c, h, w = F.shape
    f = numpy.asarray(F, numpy.float64).reshape(c, h * w)
    return f @ f.T / (c * h * w)


def test_content_loss_is_a_mean_of_squares(dev, rng):
    F, P = rng.standard_normal((1, 4, 5, 3)), rng.standard_normal((1, 4, 5, 3))
    Fd = dev.asarray(F)
    loss, grad = content_loss(Fd, dev.asarray(P), "jcjohnson")
    assert float(loss) == pytest.approx(numpy.mean((F - P) ** 2), rel=1e-12)
    numeric = numerical_grad(lambda: content_loss(Fd, dev.asarray(P), "jcjohnson")[0], Fd)
    assert rel_error(xnn.to_numpy(grad), numeric) < 1e-7


def test_style_loss_is_a_mean_over_the_gram_entries(dev, rng):
    F, S = rng.standard_normal((1, 4, 5, 3)), rng.standard_normal((1, 4, 7, 6))
    Sf = S.reshape(4, -1)
    A = style_target(dev.asarray(Sf @ Sf.T), 4, 42, "jcjohnson")     # normalised by the style's own size
    numpy.testing.assert_allclose(xnn.to_numpy(A), gram_ref(S), rtol=1e-12)
    Fd = dev.asarray(F)
    loss, grad = style_loss(Fd, A, "jcjohnson")
    assert float(loss) == pytest.approx(numpy.mean((gram_ref(F) - gram_ref(S)) ** 2), rel=1e-12)
    numeric = numerical_grad(lambda: style_loss(Fd, A, "jcjohnson")[0], Fd)
    assert rel_error(xnn.to_numpy(grad), numeric) < 1e-6


def _net(dev):
    vgg = vgg19(weights=None, device=dev, include_top=False, channels=(4, 4, 4, 4, 4), seed=1)
    vgg.truncate("relu3_1")
    vgg.net.to(dev, numpy.float64)
    return vgg


def test_objective_matches_the_formulas_and_finite_differences(dev):
    vgg = _net(dev)
    rng = numpy.random.default_rng(5)
    content, x = (dev.asarray(rng.uniform(-50, 50, (1, 3, 12, 16))) for _ in range(2))
    styles = [dev.asarray(rng.uniform(-50, 50, (1, 3, 16, 12))), dev.asarray(rng.uniform(-50, 50, (1, 3, 8, 8)))]
    cw, sw, tw = 5.0, 100.0, 1e-3
    obj = StyleTransferObjective(vgg, ["relu2_1"], ["relu1_1", "relu3_1"], content_weight=cw, style_weight=sw,
                                 tv_weight=tw, loss_scaling="jcjohnson")
    obj.set_targets(content, styles, [1, 3])
    losses, grad = obj.loss_and_grad(x)

    def feats(img, names):
        return {n: xnn.to_numpy(f) for n, f in vgg.features(img, names).items()}

    fx, fc = feats(x, ["relu1_1", "relu2_1", "relu3_1"]), feats(content, ["relu2_1"])
    fs = [feats(s, ["relu1_1", "relu3_1"]) for s in styles]
    content_ref = cw * numpy.mean((fx["relu2_1"] - fc["relu2_1"]) ** 2)
    style_ref = sw * sum(numpy.mean((gram_ref(fx[n]) - (0.25 * gram_ref(fs[0][n]) + 0.75 * gram_ref(fs[1][n]))) ** 2)
                         for n in ("relu1_1", "relu3_1"))          # summed over layers, blended targets
    img = xnn.to_numpy(x)
    tv_ref = tw * 0.5 * (numpy.sum(numpy.diff(img, axis=2) ** 2) + numpy.sum(numpy.diff(img, axis=3) ** 2))
    assert losses["content"] == pytest.approx(content_ref, rel=1e-10)
    assert losses["style"] == pytest.approx(style_ref, rel=1e-10)
    assert losses["tv"] == pytest.approx(tv_ref, rel=1e-10)
    numeric = numerical_grad(lambda: obj.loss_and_grad(x, to_host=False)[0]["total"], x, eps=1e-4)
    assert rel_error(xnn.to_numpy(grad), numeric) < 1e-5


def test_tiled_jcjohnson_equals_untiled(dev):
    vgg = _net(dev)
    rng = numpy.random.default_rng(6)
    content, x, style = (dev.asarray(rng.uniform(-50, 50, (1, 3, 60, 44))) for _ in range(3))
    obj = StyleTransferObjective(vgg, ["relu2_2"], ["relu1_1", "relu2_1", "relu3_1"], content_weight=5.0,
                                 style_weight=100.0, tv_weight=1e-3, loss_scaling="jcjohnson")
    tiled = TiledStyleObjective(obj, 16)
    obj.set_targets(content, [style])
    tiled.set_targets(content, [style])
    want, want_g = obj.loss_and_grad(x)
    got, got_g = tiled.loss_and_grad(x)
    assert got == pytest.approx(want, rel=1e-10)
    assert rel_error(xnn.to_numpy(got_g), xnn.to_numpy(want_g)) < 1e-10


def test_unknown_scaling_is_refused():
    with pytest.raises(xnn.XnnError, match="unknown loss_scaling 'johnson'; choose one of: gatys, jcjohnson"):
        StyleTransferObjective(_net("cpu"), ["relu2_1"], [], loss_scaling="johnson")
