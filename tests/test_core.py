"""Backends, the model container and the optimisers."""
import numpy
import pytest

import xnn
import xnn.backends as backends
from xnn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from xnn.optim import SGD, Adam

from .gradcheck import numerical_grad, rel_error


def small_cnn(seed=0):
    return xnn.Sequential([
        ("conv1", Conv2d(1, 4, 3, padding=1, seed=seed)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(4, 6, 3, padding=1, seed=seed + 1)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
        ("flat", Flatten()), ("fc", Linear(6 * 2 * 2, 3, seed=seed + 2)),
    ])


# ---------------------------------------------------------------- backends
def test_cpu_device_surface():
    dev = xnn.device("cpu")
    assert dev.name == "cpu" and dev.xp is numpy and xnn.device("cpu") is dev
    a = dev.asarray([1.0, 2.0], dtype=numpy.float32)
    assert xnn.to_numpy(a) is a and xnn.device_of(a) is dev
    r1, r2 = dev.rng(5).standard_normal(4), dev.rng(5).standard_normal(4)
    numpy.testing.assert_array_equal(r1, r2)
    dev.synchronize()


def test_auto_is_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(backends, "gpu_status", lambda: (None, "CuPy is not installed"))
    assert xnn.device("auto") is backends.cpu


def test_gpu_request_falls_back_with_one_warning_line(monkeypatch, capsys):
    monkeypatch.setattr(backends, "gpu_status", lambda: (None, "no CUDA device is visible"))
    monkeypatch.setattr(backends, "_warned", False)
    monkeypatch.delenv("XNN_STRICT_DEVICE", raising=False)
    assert xnn.device("gpu") is backends.cpu
    assert xnn.device("gpu") is backends.cpu
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device is visible" in err and "using the CPU" in err


def test_strict_gpu_request_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, "gpu_status", lambda: (None, "CuPy is not installed"))
    with pytest.raises(xnn.XnnError, match="CuPy is not installed"):
        xnn.device("gpu", strict=True)
    monkeypatch.setenv("XNN_STRICT_DEVICE", "1")
    with pytest.raises(xnn.XnnError):
        xnn.device("gpu")


def test_unknown_device_name():
    with pytest.raises(xnn.XnnError, match="cpu, gpu, auto"):
        xnn.device("tpu")


def test_real_gpu_status_gives_a_reason_or_a_device():
    gpu, reason = backends.gpu_status()
    assert (gpu is None) != (reason is None)


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


def test_gpu_and_cpu_arrays_do_not_mix():
    gpu, reason = backends.gpu_status()
    if gpu is None:
        pytest.skip(f"no usable GPU: {reason}")
    layer = Linear(3, 2).to(gpu)
    with pytest.raises(xnn.DeviceMismatchError):
        layer(numpy.ones((1, 3), numpy.float32))
    with pytest.raises(xnn.DeviceMismatchError):
        backends.cpu.asarray(gpu.asarray(numpy.ones(3)))


# ---------------------------------------------------------------- model
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


# ---------------------------------------------------------------- optimisers
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
