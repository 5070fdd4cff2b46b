"""The fast style network and one training step against PyTorch (an independent implementation with
autograd), in float64, with the same weights; skipped where PyTorch is not installed (it is the
benchmark extra, pip install -e '.[bench]')."""
import pathlib
import sys

import numpy
import pytest

import xnn

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import workloads  # noqa: E402

from xnn.models import fast_style  # noqa: E402


def copy_params(ours, module):
    """xnn parameters (in their order) into a torch module's parameters (in theirs): names differ, order
    and shapes agree."""
    items, theirs = list(ours.items()), list(module.parameters())
    assert len(items) == len(theirs)
    with torch.no_grad():
        for (name, a), t in zip(items, theirs):
            assert tuple(a.shape) == tuple(t.shape), name
            t.copy_(torch.from_numpy(numpy.asarray(xnn.to_numpy(a), numpy.float64)))


def test_network_forward_equals_pytorch(rng):
    net = fast_style.transformer(0.25, seed=5).to(xnn.device("cpu"), numpy.float64)
    tnet = workloads._torch_transformer(torch, 0.25).double().eval()
    copy_params(net.params, tnet)
    x = rng.uniform(0, 255, (2, 3, 36, 44))
    with torch.no_grad():
        reference = tnet(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(net.forward(x), reference, rtol=1e-10, atol=1e-9 * numpy.abs(reference).max())


def test_training_gradients_equal_pytorch_autograd(rng):
    """The gradient of the perceptual objective (VGG19 to relu4_4, random weights) with respect to every
    network parameter: xnn's hand-written backward against torch.autograd."""
    from xnn.models import vgg19
    from xnn.style.perceptual import PerceptualObjective
    dev = xnn.device("cpu")
    vgg = vgg19(weights=None, device=dev, include_top=False, channels=(8, 8, 8, 8, 8), seed=1).truncate("relu4_4")
    vgg.net.to(dev, numpy.float64)
    obj = PerceptualObjective(vgg, workloads.FAST_CONTENT, workloads.FAST_STYLE, content_weight=1.0, style_weight=5.0)
    style = rng.uniform(-120, 120, (1, 3, 32, 32))
    obj.set_style(style)
    net = fast_style.transformer(0.25, seed=2).to(dev, numpy.float64)
    x = rng.uniform(0, 255, (2, 3, 32, 32))
    terms, dy = obj.loss_and_grad(net.forward(x), x)
    net.backward(dy)

    tvgg = torch.nn.Sequential()
    plan = [item for item in workloads.VGG_PLAN]
    for item in plan:
        if isinstance(item, str):
            tvgg.add_module(item, torch.nn.MaxPool2d(2))
            continue
        name, cin, cout = item
        conv = torch.nn.Conv2d(8 if cin != 3 else 3, 8, 3, padding=1).double()
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(xnn.to_numpy(vgg.net[name].params["W"])))
            conv.bias.copy_(torch.from_numpy(xnn.to_numpy(vgg.net[name].params["b"])))
        tvgg.add_module(name, conv)
        tvgg.add_module("relu" + name[4:], torch.nn.ReLU())
        if name == "conv4_4":
            break
    tnet = workloads._torch_transformer(torch, 0.25).double()
    copy_params(net.params, tnet)
    objective = workloads.TorchPerceptual(torch, tvgg, torch.from_numpy(style))
    tx = torch.from_numpy(x)
    loss = objective(tnet(tx), tx)
    loss.backward()
    assert float(terms["total"]) == pytest.approx(loss.item(), rel=1e-10)
    for (name, g), t in zip(net.grads.items(), tnet.parameters()):
        ref = t.grad.numpy()
        if name.endswith("in_b.beta"):          # exactly 0 in exact arithmetic: rounding only
            assert numpy.abs(xnn.to_numpy(g)).max() <= 1e-6 * numpy.abs(ref).max() + 1e-9 * abs(loss.item())
            continue
        numpy.testing.assert_allclose(xnn.to_numpy(g), ref, rtol=1e-7, atol=1e-9 * numpy.abs(ref).max(), err_msg=name)
