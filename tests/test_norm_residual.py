"""InstanceNorm2d and Residual (the fast style network's new pieces): values against direct
computations, float64 finite-difference gradients on every backend, layouts and bookkeeping."""
import numpy
import pytest

import xnn
from xnn import Residual, Sequential
from xnn.layers import Conv2d, InstanceNorm2d, ReLU
from xnn.layers.layout import channels_last

from .gradcheck import check_layer


def instance_norm_loops(x, gamma, beta, eps):
    """The definition, one (n, c) at a time, float64."""
    y = numpy.empty_like(x, dtype=numpy.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            v = x[n, c].astype(numpy.float64)
            mu = v.sum() / v.size
            var = ((v - mu) ** 2).sum() / v.size            # biased, as PyTorch's InstanceNorm2d
            y[n, c] = gamma[c] * (v - mu) / numpy.sqrt(var + eps) + beta[c]
    return y


@pytest.mark.parametrize("memory", ["nchw", "channels_last"])
def test_instance_norm_values_against_loops(dev, rng, memory):
    x = rng.standard_normal((2, 3, 5, 4)) * 3 + 1
    layer = InstanceNorm2d(3, eps=1e-3).to(dev, numpy.float64)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    layer.params["gamma"][...] = dev.asarray(gamma)
    layer.params["beta"][...] = dev.asarray(beta)
    xd = dev.asarray(x.transpose(0, 2, 3, 1).copy()).transpose(0, 3, 1, 2) if memory == "channels_last" \
        else dev.asarray(x)
    y = layer.forward(xd)
    numpy.testing.assert_allclose(xnn.to_numpy(y), instance_norm_loops(x, gamma, beta, 1e-3), rtol=1e-12, atol=1e-12)
    assert channels_last(y) == (memory == "channels_last")
    dx = layer.backward(dev.asarray(numpy.ones(x.shape)).transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
                        if memory == "channels_last" else dev.asarray(numpy.ones(x.shape)))
    assert channels_last(dx) == (memory == "channels_last")


@pytest.mark.parametrize("memory", ["nchw", "channels_last"])
def test_instance_norm_in_bands_of_rows(rng, memory, monkeypatch):
    """An array of at least SPLIT_ELEMENTS values is normalised in bands of rows on the CPU's
    workers (three sweeps: the sums, the centring with its squares, the scaling); the bands
    together give the definition."""
    from xnn.layers import layout
    dev = xnn.device("cpu")
    monkeypatch.setattr(dev, "workers", 3)                         # bands of 22, 21 and 21 rows
    monkeypatch.setattr(layout, "SPLIT_ELEMENTS", 4096)
    x = rng.standard_normal((2, 8, 64, 40)) * 3 + 5
    layer = InstanceNorm2d(8).to(dev, numpy.float64)
    gamma, beta = rng.standard_normal(8), rng.standard_normal(8)
    layer.params["gamma"][...], layer.params["beta"][...] = gamma, beta
    bands = []
    real = dev.parallel_map
    monkeypatch.setattr(dev, "parallel_map", lambda fn, parts: bands.append(len(parts)) or real(fn, parts))
    xd = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2) if memory == "channels_last" else x.copy()
    y = layer.forward(xd)
    assert bands == [3, 3, 3]
    numpy.testing.assert_allclose(y, instance_norm_loops(x, gamma, beta, 1e-5), rtol=1e-12, atol=1e-12)
    assert channels_last(y) == (memory == "channels_last")
    numpy.testing.assert_allclose(layer._xhat, instance_norm_loops(x, numpy.ones(8), numpy.zeros(8), 1e-5),
                                  rtol=1e-12, atol=1e-12)


def test_instance_norm_gradients(dev, rng):
    x = rng.standard_normal((2, 3, 4, 5)) * 2 - 1
    layer = InstanceNorm2d(3)
    layer.to(dev, numpy.float64)
    layer.params["gamma"][...] = dev.asarray(rng.uniform(0.5, 2, 3))
    layer.params["beta"][...] = dev.asarray(rng.standard_normal(3))
    check_layer(layer, x, dev)
    check_layer(InstanceNorm2d(3, affine=False), x, dev)
    assert InstanceNorm2d(3, affine=False).params == {}


def test_instance_norm_defaults_device_dtype_and_plain_layout(dev, rng):
    """eps 1e-5 (PyTorch's), float32 gamma = 1 and beta = 0 on the layer's device; without affine
    parameters the output still keeps a channels-last input's memory order."""
    layer = InstanceNorm2d(3, device=dev)
    assert layer.eps == 1e-5 and layer.device is dev
    for name, value in (("gamma", 1.0), ("beta", 0.0)):
        p = layer.params[name]
        assert dev.owns(p) and p.dtype == numpy.float32 and p.shape == (3,)
        numpy.testing.assert_array_equal(xnn.to_numpy(p), numpy.full(3, value, numpy.float32))
    x = rng.standard_normal((1, 4, 5, 3)).astype(numpy.float32)          # NHWC memory
    y = InstanceNorm2d(3, affine=False, device=dev).forward(dev.asarray(x).transpose(0, 3, 1, 2))
    assert channels_last(y)
    want = instance_norm_loops(x.transpose(0, 3, 1, 2), numpy.ones(3), numpy.zeros(3), 1e-5)
    numpy.testing.assert_allclose(xnn.to_numpy(y), want, rtol=1e-5, atol=1e-5)


def test_instance_norm_messages_and_freezing(rng):
    with pytest.raises(ValueError, match=r"^InstanceNorm2d expects \(N, 3, H, W\) input, got \(1, 2, 4, 4\)$"):
        InstanceNorm2d(3).forward(numpy.zeros((1, 2, 4, 4), numpy.float32))
    layer = InstanceNorm2d(2).freeze()
    layer.forward(rng.standard_normal((1, 2, 3, 3)).astype(numpy.float32))
    layer.backward(numpy.ones((1, 2, 3, 3), numpy.float32))
    assert layer.grads == {} and layer.params["gamma"].dtype == numpy.float32


def block(c=3, seed=0):
    """A residual block of the fast style network.  Its convolutions have no bias: instance
    normalisation right after removes any per-channel constant (the bias's gradient is exactly 0)."""
    return [("conv1", Conv2d(c, c, 3, padding=1, padding_mode="reflect", bias=False, seed=seed)),
            ("in1", InstanceNorm2d(c)), ("relu", ReLU()),
            ("conv2", Conv2d(c, c, 3, padding=1, padding_mode="reflect", bias=False, seed=seed + 1)),
            ("in2", InstanceNorm2d(c))]


def test_residual_gradients_and_names(dev, rng):
    x = rng.standard_normal((2, 3, 6, 5))
    layer = Residual(block())
    errors = check_layer(layer, x, dev)
    assert set(errors) == {"x", "conv1.W", "in1.gamma", "in1.beta", "conv2.W", "in2.gamma", "in2.beta"}


def test_residual_is_x_plus_its_body(dev, rng):
    x = dev.asarray(rng.standard_normal((1, 3, 6, 6)))
    layer = Residual(block()).to(dev, numpy.float64)
    body = Sequential(list(layer.body))
    numpy.testing.assert_allclose(xnn.to_numpy(layer.forward(x)), xnn.to_numpy(body.forward(x) + x), rtol=1e-12)
    dy = dev.asarray(rng.standard_normal((1, 3, 6, 6)))
    layer.forward(x)
    dx = layer.backward(dy)
    body.forward(x)
    numpy.testing.assert_allclose(xnn.to_numpy(dx), xnn.to_numpy(body.backward(dy) + dy), rtol=1e-12)


def test_residual_inside_a_network_trains_saves_and_loads(tmp_path, rng):
    net = Sequential([("res1", Residual(block(seed=3))), ("res2", Residual(block(seed=5)))])
    assert list(net.params)[:2] == ["res1.conv1.W", "res1.in1.gamma"] and len(net.params) == 12
    opt = xnn.optim.SGD(net.trainable_params(), lr=0.1)
    x = rng.standard_normal((2, 3, 5, 5)).astype(numpy.float32)
    before = net.params["res2.in2.gamma"].copy()
    y = net.forward(x)
    net.backward(numpy.ones_like(y))
    assert set(net.grads) == set(net.params)
    opt.step(net.grads)
    assert not numpy.array_equal(net.params["res2.in2.gamma"], before)   # the optimiser reached the body
    net.save(tmp_path / "m.npz")
    other = Sequential([("res1", Residual(block(seed=7))), ("res2", Residual(block(seed=9)))]).load(tmp_path / "m.npz")
    numpy.testing.assert_array_equal(other.forward(x), net.forward(x))
    net.freeze()
    assert net.trainable_params() == {} and all(layer.frozen for layer in net["res1"].body.layers.values())


def test_residual_refuses_a_body_that_changes_the_shape():
    layer = Residual([("c", Conv2d(3, 4, 3, padding=1))])
    with pytest.raises(ValueError, match=r"^Residual: the body maps \(1, 3, 5, 5\) to \(1, 4, 5, 5\); it must keep"):
        layer.forward(numpy.zeros((1, 3, 5, 5), numpy.float32))
    with pytest.raises(AttributeError, match="Residual's parameters are its body's"):
        layer.params = {"x": numpy.zeros(1)}


def upsample_conv_direct(x, w):
    """x2 nearest upsampling, reflection padding 1 and a 3x3 cross-correlation, by loops over the
    kernel, float64: the definition UpsampleConv2d replaces."""
    up = x.repeat(2, axis=2).repeat(2, axis=3)
    pad = numpy.pad(up, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    n, c, h, wd = up.shape
    y = numpy.zeros((n, w.shape[0], h, wd))
    for a in range(3):
        for b in range(3):
            y += numpy.einsum("oc,nchw->nohw", w[:, :, a, b], pad[:, :, a:a + h, b:b + wd])
    return y


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 3), (1, 4, 3, 1)])
def test_upsample_conv_equals_upsample_then_reflect_padded_conv(dev, rng, shape):
    """Values against the direct definition, and forward and backward against Upsample2d then
    Conv2d(padding 1, reflect), float64, on every backend; 1-pixel sides included (their edge
    padding folds both borders onto one row)."""
    from xnn.layers import Upsample2d, UpsampleConv2d
    n, c, h, w = shape
    fused = UpsampleConv2d(c, 3, seed=7).to(dev, numpy.float64)
    up = Upsample2d(2, device=dev)
    conv = Conv2d(c, 3, 3, padding=1, padding_mode="reflect", bias=False, seed=7).to(dev, numpy.float64)
    numpy.testing.assert_array_equal(xnn.to_numpy(fused.params["W"]), xnn.to_numpy(conv.params["W"]))
    x = rng.standard_normal(shape)
    y = fused.forward(dev.asarray(x))
    numpy.testing.assert_allclose(xnn.to_numpy(y), upsample_conv_direct(x, xnn.to_numpy(conv.params["W"])),
                                  rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(xnn.to_numpy(y), xnn.to_numpy(conv.forward(up.forward(dev.asarray(x)))),
                                  rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = fused.backward(dev.asarray(dy))
    dx_ref = up.backward(conv.backward(dev.asarray(dy)))
    numpy.testing.assert_allclose(xnn.to_numpy(dx), xnn.to_numpy(dx_ref), rtol=1e-11, atol=1e-11)
    numpy.testing.assert_allclose(xnn.to_numpy(fused.grads["W"]), xnn.to_numpy(conv.grads["W"]),
                                  rtol=1e-11, atol=1e-11)


def test_upsample_conv_gradients(dev, rng):
    from xnn.layers import UpsampleConv2d
    check_layer(UpsampleConv2d(3, 2, seed=1).to(dev, numpy.float64), rng.standard_normal((2, 3, 3, 4)), dev)


def test_upsample_conv_frozen_keeps_its_weights_and_follows_a_new_w(rng):
    """Frozen: no weight gradient, the same output twice; a replaced or in-place changed W is used
    on the next forward when not frozen."""
    from xnn.layers import UpsampleConv2d
    layer = UpsampleConv2d(2, 2, seed=0, dtype=numpy.float64)
    x = rng.standard_normal((1, 2, 3, 3))
    y0 = layer.forward(x)
    layer.params["W"] *= 2                                   # in place, as an optimiser step may do
    numpy.testing.assert_allclose(layer.forward(x), 2 * y0, rtol=1e-12)
    layer.freeze()
    y1 = layer.forward(x)
    numpy.testing.assert_array_equal(layer.forward(x), y1)
    assert layer.backward(numpy.ones_like(y1)).shape == x.shape and layer.grads == {}
    layer.unfreeze()
    layer.needs_input_grad = False
    layer.forward(x)
    assert layer.backward(numpy.ones_like(y1)) is None and layer.grads["W"].shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match=r"UpsampleConv2d expects \(N, 2, H, W\)"):
        layer.forward(rng.standard_normal((1, 3, 3, 3)))
    layer.freeze()                                           # frozen: the phase weights are built once
    assert layer._phase_weights() is layer._phase_weights()
    layer.to(dtype=numpy.float32)                            # moved while frozen: built again, in float32
    assert layer.forward(x.astype(numpy.float32)).dtype == numpy.float32


def test_upsample_conv_lives_on_its_device_in_its_dtype(dev, rng):
    from xnn.layers import UpsampleConv2d
    layer = UpsampleConv2d(2, 3, seed=0, dtype=numpy.float64, device=dev)
    assert layer.params["W"].dtype == numpy.float64 and dev.owns(layer.params["W"])
    y = layer.forward(dev.asarray(rng.standard_normal((1, 2, 3, 3))))
    assert dev.owns(y) and y.shape == (1, 3, 6, 6) and y.dtype == numpy.float64
    # the default seed's weights are Conv2d's default seed's, as for the two layers it replaces
    numpy.testing.assert_array_equal(xnn.to_numpy(UpsampleConv2d(2, 3).params["W"]),
                                     xnn.to_numpy(Conv2d(2, 3, 3, bias=False).params["W"]))


def test_upsample_conv_float32_stays_float32(rng):
    """A float32 layer gives float32 outputs, input gradients and weight gradients (its phase
    weights are built in the weights' dtype)."""
    from xnn.layers import UpsampleConv2d
    layer = UpsampleConv2d(3, 2, seed=0)
    y = layer.forward(rng.standard_normal((1, 3, 4, 4)).astype(numpy.float32))
    dx = layer.backward(numpy.ones_like(y))
    assert y.dtype == dx.dtype == layer.grads["W"].dtype == layer.params["W"].dtype == numpy.float32
