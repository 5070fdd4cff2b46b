"""The small layers (activation, linear, shape, padding): float64 finite-difference gradients
and layouts, on every backend."""
import re

import numpy
import pytest

import xnn
from xnn.layers import Flatten, Linear, ReflectionPad2d, ReLU, Softmax

from .gradcheck import check_layer


def randn(rng, *shape):
    return rng.standard_normal(shape)


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


def test_relu_forward_keeps_the_input_layout_on_every_backend(dev, rng):
    """Each backend promises that ReLU hands a channels-last conv output on channels-last
    (CuPy's own element-wise results are C-ordered: the layer writes into empty_like)."""
    x = rng.standard_normal((2, 5, 4, 3))
    y = ReLU().to(dev).forward(dev.asarray(x).transpose(0, 3, 1, 2))
    numpy.testing.assert_array_equal(xnn.to_numpy(y), numpy.maximum(x, 0).transpose(0, 3, 1, 2))
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


def test_calling_a_layer_checks_the_device_then_runs_forward(rng):
    """layer(x) is forward(x) for an array of the layer's device, and a clear error otherwise."""
    x = rng.standard_normal((2, 5))
    layer = Linear(5, 3, seed=4).to("cpu", numpy.float64)
    numpy.testing.assert_array_equal(layer(x), x @ layer.params["W"] + layer.params["b"])
    standin = xnn.device("standin")
    with pytest.raises(xnn.DeviceMismatchError, match="input of Linear.*runs on the cpu device"):
        layer(standin.asarray(x))
    with pytest.raises(xnn.DeviceMismatchError, match="input of ReLU.*runs on the standin device"):
        ReLU(device=standin)(x)


def test_softmax_is_stable_row_by_row(dev):
    """Each row is shifted by its own maximum: rows of very different scale, huge logits."""
    x = numpy.array([[1000.0, 999.0, 998.0], [0.0, -1.0, -2.0], [-800.0, -801.0, -1e6]])
    sm = Softmax(device=dev)
    assert sm.device is dev
    y = xnn.to_numpy(sm.forward(dev.asarray(x)))
    e = numpy.exp([0.0, -1.0, -2.0])
    want = numpy.array([e / e.sum(), e / e.sum(), [1 / (1 + e[1]), e[1] / (1 + e[1]), 0.0]])
    numpy.testing.assert_allclose(y, want, rtol=1e-12, atol=0)


def test_zero_grad_freeze_and_repr():
    layer = Linear(3, 2, seed=0).to("cpu", numpy.float64)
    layer.forward(numpy.ones((1, 3)))
    layer.backward(numpy.ones((1, 2)))
    assert set(layer.grads) == {"W", "b"}
    layer.zero_grad()
    assert layer.grads == {}
    assert repr(layer) == "Linear(W(3, 2), b(2,))"
    assert layer.freeze() is layer and layer.frozen is True and layer.grads == {}
    assert layer.unfreeze() is layer and layer.frozen is False
    layer.forward(numpy.ones((1, 3)))
    layer.backward(numpy.ones((1, 2)))
    numpy.testing.assert_array_equal(layer.grads["W"], numpy.ones((3, 2)))
    assert repr(ReLU()) == "ReLU()"


def test_every_layer_lives_on_the_device_it_is_given():
    from xnn.layers import AvgPool2d, Conv2d, MaxPool2d, SoftmaxCrossEntropy
    from xnn.layers.adain import AdaIN
    from xnn.layers.upsample import Upsample2d, UpsampleConv2d
    standin = xnn.device("standin")
    for layer in (Linear(2, 2, device=standin), Conv2d(1, 1, 3, device=standin), ReLU(device=standin),
                  Softmax(device=standin), Flatten(device=standin), ReflectionPad2d(1, device=standin),
                  MaxPool2d(2, device=standin), AvgPool2d(2, device=standin), Upsample2d(device=standin),
                  UpsampleConv2d(2, 2, device=standin), AdaIN(device=standin), SoftmaxCrossEntropy(device=standin)):
        assert layer.device is standin, layer
        assert all(standin.owns(p) for p in layer.params.values()), layer


def test_initialisers_have_their_documented_spread():
    from xnn.layers.base import init_weight
    rng = numpy.random.default_rng(0)
    w = init_weight("xavier", rng, (200, 300), 200, 300, numpy.float64)
    a = numpy.sqrt(6 / 500)
    assert -a <= w.min() < -0.95 * a and 0.95 * a < w.max() <= a and abs(w.mean()) < 0.01 * a
    w = init_weight("he", rng, (300, 200), 300, 200, numpy.float64)
    assert abs(w.std() - numpy.sqrt(2 / 300)) < 0.02 * numpy.sqrt(2 / 300) and abs(w.mean()) < 0.01
    numpy.testing.assert_array_equal(init_weight(None, rng, (2, 3), 2, 3, numpy.float32), numpy.zeros((2, 3)))
    assert init_weight(None, rng, (2, 3), 2, 3, numpy.float32).dtype == numpy.float32
    with pytest.raises(ValueError, match="unknown initialiser 'lecun'; choose 'he' or 'xavier'"):
        init_weight("lecun", rng, (2, 3), 2, 3, numpy.float32)


def test_linear_refuses_wrong_shapes_and_skips_an_unneeded_input_gradient():
    layer = Linear(3, 2).to("cpu", numpy.float64)
    for bad in (numpy.ones((2, 4)), numpy.ones((2, 3, 1)), numpy.ones(3)):
        with pytest.raises(ValueError, match=rf"^Linear expects \(N, 3\) input, got {re.escape(str(bad.shape))}$"):
            layer.forward(bad)
    layer.forward(numpy.ones((2, 3)))
    assert layer.backward(numpy.ones((2, 2))).shape == (2, 3)
    layer.needs_input_grad = False
    layer.forward(numpy.ones((2, 3)))
    assert layer.backward(numpy.ones((2, 2))) is None and layer.grads["W"].shape == (3, 2)


def test_flatten_refuses_an_unknown_order():
    with pytest.raises(ValueError, match=r"^Flatten order must be 'chw' or 'hwc', got 'whc'$"):
        Flatten("whc")


def test_pad_hw_and_its_adjoint_on_channels_last_arrays(rng):
    """pad_hw pads axes 1 and 2 of (N, H, W, C); pad_hw_backward is its adjoint:
    <pad(x), g> == <x, pad_backward(g)> for zeros and reflect."""
    from xnn.layers.padding import pad_hw, pad_hw_backward
    x = rng.standard_normal((2, 4, 5, 3))
    for mode, np_mode in (("zeros", "constant"), ("reflect", "reflect")):
        for p in (0, 1, 3):
            y = pad_hw(numpy, x, p, mode)
            numpy.testing.assert_array_equal(y, numpy.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=np_mode))
            g = rng.standard_normal(y.shape)
            back = pad_hw_backward(g, p, mode)
            assert back.shape == x.shape
            assert abs(numpy.vdot(y, g) - numpy.vdot(x, back)) < 1e-10
    with pytest.raises(ValueError, match=r"^reflection padding 4 needs an input larger than 4 pixels, got 4x5$"):
        pad_hw(numpy, x, 4, "reflect")
    with pytest.raises(ValueError, match=r"^unknown padding mode 'edge'; choose 'zeros' or 'reflect'$"):
        pad_hw(numpy, x, 1, "edge")


def test_linear_seed_dtype_and_default_seed():
    a, b = Linear(4, 3, seed=5), Linear(4, 3, seed=5)
    numpy.testing.assert_array_equal(a.params["W"], b.params["W"])
    assert not numpy.array_equal(a.params["W"], Linear(4, 3, seed=6).params["W"])
    numpy.testing.assert_array_equal(Linear(4, 3).params["W"], Linear(4, 3, seed=0).params["W"])
    for dtype in (numpy.float32, numpy.float64):
        layer = Linear(4, 3, dtype=dtype)
        assert layer.params["W"].dtype == dtype and layer.params["b"].dtype == dtype
    assert Linear(4, 3).params["b"].dtype == numpy.float32
    numpy.testing.assert_array_equal(Linear(4, 3).params["b"], numpy.zeros(3))


@pytest.mark.parametrize("name", ["cpu", "standin"], ids=["numpy", "cupy"])
def test_layout_add_keeps_the_first_operands_memory_order(name, rng):
    """layout.add(a, b) is a fresh a + b in a's memory order (NHWC stays NHWC even when b is NCHW)."""
    from xnn.layers import layout
    dev = xnn.device(name)
    a_host, b_host = rng.standard_normal((2, 4, 5, 3)), rng.standard_normal((2, 3, 4, 5))
    a = dev.asarray(a_host).transpose(0, 3, 1, 2)            # NHWC memory
    b = dev.asarray(b_host)                                  # NCHW memory
    y = layout.add(dev.xp, a, b)
    assert layout.channels_last(y) and y is not a and y is not b
    numpy.testing.assert_array_equal(xnn.to_numpy(y), a_host.transpose(0, 3, 1, 2) + b_host)
    numpy.testing.assert_array_equal(xnn.to_numpy(a), a_host.transpose(0, 3, 1, 2))
    c = layout.add(dev.xp, b, a)
    assert c.flags.c_contiguous and not layout.channels_last(c)


def test_flat_is_a_free_view_in_memory_order(rng):
    from xnn.layers import layout
    x = rng.standard_normal((2, 4, 5, 3))
    a = x.transpose(0, 3, 1, 2)                               # NCHW view of NHWC memory
    f = layout.flat(a)
    assert f.ndim == 1 and numpy.shares_memory(f, x)
    numpy.testing.assert_array_equal(f, x.ravel())
    g = layout.flat(x)
    assert g.ndim == 1 and numpy.shares_memory(g, x)


def test_pad_hw_keeps_the_dtype_and_checks_both_sides(rng):
    from xnn.layers.padding import pad_hw
    x = rng.standard_normal((1, 5, 4, 2)).astype(numpy.float32)
    assert pad_hw(numpy, x, 1, "zeros").dtype == numpy.float32
    assert pad_hw(numpy, x, 3, "reflect").dtype == numpy.float32
    with pytest.raises(ValueError, match=r"^reflection padding 4 needs an input larger than 4 pixels, got 5x4$"):
        pad_hw(numpy, x, 4, "reflect")


def test_relu_keeps_only_a_boolean_mask_for_backward(rng):
    """The docstring's memory promise: 1 byte per element is kept, whatever x's dtype."""
    relu = ReLU()
    relu.forward(rng.standard_normal((2, 3, 4, 5)))
    assert relu._mask.dtype == numpy.bool_


def test_in_layout_of_copies_into_the_reference_layout_only_when_it_differs(rng):
    from xnn.layers.layout import channels_last, in_layout_of
    ref = rng.standard_normal((2, 4, 5, 3)).transpose(0, 3, 1, 2)       # channels-last
    nchw = rng.standard_normal((2, 3, 4, 5))
    moved = in_layout_of(numpy, nchw, ref)
    assert channels_last(moved) and not channels_last(nchw)
    numpy.testing.assert_array_equal(moved, nchw)
    nhwc = rng.standard_normal((2, 4, 5, 3)).transpose(0, 3, 1, 2)
    assert in_layout_of(numpy, nhwc, ref) is nhwc                       # already in ref's order: no copy
    assert in_layout_of(numpy, nchw, nchw.copy()) is nchw                # an NCHW reference: a is kept


def test_layer_to_keeps_or_casts_the_parameter_dtype():
    layer = Linear(3, 2)
    assert layer.grads == {} and ReLU().grads == {} and ReLU().params == {}    # dicts from the start
    assert layer.to("cpu").params["W"].dtype == numpy.float32                  # no dtype: kept
    assert layer.to("cpu", numpy.float64).params["W"].dtype == numpy.float64
    assert layer.to(None, numpy.float32).params["b"].dtype == numpy.float32


@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_and_max_pool_in_bands_of_rows_equal_the_whole_array(rng, monkeypatch, channels_last):
    """The CPU backend cuts large element-wise work into dev.workers bands of rows run side by
    side (layout.row_parts); forcing bands on small arrays must not change a single number."""
    from xnn.backends.numpy_backend import NumpyDevice
    from xnn.layers import MaxPool2d, layout

    dev = NumpyDevice()
    dev.workers = 3
    x = rng.standard_normal((2, 5, 15, 11)).astype(numpy.float32)   # odd: a row and a column left over
    if channels_last:
        x = numpy.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    dy = rng.standard_normal((2, 5, 7, 5)).astype(numpy.float32)
    flat_x = rng.standard_normal((7, 6)).astype(numpy.float32)
    results = {}
    for split in (10 ** 9, 0):
        monkeypatch.setattr(layout, "SPLIT_ELEMENTS", split)
        relu, pool, relu2 = ReLU(device=dev), MaxPool2d(2, device=dev), ReLU(device=dev)
        y = pool.forward(relu.forward(x))
        dx = relu.backward(pool.backward(dy))
        results[split] = (y, dx, relu2.forward(flat_x), relu2.backward(flat_x * 2),
                          len(layout.row_parts(dev, y)), len(layout.row_parts(dev, flat_x)))
    whole, bands = results[10 ** 9], results[0]
    assert whole[4:] == (1, 1) and bands[4:] == (3, 3)
    for a, b in zip(whole[:4], bands[:4]):
        numpy.testing.assert_array_equal(a, b)
    # and the whole-array result is the plain definition
    relu_x = numpy.maximum(x, 0)
    numpy.testing.assert_array_equal(whole[0], relu_x[:, :, :14, :10].reshape(2, 5, 7, 2, 5, 2).max(axis=(3, 5)))
    assert not whole[1][:, :, 14:].any() and not whole[1][:, :, :, 10:].any()   # rows no window reads
    assert channels_last == (bands[0].transpose(0, 2, 3, 1).flags.c_contiguous)


def test_row_parts_cuts_rows_into_one_band_per_worker():
    """layout.row_parts: H of a 4-d array (else axis 0) in dev.workers disjoint bands that cover
    it, from SPLIT_ELEMENTS elements up; one part, the whole array, below it or with one worker."""
    from types import SimpleNamespace

    from xnn.layers import layout
    big = layout.SPLIT_ELEMENTS
    for workers in (2, 3):
        dev = SimpleNamespace(workers=workers)
        for shape, axis in [((1, 4, 8, big // 32), 2), ((big // 64, 64), 0)]:
            a = numpy.empty(shape, numpy.uint8)
            assert a.size == big
            parts = layout.row_parts(dev, a)
            assert len(parts) == workers
            covered = numpy.zeros(shape[axis], int)
            for part in parts:
                assert part[:axis] == (slice(None),) * axis and len(part) == axis + 1
                covered[part[axis]] += 1
            assert (covered == 1).all()
    assert layout.row_parts(SimpleNamespace(workers=1), numpy.empty((big // 64, 64))) == [(Ellipsis,)]
    assert layout.row_parts(SimpleNamespace(workers=2), numpy.empty((big // 64 - 1, 64))) == [(Ellipsis,)]
    assert layout.row_parts(SimpleNamespace(workers=2), numpy.empty(())) == [(Ellipsis,)]


@pytest.mark.parametrize("name", ["cpu", "standin"], ids=["numpy", "cupy"])
def test_large_additions_and_paddings_run_in_bands_with_the_same_result(name, rng, monkeypatch):
    """layout.add and pad_to_extent given a device cut arrays of >= SPLIT_ELEMENTS into bands of rows
    (one per worker) and give what the one-piece versions give, in the same memory order."""
    from xnn.layers import layout
    from xnn.layers.padding import pad_to_extent
    dev = xnn.device(name)
    monkeypatch.setattr(dev, "workers", 2)
    calls, real_map = [], dev.parallel_map

    def spy(fn, items):
        items = list(items)
        calls.append(items)
        return real_map(fn, items)
    monkeypatch.setattr(dev, "parallel_map", spy)
    shape = (1, 130, 90, 96)                                     # NHWC memory, 1.1 M elements
    big, other = (dev.asarray(rng.standard_normal(shape).astype(numpy.float32)).transpose(0, 3, 1, 2)
                  for _ in range(2))
    y = layout.add(dev.xp, big, other, dev)
    assert layout.channels_last(y) and calls == [[(slice(None), slice(None), slice(0, 65)),   # bands of rows (H)
                                                  (slice(None), slice(None), slice(65, 130))]]
    numpy.testing.assert_array_equal(xnn.to_numpy(y), xnn.to_numpy(layout.add(dev.xp, big, other)))
    nhwc = big.transpose(0, 2, 3, 1)
    for mode in ("zeros", "reflect"):
        got = pad_to_extent(dev.xp, nhwc, 1, mode, (136, 96), dev)
        numpy.testing.assert_array_equal(xnn.to_numpy(got), xnn.to_numpy(pad_to_extent(dev.xp, nhwc, 1, mode,
                                                                                        (136, 96))))
    # the padding copies bands of rows of the NHWC input (reflect: of the reflection-padded input, 132
    # rows): contiguous blocks of memory
    assert calls[1:] == [[(slice(None), slice(0, 65)), (slice(None), slice(65, 130))],
                         [(slice(None), slice(0, 66)), (slice(None), slice(66, 132))]]


def test_column_sums_is_the_float64_sum_over_rows(rng):
    """The bias gradients' sum over rows (one GEMV with ones) against a float64 sum."""
    from xnn.layers.base import column_sums
    a = rng.standard_normal((25088, 32)).astype(numpy.float32) + 3
    got = column_sums(numpy, a)
    want = a.astype(numpy.float64).sum(axis=0)
    assert got.dtype == numpy.float32 and got.shape == (32,)
    assert numpy.abs(got - want).max() / numpy.abs(want).max() < 1e-5      # one row is 4e-5


def test_row_ranges_and_flat_views():
    """Bands along H of 4-D arrays, else along axis 0; one band for small arrays and 0-d ones; 1-D
    views in memory order for C-ordered and channels-last arrays, the arrays themselves otherwise."""
    from types import SimpleNamespace
    from xnn.layers.layout import SPLIT_ELEMENTS, flat_views, row_parts, row_ranges
    two = SimpleNamespace(workers=2)
    big = numpy.empty(SPLIT_ELEMENTS + 2, numpy.float32)
    assert row_ranges(two, big) == [(0, SPLIT_ELEMENTS // 2 + 1), (SPLIT_ELEMENTS // 2 + 1, SPLIT_ELEMENTS + 2)]
    assert row_ranges(two, big.reshape(2, -1)) == [(0, 1), (1, 2)]                # axis 0 of a 2-D array
    assert row_ranges(two, numpy.empty((1, 4, 6, SPLIT_ELEMENTS // 24 + 1))) == [(0, 3), (3, 6)]   # H
    assert row_ranges(two, numpy.empty((3, 4))) == [(0, 3)]                          # small: one band
    assert row_ranges(two, numpy.float32(1)) == [(0, 1)]                              # 0-d
    assert row_parts(two, numpy.empty((3, 4))) == [(Ellipsis,)]
    nhwc = numpy.zeros((2, 3, 4, 5)).transpose(0, 3, 1, 2)
    views = flat_views(nhwc, numpy.empty_like(nhwc, dtype=bool))
    assert all(v.ndim == 1 and v.base is not None for v in views)
    assert numpy.shares_memory(views[0], nhwc)
    c_order = numpy.zeros((2, 5, 3, 4))
    assert flat_views(c_order)[0].ndim == 1
    mixed = flat_views(nhwc, c_order)
    assert mixed[0] is nhwc and mixed[1] is c_order
