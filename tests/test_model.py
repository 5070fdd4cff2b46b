"""Sequential: end-to-end gradients, features and injected gradients, save/load, device moves."""
import numpy
import pytest

import xnn
from xnn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU

from .gradcheck import numerical_grad, rel_error


def small_cnn(seed=0):
    return xnn.Sequential([
        ("conv1", Conv2d(1, 4, 3, padding=1, seed=seed)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(4, 6, 3, padding=1, seed=seed + 1)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
        ("flat", Flatten()), ("fc", Linear(6 * 2 * 2, 3, seed=seed + 2)),
    ])


def test_mixing_devices_is_an_error_not_a_copy(dev):
    class Foreign:  # stands for an array of another backend
        shape = (1, 1, 4, 4)
    net = small_cnn().to(dev)
    with pytest.raises(xnn.DeviceMismatchError):
        net.forward(Foreign())
    with pytest.raises(xnn.DeviceMismatchError):
        Conv2d(1, 1, 3).to(dev)(Foreign())
    with pytest.raises(xnn.DeviceMismatchError):
        dev.asarray(Foreign())


def test_sequential_end_to_end_gradient(dev, rng):
    net = small_cnn().to(dev, numpy.float64)
    x = dev.asarray(rng.standard_normal((2, 1, 8, 8)))
    r = dev.asarray(rng.standard_normal((2, 3)))
    net.forward(x)
    dx = xnn.to_numpy(net.backward(r))
    numeric = numerical_grad(lambda: (net.forward(x) * r).sum(), x)
    assert rel_error(dx, numeric) < 1e-6
    assert set(net.grads) == set(net.params)


def test_features_stop_early_and_inject_sums_in_one_pass(dev, rng):
    net = small_cnn().to(dev, numpy.float64).freeze()
    x = dev.asarray(rng.standard_normal((1, 1, 8, 8)))
    feats = net.features(x, ["relu1", "relu2"])
    assert set(feats) == {"relu1", "relu2"} and net._ran == net.names.index("relu2") + 1
    g1 = dev.asarray(rng.standard_normal(feats["relu1"].shape))
    g2 = dev.asarray(rng.standard_normal(feats["relu2"].shape))
    both = xnn.to_numpy(net.backward(inject={"relu1": g1, "relu2": g2}))

    def loss():
        f = net.features(x, ["relu1", "relu2"])
        return (f["relu1"] * g1).sum() + (f["relu2"] * g2).sum()
    assert rel_error(both, numerical_grad(loss, x)) < 1e-6
    assert net.grads == {}  # frozen: no weight gradients


def test_unknown_layer_name_lists_the_valid_ones():
    with pytest.raises(xnn.XnnError, match="conv1, relu1"):
        small_cnn().features(numpy.zeros((1, 1, 8, 8), numpy.float32), ["conv9"])


def test_save_load_roundtrip_and_mismatch(tmp_path, rng):
    a, b = small_cnn(seed=0), small_cnn(seed=7)
    x = rng.standard_normal((2, 1, 8, 8)).astype(numpy.float32)
    assert not numpy.allclose(a.forward(x), b.forward(x))
    a.save(tmp_path / "m.npz")
    b.load(tmp_path / "m.npz")
    numpy.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert not list(tmp_path.glob("*.tmp"))
    with numpy.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert "conv1.W" in f.files
    other = xnn.Sequential([("conv1", Conv2d(1, 5, 3))])
    with pytest.raises(xnn.XnnError, match="conv1.W has shape"):
        other.load(tmp_path / "m.npz", strict=False)
    with pytest.raises(xnn.XnnError, match="does not fit"):
        other.load(tmp_path / "m.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(xnn.XnnError, match="cannot read checkpoint"):
        a.load(tmp_path / "bad.npz")
    with pytest.raises(xnn.XnnError, match="not found"):
        a.load(tmp_path / "missing.npz")


def test_seeded_init_is_reproducible_and_scaled():
    a, b = Conv2d(64, 32, 3, seed=3), Conv2d(64, 32, 3, seed=3)
    numpy.testing.assert_array_equal(a.params["W"], b.params["W"])
    assert abs(a.params["W"].std() - numpy.sqrt(2 / (64 * 9))) < 0.01  # He
    w = Linear(300, 100, init="xavier", seed=1).params["W"]
    assert abs(w.max()) <= numpy.sqrt(6 / 400) and w.dtype == numpy.float32


def test_model_moves_between_devices(dev, rng):
    net = small_cnn()
    x = rng.standard_normal((1, 1, 8, 8)).astype(numpy.float32)
    ref = net.forward(x)
    net.to(dev)
    assert all(dev.owns(p) for p in net.params.values())
    numpy.testing.assert_allclose(xnn.to_numpy(net.forward(dev.asarray(x))), ref, rtol=1e-5, atol=1e-6)
    net.to("cpu")
    numpy.testing.assert_allclose(net.forward(x), ref, rtol=1e-5, atol=1e-6)
