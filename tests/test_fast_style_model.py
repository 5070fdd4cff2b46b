"""The fast style transformer network (xnn.models.fast_style): its shape and size, its gradients
end to end in float64, and its model.npz file."""
import numpy
import pytest

import xnn
from xnn.errors import XnnError
from xnn.models import fast_style

from .gradcheck import rel_error, sampled_grad


def test_sizes_and_parameter_counts():
    full, half = fast_style.transformer(1.0), fast_style.transformer(0.5)
    count = lambda net: sum(v.size for v in net.params.values())   # noqa: E731
    # 9x9, 3x3 s2, 3x3 s2, 10 residual 3x3, 2 upsampling 3x3, 9x9 (+3 bias), and gamma/beta of 15 norms
    convs = 3 * 32 * 81 + 32 * 64 * 9 + 64 * 128 * 9 + 10 * 128 * 128 * 9 + 128 * 64 * 9 + 64 * 32 * 9 + 32 * 3 * 81
    norms = 2 * (32 + 64 + 128 + 10 * 128 + 64 + 32)
    assert count(full) == convs + 3 + norms == 1_677_635
    assert 0.40e6 < count(half) < 0.43e6
    y = half.forward(numpy.random.default_rng(0).uniform(0, 255, (2, 3, 32, 24)).astype(numpy.float32))
    assert y.shape == (2, 3, 32, 24) and y.dtype == numpy.float32
    assert [k for k in full.params if k.startswith("res1.")] == ["res1.conv_a.W", "res1.in_a.gamma", "res1.in_a.beta",
                                                                  "res1.conv_b.W", "res1.in_b.gamma", "res1.in_b.beta"]


def test_gradients_through_the_whole_network(dev):
    """Input and parameter gradients of sum(y * r), float64, against central differences (a narrow
    network on a 12x8 image; a dozen random entries of the input and of each tensor checked)."""
    net = fast_style.transformer(1 / 16, seed=3).to(dev, numpy.float64)
    rng = numpy.random.default_rng(1)
    for name in net.params:                     # non-trivial norm parameters
        if name.endswith("gamma"):
            net.params[name][...] = dev.asarray(rng.uniform(0.5, 1.5, net.params[name].shape))
    x = dev.asarray(rng.uniform(0, 1, (1, 3, 12, 8)))
    r = dev.asarray(rng.standard_normal((1, 3, 12, 8)))

    def loss():
        return (net.forward(x) * r).sum()
    net.zero_grad()
    net.forward(x)
    dx = xnn.to_numpy(net.backward(r)).reshape(-1)
    grads = {k: xnn.to_numpy(v).reshape(-1) for k, v in net.grads.items()}
    idx, num = sampled_grad(loss, x, rng, count=24)
    assert rel_error(dx[idx], num) < 1e-6
    # (the betas of the residual blocks' in_b have no effect: each adds a per-channel constant, with no
    # ReLU after it, that the next instance normalisation on its path, in4 at the latest, removes)
    for name in ("conv1.W", "in2.gamma", "res3.conv_b.W", "res5.in_a.beta", "res2.in_b.gamma", "conv5.W", "conv6.b"):
        idx, num = sampled_grad(loss, net.params[name], rng)
        assert rel_error(grads[name][idx], num) < 1e-6, name
    assert float(abs(grads["res4.in_b.beta"]).max()) < 1e-9 < float(abs(grads["in3.beta"]).max())


def test_model_file_round_trip_and_refusals(tmp_path):
    net = fast_style.transformer(0.25, seed=7)
    fast_style.save_model(net, 0.25, tmp_path / "model.npz")
    back, width = fast_style.load_model(tmp_path / "model.npz")
    x = numpy.random.default_rng(0).uniform(0, 255, (1, 3, 16, 16)).astype(numpy.float32)
    assert width == 0.25
    numpy.testing.assert_array_equal(back.forward(x), net.forward(x))
    arrays = dict(numpy.load(tmp_path / "model.npz"))
    assert str(arrays["arch"]) == "johnson2016-transformer" and int(arrays["version"]) == 1
    arrays["arch"] = numpy.array("something-else")
    numpy.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(XnnError, match="is a something-else model, version 1; xnn reads johnson2016-transformer"):
        fast_style.load_model(tmp_path / "other.npz")
    arrays["arch"] = numpy.array("johnson2016-transformer")
    del arrays["conv6.b"]
    numpy.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(XnnError, match=r"does not fit this model: missing \['conv6.b'\]"):
        fast_style.load_model(tmp_path / "cut.npz")


def test_a_model_applied_by_a_job_is_frozen_and_keeps_its_prepared_weights(tmp_path):
    """configs/fast_style.yaml, the studio and the video path get their network from FastStyleJob: frozen,
    so each layer prepares its weights (conv6's FFT kernel spectra, the 3x3 layers' Winograd weights)
    once, not for every picture, and the pictures are those of the unfrozen network."""
    from xnn.style.feedforward import FastStyleJob
    dev = xnn.device("cpu")
    path = tmp_path / "model.npz"
    fast_style.save_model(fast_style.transformer(0.25, seed=3), 0.25, path)
    net, width = FastStyleJob(str(path), {}).stylizer(dev)
    assert width == 0.25 and all(layer.frozen for _, layer in net)
    image = numpy.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=numpy.uint8)
    first = fast_style.stylise(net, image)
    prepared = dict(net["conv6"]._wcache)
    assert set(prepared) == {("fft", "fwd")}
    spectra = prepared[("fft", "fwd")][1]._spectra
    assert len(spectra) == 1
    kept = next(iter(spectra.values()))
    numpy.testing.assert_array_equal(fast_style.stylise(net, image), first)
    assert next(iter(net["conv6"]._wcache[("fft", "fwd")][1]._spectra.values())) is kept
    unfrozen, _ = fast_style.load_model(path, dev)
    assert rel_error(fast_style.stylise(unfrozen, image), first) < 1e-6
