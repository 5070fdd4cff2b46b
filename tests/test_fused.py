"""ConvReLUMaxPool2d (xnn/layers/fused.py) and the fused ReLU + max pool kernels behind it: equal to
Conv2d -> ReLU -> MaxPool2d bit for bit, to direct float64 loops, and to finite differences, on every
backend."""
import numpy
import pytest

import xnn
from xnn.backends import numpy_kernels
from xnn.layers import Conv2d, ConvReLUMaxPool2d, MaxPool2d, ReLU
from xnn.models.mnist import cnn

from .gradcheck import check_layer, numerical_grad, rel_error
from .test_conv import conv_loops, weight_grad_loops
from .test_numpy_kernels import _same_bits, cpu, generic, pool_case  # noqa: F401 (cpu: a fixture)


def three_layers(cin, cout, k, pad, pool, seed, dtype, dev, bias=True):
    conv = Conv2d(cin, cout, k, padding=pad, seed=seed, dtype=dtype, bias=bias, device=dev)
    return conv, ReLU(device=dev), MaxPool2d(pool, device=dev)


def pool_loops(z, k):
    """max over side-by-side k x k windows (floor mode), direct loops."""
    n, c, h, w = z.shape
    y = numpy.empty((n, c, h // k, w // k))
    for i in range(h // k):
        for j in range(w // k):
            y[:, :, i, j] = z[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].max(axis=(2, 3))
    return y


# (C, O, H, W, kernel, padding, pool): MNIST's first block, a floor-mode remainder, three input
# channels, a 5x5 kernel, a 3x3 pool, a 2x3 input, a pool of 1
SHAPES = [(1, 32, 28, 28, 3, 1, 2), (1, 6, 9, 7, 3, 1, 2), (3, 5, 10, 11, 3, 1, 2), (2, 4, 8, 9, 5, 2, 2),
          (1, 4, 9, 9, 3, 1, 3), (2, 3, 7, 10, 3, 1, 2), (1, 3, 2, 3, 3, 1, 2), (1, 3, 5, 5, 3, 1, 1)]


@pytest.mark.parametrize("first", [True, False], ids=["first-layer", "inner-layer"])
@pytest.mark.parametrize("c,o,h,w,k,pad,pool", SHAPES)
def test_equals_direct_float64_loops(dev, rng, first, c, o, h, w, k, pad, pool):
    """y = maxpool(relu(conv(x))), dW, db and dx against loops; float32 layer, float64 reference."""
    x = rng.standard_normal((2, c, h, w)).astype(numpy.float32)
    layer = ConvReLUMaxPool2d(c, o, k, padding=pad, pool=pool, seed=3, device=dev)
    layer.params["b"][...] = dev.asarray(rng.standard_normal(o).astype(numpy.float32) * 0.3)
    layer.needs_input_grad = not first
    w_, b_ = (xnn.to_numpy(layer.params[n]) for n in ("W", "b"))
    z = conv_loops(x, w_, b_, pad)
    want = pool_loops(numpy.maximum(z, 0), pool)
    y = xnn.to_numpy(layer.forward(dev.asarray(x)))
    assert y.shape == want.shape and rel_error(y, want) < 1e-6
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dev.asarray(dy.astype(numpy.float32)))
    # the conv output's gradient: dy at each window's largest entry where it is > 0
    dz = numpy.zeros_like(z)
    ho, wo = want.shape[2:]
    for i in range(ho):
        for j in range(wo):
            win = z[:, :, i * pool:(i + 1) * pool, j * pool:(j + 1) * pool].reshape(*z.shape[:2], -1)
            arg = win.argmax(axis=2)
            for n_ in range(z.shape[0]):
                for c_ in range(z.shape[1]):
                    if win[n_, c_, arg[n_, c_]] > 0:
                        a, b = divmod(arg[n_, c_], pool)
                        dz[n_, c_, i * pool + a, j * pool + b] = dy[n_, c_, i, j]
    assert rel_error(xnn.to_numpy(layer.grads["W"]), weight_grad_loops(x, dz, pad, k)) < 1e-5
    assert rel_error(xnn.to_numpy(layer.grads["b"]), dz.sum(axis=(0, 2, 3))) < 1e-5
    if first:
        assert dx is None
    else:
        ref_conv = Conv2d(c, o, k, padding=pad, dtype=numpy.float64)
        ref_conv.params["W"][...] = w_
        ref_conv.forward(x.astype(numpy.float64))
        assert rel_error(xnn.to_numpy(dx), ref_conv.backward(dz)) < 1e-5


@pytest.mark.parametrize("c,o,h,w,k,pad,pool", SHAPES[1:])
def test_gradients_by_finite_differences(dev, rng, c, o, h, w, k, pad, pool):
    """float64: with the input gradient by check_layer; as a first layer (no input gradient) by the
    parameters' finite differences."""
    x = rng.standard_normal((2, c, h, w))
    check_layer(ConvReLUMaxPool2d(c, o, k, padding=pad, pool=pool, seed=5), x, dev)
    layer = ConvReLUMaxPool2d(c, o, k, padding=pad, pool=pool, seed=5).to(dev, numpy.float64)
    layer.needs_input_grad = False
    xd = dev.asarray(x)
    r = dev.asarray(rng.standard_normal(layer.forward(xd).shape))
    assert layer.backward(r) is None
    for name in ("W", "b"):
        num = numerical_grad(lambda: float((layer.forward(xd) * r).sum()), layer.params[name])
        assert rel_error(xnn.to_numpy(layer.grads[name]), num) < 1e-6, name


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_same_as_conv_relu_maxpool_layers(dev, rng, first, bias):
    """The same weights give the three layers' output and gradients, bit for bit."""
    x = dev.asarray(rng.standard_normal((3, 1, 12, 10)).astype(numpy.float32))
    conv, relu, pool = three_layers(1, 8, 3, 1, 2, 4, numpy.float32, dev, bias)
    fused = ConvReLUMaxPool2d(1, 8, 3, padding=1, pool=2, seed=4, bias=bias, device=dev)
    conv.needs_input_grad = fused.needs_input_grad = not first
    want = pool.forward(relu.forward(conv.forward(x)))
    got = fused.forward(x)
    dy = dev.asarray(rng.standard_normal(want.shape).astype(numpy.float32))
    dx_want, dx_got = conv.backward(relu.backward(pool.backward(dy))), fused.backward(dy)
    for a, b in [(want, got)] + [(conv.grads[n], fused.grads[n]) for n in conv.grads]:
        assert numpy.array_equal(xnn.to_numpy(a), xnn.to_numpy(b))
    assert (dx_want is None) == (dx_got is None) == first
    if not first:
        assert numpy.array_equal(xnn.to_numpy(dx_want), xnn.to_numpy(dx_got))


def test_frozen_first_layer_keeps_no_input(cpu, rng):
    layer = ConvReLUMaxPool2d(1, 4, 3, padding=1, device=cpu).freeze()
    layer.needs_input_grad = False
    y = layer.forward(rng.standard_normal((2, 1, 6, 6)).astype(numpy.float32))
    assert layer._xpad is None and layer.backward(numpy.ones_like(y)) is None and not layer.grads


def test_bad_shapes_and_pool_say_what_is_wrong(cpu):
    with pytest.raises(ValueError, match="pool must be a positive int"):
        ConvReLUMaxPool2d(1, 4, 3, pool=0)
    layer = ConvReLUMaxPool2d(1, 4, 3, padding=1, device=cpu)
    layer.forward(numpy.zeros((1, 1, 8, 8), numpy.float32))
    with pytest.raises(ValueError, match=r"dy of the output's shape \(1, 4, 4, 4\), got \(1, 4, 4, 3\)"):
        layer.backward(numpy.zeros((1, 4, 4, 3), numpy.float32))
    layer = ConvReLUMaxPool2d(1, 4, 3, padding=1, pool=4, device=cpu)
    with pytest.raises(ValueError, match="smaller than its 4x4 pool"):
        layer.forward(numpy.zeros((1, 1, 3, 3), numpy.float32))
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\)"):
        layer.forward(numpy.zeros((1, 2, 8, 8), numpy.float32))


def test_mnist_cnn_keeps_its_parameter_names_and_function(rng):
    """The blocks are named as the convolutions were: checkpoints of the three-layer network load,
    and give the same outputs as those layers."""
    net = cnn((4, 6), 16, seed=2)
    assert list(net.params) == ["conv1.W", "conv1.b", "conv2.W", "conv2.b", "fc1.W", "fc1.b", "fc2.W", "fc2.b"]
    old = xnn.Sequential([("conv1", Conv2d(1, 4, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
                          ("conv2", Conv2d(4, 6, 3, padding=1)), ("relu2", ReLU()), ("pool2", MaxPool2d(2))])
    state = {k: rng.standard_normal(v.shape).astype(numpy.float32) for k, v in net.params.items()}
    net.load_state_dict(state)
    old.load_state_dict({k: v for k, v in state.items() if k.startswith("conv")})
    x = rng.standard_normal((2, 1, 28, 28)).astype(numpy.float32)
    h = net.forward(x, until="conv2")
    assert rel_error(h, old.forward(x)) < 1e-6


# ------------------------------------------------------------ the device kernels
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # inf * 0, on purpose
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("k,h,w", [((2, 2), 8, 10), ((2, 2), 9, 7), ((3, 3), 10, 8), ((1, 2), 5, 6)])
def test_compiled_relu_max_pool_equals_the_generic_one_and_the_two_layers_bit_for_bit(cpu, rng, dtype, layout,
                                                                                       k, h, w):
    """NaNs, infinities, signed zeros and ties; band by band; remainder rows and columns untouched; the
    same bits as ReLU's then the max pool's forward and backward."""
    base = generic(cpu)
    kh, kw = k
    ho, wo = h // kh, w // kw
    x, dy, (y, y0), (dx, dx0) = pool_case(rng, dtype, layout, k, h, w)
    win, win0 = numpy.empty_like(y, dtype=numpy.uint8), numpy.empty_like(y, dtype=numpy.uint8)
    assert numpy_kernels.channels_inner(x, y, dy, dx, win) is not None     # the compiled path is taken
    for rows in [(1, ho), (0, 1)]:
        cpu.relu_max_pool(x, y, win, kh, kw, rows)
        base("relu_max_pool")(x, y0, win0, kh, kw, rows)
        cpu.relu_max_pool_backward(dy, win, dx, kh, kw, rows)
        base("relu_max_pool_backward")(dy, win0, dx0, kh, kw, rows)
    assert _same_bits(y, y0) and numpy.array_equal(win, win0) and _same_bits(dx, dx0)
    assert numpy.isnan(y).any() and (win == 255).any() and (win < kh * kw).any()
    assert (dx[:, :, ho * kh:] == 7).all() and (dx[:, :, :, wo * kw:] == 7).all()
    relu, pool = ReLU(device=cpu), MaxPool2d(k, device=cpu)
    y2 = pool.forward(relu.forward(x))
    dx2 = relu.backward(pool.backward(dy))[:, :, :ho * kh, :wo * kw]
    assert _same_bits(y, y2) and _same_bits(dx[:, :, :ho * kh, :wo * kw], dx2)


@pytest.mark.parametrize("first", [True, False])
def test_bands_side_by_side_give_the_one_band_result(cpu, rng, monkeypatch, first):
    """Output rows cut into bands for three workers equal one band: dtype kept, winners one byte each
    in the output's memory order."""
    from xnn.layers import layout
    x = rng.standard_normal((2, 1, 14, 12)).astype(numpy.float32)
    dy = rng.standard_normal((2, 4, 7, 6)).astype(numpy.float32)

    def run():
        layer = ConvReLUMaxPool2d(1, 4, 3, padding=1, bias=True, device=cpu)
        layer.needs_input_grad = not first
        y = layer.forward(x)
        dx = layer.backward(dy)
        assert layer._winner.dtype == numpy.uint8 and y.dtype == numpy.float32
        assert layer._winner.strides == tuple(s // 4 for s in y.strides)
        assert all(g.dtype == numpy.float32 for g in layer.grads.values())
        return [y, dx] + [layer.grads[n] for n in ("W", "b")]

    one = run()
    monkeypatch.setattr(layout, "SPLIT_ELEMENTS", 1)
    monkeypatch.setattr(cpu, "workers", 3)
    bands = run()
    for a, b in zip(one, bands):
        assert (a is None and b is None) or rel_error(a, b) < 1e-6


def test_pool_sizes_accepted_and_refused(cpu, rng):
    """pool=1 is a conv and ReLU; a bool, 0 or a float is refused; an input too small in one
    direction only is refused; a pooled output of 1 x 1 is fine."""
    x = rng.standard_normal((1, 1, 4, 4)).astype(numpy.float32)
    layer = ConvReLUMaxPool2d(1, 3, 3, padding=1, pool=1, device=cpu)
    assert numpy.array_equal(layer.forward(x), numpy.maximum(Conv2d.forward(layer, x), 0))
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match="pool must be a positive int"):
            ConvReLUMaxPool2d(1, 4, 3, pool=bad)
    layer = ConvReLUMaxPool2d(1, 3, 3, padding=1, pool=2, device=cpu)
    assert layer.forward(x[:, :, :2, :2]).shape == (1, 3, 1, 1)
    for shape in [(1, 1, 1, 4), (1, 1, 4, 1)]:
        h, w = shape[2:]
        with pytest.raises(ValueError, match=f"the {h}x{w} conv output of a {h}x{w} input is smaller than its 2x2 pool"):
            layer.forward(numpy.zeros(shape, numpy.float32))
    for shape in [(1, 4, 4), (1, 1, 4)]:
        with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\)"):
            layer.forward(numpy.zeros(shape, numpy.float32))


def test_defaults_and_dtypes(cpu, rng):
    """No padding by default (as Conv2d); float16, which has no compiled kernel, takes the generic
    ReLU + pool and stays float16."""
    x = rng.standard_normal((2, 1, 8, 8)).astype(numpy.float32)
    layer = ConvReLUMaxPool2d(1, 4, 3, device=cpu)
    assert layer.padding == 0 and layer.forward(x).shape == (2, 4, 3, 3)
    assert ConvReLUMaxPool2d(1, 4, 3, padding=1, device=cpu).forward(x).shape == (2, 4, 4, 4)
    half = ConvReLUMaxPool2d(1, 4, 3, padding=1, dtype=numpy.float16, device=cpu)
    y = half.forward(x.astype(numpy.float16))
    assert y.dtype == numpy.float16 and half.backward(numpy.ones_like(y)).dtype == numpy.float16
