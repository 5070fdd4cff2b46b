"""Finite-difference gradient checks (float64) for every layer and loss, on every backend,
plus direct-loop references for Conv2d and the pools."""
import numpy
import pytest

import xnn
from xnn.layers import (AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReflectionPad2d, ReLU,
                        Softmax, SoftmaxCrossEntropy)

from .gradcheck import check_layer, numerical_grad, rel_error


def randn(rng, *shape):
    return rng.standard_normal(shape)


# ---------------------------------------------------------------- references
def conv_reference(x, w, b, stride, pad, mode="zeros"):
    """Direct loops over output pixels: y[n,o,i,j] = b[o] + sum W[o,c,a,b'] xpad[n,c,i*s+a,j*s+b']."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    np_mode = "constant" if mode == "zeros" else "reflect"
    xp_ = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=np_mode)
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = numpy.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp_[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = numpy.einsum("ncab,ocab->no", patch, w) + b
    return y


def pool_reference(x, k, s, pad, ceil_mode, kind):
    """Direct loops; windows are clipped to the input (padding never wins a max, never counts in a mean)."""
    n, c, h, w = x.shape

    def out_len(size):
        span = size + 2 * pad - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + pad:
            o -= 1
        return o

    ho, wo = out_len(h), out_len(w)
    y = numpy.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - pad, j * s - pad
            win = x[:, :, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return y


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("n,cin,cout,h,w,k,s,p", [
    (1, 1, 1, 5, 5, 3, 1, 1),     # batch 1, one channel
    (2, 3, 4, 6, 5, 3, 1, 0),     # non-square, padding 0
    (2, 2, 3, 7, 6, 3, 2, 1),     # stride 2
    (1, 2, 2, 8, 7, 5, 1, 2),     # kernel 5, padding 2
    (2, 3, 2, 9, 9, 7, 2, 2),     # kernel 7, stride 2
    (2, 4, 3, 4, 5, 1, 1, 0),     # 1x1 kernel
    (1, 3, 2, 6, 6, 1, 2, 1),     # 1x1 kernel, stride 2, padding 1
])
def test_conv2d_gradients(dev, rng, n, cin, cout, h, w, k, s, p):
    layer = Conv2d(cin, cout, k, stride=s, padding=p, seed=1)
    layer.params["b"] = numpy.random.default_rng(2).standard_normal(cout)
    check_layer(layer, randn(rng, n, cin, h, w), dev)


@pytest.mark.parametrize("p", [1, 2])
def test_conv2d_reflect_gradients(dev, rng, p):
    layer = Conv2d(2, 3, 3, padding=p, padding_mode="reflect", seed=3)
    check_layer(layer, randn(rng, 2, 2, 5, 6), dev)


def test_conv2d_without_bias_gradients(dev, rng):
    check_layer(Conv2d(2, 3, 3, padding=1, bias=False), randn(rng, 1, 2, 4, 5), dev)


def test_frozen_conv_computes_only_input_grad(dev, rng):
    layer = Conv2d(2, 3, 3, padding=1).freeze()
    errors = check_layer(layer, randn(rng, 2, 2, 5, 4), dev)
    assert set(errors) == {"x"} and layer.grads == {}


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("k,s,p,ceil,h,w", [
    (2, 2, 0, False, 6, 4),    # non-overlapping, divides
    (2, 2, 0, True, 7, 5),     # does not divide: ceil mode adds a partial window
    (2, 2, 0, False, 7, 5),    # does not divide: floor mode drops the rest
    (3, 2, 0, False, 7, 7),    # overlapping windows
    (3, 2, 1, True, 8, 6),     # overlapping, padded, ceil
    (3, 1, 1, False, 5, 4),    # stride 1
])
def test_pool_gradients(dev, rng, cls, k, s, p, ceil, h, w):
    check_layer(cls(k, s, padding=p, ceil_mode=ceil), randn(rng, 2, 3, h, w), dev)


def test_linear_gradients(dev, rng):
    check_layer(Linear(5, 4, seed=0), randn(rng, 3, 5), dev)
    check_layer(Linear(6, 2, init="xavier", bias=False), randn(rng, 1, 6), dev)


def test_relu_gradients(dev, rng):
    x = randn(rng, 3, 4, 5)
    x[numpy.abs(x) < 1e-3] = 0.5  # keep away from the kink
    check_layer(ReLU(), x, dev)


def test_softmax_gradients(dev, rng):
    check_layer(Softmax(), randn(rng, 3, 6), dev)


@pytest.mark.parametrize("order", ["chw", "hwc"])
def test_flatten_gradients_and_order(dev, rng, order):
    x = randn(rng, 2, 3, 2, 4)
    check_layer(Flatten(order), x, dev)
    y = xnn.to_numpy(Flatten(order).to(dev).forward(dev.asarray(x)))
    expect = x.reshape(2, -1) if order == "chw" else x.transpose(0, 2, 3, 1).reshape(2, -1)
    numpy.testing.assert_array_equal(y, expect)


@pytest.mark.parametrize("p", [1, 2])
def test_reflection_pad_gradients_and_values(dev, rng, p):
    x = randn(rng, 2, 2, 5, 4)
    check_layer(ReflectionPad2d(p), x, dev)
    y = xnn.to_numpy(ReflectionPad2d(p).to(dev).forward(dev.asarray(x)))
    numpy.testing.assert_array_equal(y, numpy.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect"))


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


# ---------------------------------------------------------------- references
@pytest.mark.parametrize("k,s,p,mode", [(3, 1, 1, "zeros"), (3, 2, 0, "zeros"), (5, 2, 2, "zeros"),
                                        (1, 1, 0, "zeros"), (3, 1, 1, "reflect"), (7, 3, 3, "zeros")])
def test_conv2d_matches_direct_loops(dev, rng, k, s, p, mode):
    x, w, b = randn(rng, 2, 3, 11, 9), randn(rng, 4, 3, k, k), randn(rng, 4)
    layer = Conv2d(3, 4, k, stride=s, padding=p, padding_mode=mode).to(dev, numpy.float64)
    layer.params.update(W=dev.asarray(w), b=dev.asarray(b))
    y = xnn.to_numpy(layer.forward(dev.asarray(x)))
    assert rel_error(y, conv_reference(x, w, b, s, p, mode)) < 1e-12


def test_conv2d_float32_matches_float64_reference(dev, rng):
    x, w, b = randn(rng, 1, 16, 12, 12), randn(rng, 8, 16, 3, 3), randn(rng, 8)
    layer = Conv2d(16, 8, 3, padding=1).to(dev)
    layer.params.update(W=dev.asarray(w.astype("f4")), b=dev.asarray(b.astype("f4")))
    y = layer.forward(dev.asarray(x.astype("f4")))
    assert y.dtype == numpy.float32
    assert rel_error(xnn.to_numpy(y), conv_reference(x, w, b, 1, 1)) < 1e-5


@pytest.mark.parametrize("kind,cls", [("max", MaxPool2d), ("avg", AvgPool2d)])
@pytest.mark.parametrize("k,s,p,ceil,h,w", [(2, 2, 0, False, 8, 6), (2, 2, 0, True, 7, 5),
                                            (3, 2, 1, True, 9, 8), (3, 2, 0, False, 7, 6),
                                            (3, 3, 0, True, 10, 8)])
def test_pools_match_direct_loops(dev, rng, kind, cls, k, s, p, ceil, h, w):
    x = randn(rng, 2, 3, h, w)
    y = xnn.to_numpy(cls(k, s, padding=p, ceil_mode=ceil).to(dev).forward(dev.asarray(x)))
    numpy.testing.assert_allclose(y, pool_reference(x, k, s, p, ceil, kind), rtol=1e-12, atol=1e-12)


def test_ceil_mode_output_sizes_match_pytorch_rule():
    from xnn.layers.pool import pool_output_size
    assert pool_output_size(7, 2, 2, 0, True) == 4
    assert pool_output_size(7, 2, 2, 0, False) == 3
    assert pool_output_size(6, 3, 2, 1, True) == 4   # last window starts on the last pixel
    assert pool_output_size(5, 2, 2, 1, True) == 3   # it would start in the right padding: dropped


def test_relu_backward_with_nchw_dy_on_channels_last_input(dev, rng):
    """dy in NCHW memory for a channels-last x (an injected gradient): values are dy * [x > 0]
    and dx comes back channels-last, ready for the conv below."""
    x = rng.standard_normal((2, 5, 4, 3))                 # NHWC memory
    relu = ReLU().to(dev)
    relu.forward(dev.asarray(x).transpose(0, 3, 1, 2))
    dy = rng.standard_normal((2, 3, 5, 4))                # NCHW memory
    dx = relu.backward(dev.asarray(dy))
    want = dy * (x.transpose(0, 3, 1, 2) > 0)
    numpy.testing.assert_array_equal(xnn.to_numpy(dx), want)
    assert dx.transpose(0, 2, 3, 1).flags.c_contiguous


def test_maxpool_backward_with_nchw_dy_keeps_channels_last(dev, rng):
    """The Flatten -> MaxPool2d case: an NCHW dy for a channels-last pool; first winner takes dy."""
    x = rng.standard_normal((2, 4, 6, 3))                 # NHWC memory, no ties
    pool = MaxPool2d(2).to(dev)
    pool.forward(dev.asarray(x).transpose(0, 3, 1, 2))
    dy = rng.standard_normal((2, 3, 2, 3))
    dx = pool.backward(dev.asarray(dy))
    assert dx.transpose(0, 2, 3, 1).flags.c_contiguous
    xh = x.transpose(0, 3, 1, 2)
    want = numpy.zeros_like(xh)
    for i in range(2):
        for j in range(3):
            win = xh[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, 3, 4)
            k = win.argmax(axis=2)
            for n in range(2):
                for c in range(3):
                    want[n, c, 2 * i + k[n, c] // 2, 2 * j + k[n, c] % 2] = dy[n, c, i, j]
    numpy.testing.assert_array_equal(xnn.to_numpy(dx), want)
