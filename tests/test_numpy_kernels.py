"""The CPU backend's compiled Winograd transforms (xnn/backends/numpy_kernels.py, Numba) against
the generic ones every backend shares (xnn/backends/base.py), on every 3x3 layer shape of the
shipped networks, and against direct float64 loops through Conv2d."""
import numpy
import pytest

import xnn
from xnn.backends import numpy_kernels
from xnn.backends.base import Device
from xnn.backends.numpy_backend import NumpyDevice
from xnn.layers import Conv2d
from xnn.layers import conv_algorithms as ca

from .gradcheck import rel_error
from .test_conv import conv_loops, input_grad_loops, weight_grad_loops

# (C, O) of the 3x3 stride-1 convolutions, forward and input gradient (O, C): VGG19 (style,
# classification), the AdaIN decoder, the fast style network at width 0.5 and 1
VGG = [(64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
ADAIN = [(512, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 3)]
FAST = [(16, 32), (32, 64), (64, 64), (64, 32), (32, 16), (128, 128), (128, 64)]
PAIRS = sorted(set(VGG + ADAIN + FAST + [(o, c) for c, o in VGG + ADAIN + FAST]))


def generic(dev):
    return lambda name: getattr(Device, name).__get__(dev)


@pytest.fixture
def cpu():
    dev = NumpyDevice()
    if not dev.compiled_kernels:
        pytest.fail("the compiled kernels are off: numba missing (a dependency) or XNN_NUMBA=0", pytrace=False)
    return dev


def test_numba_is_present_and_used_by_default():
    assert numpy_kernels.available()
    assert xnn.device("cpu").compiled_kernels


def test_xnn_numba_0_turns_them_off(monkeypatch):
    monkeypatch.setenv("XNN_NUMBA", "0")
    assert not NumpyDevice().compiled_kernels


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("c,o", PAIRS)
def test_transforms_equal_the_generic_ones_on_every_layer_shape(cpu, rng, m, c, o):
    """V = B^T d B and A^T M A (+ bias), float64: equal to the generic Kronecker GEMMs to rounding."""
    bt, _, at = (numpy.asarray(a) for a in ca.winograd_matrices(m))
    base = generic(cpu)
    tr, tw, n = 3, 4, 2
    # a block cut out of a larger padded array (strided, as conv_nhwc passes it)
    big = rng.standard_normal((n + 1, tr * m + 5, tw * m + 7, c))
    sub = big[1:, 2:2 + tr * m + 2, 3:3 + tw * m + 2]
    v = cpu.winograd_input(sub, m, tr, tw, bt)
    want = base("winograd_input")(sub, m, tr, tw, bt)
    assert v.shape == want.shape == ((m + 2) ** 2, n * tr * tw, c)
    assert rel_error(v, want) < 1e-13
    mm = rng.standard_normal(((m + 2) ** 2, n * tr * tw, o))
    bias = rng.standard_normal(o)
    # whole tiles, partial last tiles, and last tiles wholly outside (the kernel skips them)
    for rows, cols in ((tr * m, tw * m), (tr * m - 1, tw * m - 3), (tr * m - m + 1, tw * m - m + 2),
                       (tr * m - m, tw * m - m)):
        for b in (bias, None):
            got = numpy.full((n, rows, cols, o), numpy.nan)
            ref = numpy.full((n, rows, cols, o), numpy.nan)
            cpu.winograd_output(mm, m, at, b, got, tr, tw)
            base("winograd_output")(mm, m, at, b, ref, tr, tw)
            assert not numpy.isnan(got).any()
            assert rel_error(got, ref) < 1e-13


@pytest.mark.parametrize("m", [2, 4, 6])
def test_float32_stays_float32(cpu, rng, m):
    bt, _, at = (numpy.asarray(a, numpy.float32) for a in ca.winograd_matrices(m))
    sub = rng.standard_normal((1, 2 * m + 2, 3 * m + 2, 8)).astype(numpy.float32)
    v = cpu.winograd_input(sub, m, 2, 3, bt)
    assert v.dtype == numpy.float32
    assert rel_error(v, Device.winograd_input(cpu, sub, m, 2, 3, bt)) < 1e-6
    mm = rng.standard_normal(v.shape[:2] + (5,)).astype(numpy.float32)
    out = numpy.empty((1, 2 * m, 3 * m, 5), numpy.float32)
    cpu.winograd_output(mm, m, at, numpy.ones(5, numpy.float32), out, 2, 3)
    ref = numpy.empty_like(out)
    Device.winograd_output(cpu, mm, m, at, numpy.ones(5, numpy.float32), ref, 2, 3)
    assert rel_error(out, ref) < 1e-6


@pytest.mark.parametrize("algo", ["winograd2", "winograd4", "winograd6"])
@pytest.mark.parametrize("shape", [(1, 16, 11, 13), (3, 8, 5, 6), (2, 32, 4, 17)])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_conv2d_with_compiled_transforms_equals_loops(cpu, rng, monkeypatch, algo, shape, mode):
    """Forward, input and weight gradients of a Conv2d, tiny chunks so rows and images split."""
    monkeypatch.setattr(ca, "CHUNK_BYTES", 5000)
    n, c, h, w = shape
    layer = Conv2d(c, 7, 3, padding=1, padding_mode=mode, algorithm=algo, dtype=numpy.float64, seed=3).to(cpu)
    x = rng.standard_normal(shape)
    y = layer.forward(cpu.asarray(x))
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    wt, b = layer.params["W"], layer.params["b"]
    assert rel_error(y, conv_loops(x, wt, b, 1, mode)) < 1e-12
    if mode == "zeros":
        assert rel_error(dx, input_grad_loops(dy, wt, 1, x.shape)) < 1e-12
        assert rel_error(layer.grads["W"], weight_grad_loops(x, dy, 1)) < 1e-12
    assert layer.last_algorithms == {"fwd": algo, "dx": algo}


def test_blocks_that_do_not_fit_are_refused(cpu, rng):
    """The compiled kernels do not check bounds per element: the wrappers check the shapes."""
    bt, _, at = ca.winograd_matrices(4)
    with pytest.raises(ValueError, match=r"^winograd_input: a block of 2 x 3 tiles of F\(4x4\) needs 10 x 14 padded"):
        cpu.winograd_input(rng.standard_normal((1, 9, 14, 2)), 4, 2, 3, bt)
    with pytest.raises(ValueError, match="needs 10 x 14 padded pixels"):
        cpu.winograd_input(rng.standard_normal((1, 10, 13, 2)), 4, 2, 3, bt)
    cpu.winograd_input(rng.standard_normal((1, 10, 14, 2)), 4, 2, 3, bt)           # exactly enough
    x = rng.standard_normal((1, 8, 12, 2))
    rv = numpy.minimum(numpy.arange(-1, 9), 7)           # 10 padded rows of an 8-row input
    cv = numpy.minimum(numpy.arange(-1, 13), 11)         # 14 padded columns of a 12-column input
    cpu.winograd_input(x, 4, 2, 3, bt, rv, cv)
    past_rows, past_cols = rv.copy(), cv.copy()
    past_rows[5], past_cols[5] = 8, 12
    for r, c in ((rv[:9], cv), (rv, cv[:13]), (past_rows, cv), (rv, past_cols)):
        with pytest.raises(ValueError, match=r"^winograd_input: row and column maps \(\d+, \d+\) do not cover "
                                             r"2 x 3 tiles of F\(4x4\) inside an input of \(1, 8, 12, 2\)"):
            cpu.winograd_input(x, 4, 2, 3, bt, r, c)
    with pytest.raises(ValueError, match="do not fit"):
        cpu.winograd_output(rng.standard_normal((36, 6, 2)), 4, at, None, numpy.empty((1, 9, 12, 2)), 2, 3)
    with pytest.raises(ValueError, match="do not fit"):
        cpu.winograd_output(rng.standard_normal((36, 5, 2)), 4, at, None, numpy.empty((1, 8, 12, 2)), 2, 3)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("h,w,pad,mode", [(9, 11, 1, "zeros"), (9, 11, 1, "reflect"), (6, 7, 4, "reflect"),
                                          (5, 13, 2, "zeros"), (3, 3, 1, "reflect"), (8, 8, 0, "zeros")])
def test_transform_reads_the_padding_itself(cpu, rng, m, h, w, pad, mode):
    """Through row and column maps (no padded copy) = the generic transform of the padded copy;
    every block of tile rows, as conv_nhwc cuts them."""
    from xnn.layers.padding import pad_to_extent, padded_index
    bt = numpy.asarray(ca.winograd_matrices(m)[0])
    x = rng.standard_normal((2, h, w, 5))
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = -(-ho // m), -(-wo // m)
    extent = ca.padded_extent(f"winograd{m}", ho, wo, 3, 3, 1, 1)
    xpad = pad_to_extent(numpy, x, pad, mode, extent)
    rows, cols = padded_index(h, pad, mode, extent[0]), padded_index(w, pad, mode, extent[1])
    for t0, t1 in ((0, th), (0, 1), (th - 1, th), (1, th)):
        if t1 <= t0:
            continue
        want = Device.winograd_input(cpu, xpad[:, t0 * m:t1 * m + 2, :tw * m + 2], m, t1 - t0, tw, bt)
        got = cpu.winograd_input(x, m, t1 - t0, tw, bt, rows[t0 * m:t1 * m + 2], cols)
        generic_maps = Device.winograd_input(cpu, x, m, t1 - t0, tw, bt, rows[t0 * m:t1 * m + 2], cols)
        assert rel_error(got, want) < 1e-13
        assert rel_error(generic_maps, want) < 1e-13


def test_frozen_and_input_gradient_convolutions_make_no_padded_copy(cpu, rng, monkeypatch):
    """The transform pads as it reads: a frozen layer's forward and every input gradient make no
    padded copy; a training layer's forward still pads (dW reads the copy)."""
    calls = []
    pad = ca.pad_to_extent
    monkeypatch.setattr(ca, "pad_to_extent", lambda *a, **k: calls.append(1) or pad(*a, **k))
    # channels-last memory, as every layer inside a network hands on
    x = cpu.asarray(rng.standard_normal((1, 12, 12, 16)).astype(numpy.float32)).transpose(0, 3, 1, 2)
    for frozen in (True, False):
        for algo in ("winograd2", "winograd4", "winograd6"):
            calls.clear()
            layer = Conv2d(16, 16, 3, padding=1, algorithm=algo).to(cpu)
            if frozen:
                layer.freeze()
            y = layer.forward(x)
            assert (layer._xpad is None) == frozen
            layer.backward(numpy.ones_like(y))
            assert len(calls) == (0 if frozen else 1)


@pytest.mark.parametrize("frozen", [True, False])
def test_reflection_wider_than_the_input_is_refused_on_every_path(cpu, rng, frozen):
    """The transform reads mirrored borders through maps; a border as wide as the input has no
    mirror, and is the same clear error as where the padded copy is made."""
    layer = Conv2d(4, 4, 3, padding=1, padding_mode="reflect", algorithm="winograd4").to(cpu)
    if frozen:
        layer.freeze()
    with pytest.raises(ValueError, match=r"^reflection padding 1 needs an input larger than 1 pixels, got 1x6$"):
        layer.forward(rng.standard_normal((1, 4, 1, 6)).astype(numpy.float32))
    layer.forward(rng.standard_normal((1, 4, 2, 6)).astype(numpy.float32))           # 2 rows: mirrored


@pytest.mark.parametrize("algo", ["winograd2", "winograd4", "winograd6"])
def test_the_generic_transforms_on_the_cpu_equal_loops(rng, monkeypatch, algo):
    """XNN_NUMBA=0: the base Device's transforms (the Kronecker GEMMs) on a NumPy device."""
    monkeypatch.setattr(ca, "CHUNK_BYTES", 5000)
    dev = NumpyDevice()
    dev.compiled_kernels = False
    layer = Conv2d(6, 5, 3, padding=1, algorithm=algo, dtype=numpy.float64, seed=3).to(dev).freeze()
    x = rng.standard_normal((2, 6, 9, 7))
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    wt, b = layer.params["W"], layer.params["b"]
    assert rel_error(y, conv_loops(x, wt, b, 1)) < 1e-12
    assert rel_error(layer.backward(dy), input_grad_loops(dy, wt, 1, x.shape)) < 1e-12


def test_convolve_keeps_the_padded_input_unless_told(cpu, rng):
    """convolve's default hands back xpad (a training layer's dW needs it)."""
    x = rng.standard_normal((1, 12, 12, 16))
    w = rng.standard_normal((8, 16, 3, 3))

    def weights_for(a):
        return ca.prepare_weights(cpu, w, a)
    y, xpad, algo = ca.convolve(cpu, x, "winograd4", weights_for, None, (3, 3), (1, 1), 1, "zeros", 8)
    assert algo == "winograd4" and xpad is not None and xpad.shape[1:3] == (14, 14)
    y2, none, _ = ca.convolve(cpu, x, "winograd4", weights_for, None, (3, 3), (1, 1), 1, "zeros", 8,
                              keep_padded=False)
    assert none is None and rel_error(y2, y) < 1e-13


def test_kernels_are_compiled_cached_and_typed_like_the_data(cpu, rng):
    """Compiled (Numba dispatchers with an on-disk cache), the constants in the data's dtype (a
    float64 constant would make float32 kernels compute in float64: right to rounding, and slow)."""
    assert numpy_kernels._constants(numpy.float32).dtype == numpy.float32
    assert numpy_kernels._constants(numpy.float64).dtype == numpy.float64
    assert numpy_kernels._constants(numpy.float32) is numpy_kernels._constants(numpy.float32)
    assert list(numpy_kernels._constants(numpy.float64)) == [2, 4, 5, 8, 0, 5.25, 4.25, 0.25, 1.25, 0.5, 2.5,
                                                             16, 32, 0.125, 0.0625, 0.03125]
    assert numpy_kernels._constants(numpy.float32).astype(numpy.float64).tolist() == list(numpy_kernels.CONSTANTS)
    assert numpy_kernels.supports(4, numpy.float32) and numpy_kernels.supports(2, numpy.float64)
    assert numpy_kernels.supports(6, numpy.float32)
    assert not numpy_kernels.supports(3, numpy.float32)
    assert not numpy_kernels.supports(4, numpy.float16)
    assert numpy_kernels.compiled_for(numpy.float32) and not numpy_kernels.compiled_for(numpy.float16)
    for m in (2, 4, 6):
        bt, _, at = (numpy.asarray(a, numpy.float32) for a in ca.winograd_matrices(m))
        v = cpu.winograd_input(rng.standard_normal((1, 2 * m + 2, 2 * m + 2, 3)).astype(numpy.float32), m, 2, 2, bt)
        cpu.winograd_output(v, m, at, None, numpy.empty((1, 2 * m, 2 * m, 3), numpy.float32), 2, 2)
    kernels = (numpy_kernels._input, numpy_kernels._output6, numpy_kernels._output4, numpy_kernels._output2)
    for kernel in kernels:
        assert hasattr(kernel, "signatures") and type(kernel._cache).__name__ != "NullCache"
        assert kernel.targetoptions.get("nogil") is True       # the two workers run them side by side
        for sig in kernel.signatures:
            data, consts = sig[0], sig[-1]
            assert consts.dtype == data.dtype, (kernel, sig)


@pytest.mark.parametrize("algo", list(ca.ALGORITHMS))
def test_every_algorithm_answers_in_the_input_dtype(cpu, rng, algo):
    x = rng.standard_normal((1, 6, 12, 12)).astype(numpy.float32)
    layer = Conv2d(6, 4, 3 if algo.startswith("w") else 5, padding=1, algorithm=algo).to(cpu)
    y = layer.forward(x)
    assert y.dtype == numpy.float32
    assert layer.backward(numpy.ones_like(y)).dtype == numpy.float32


@pytest.mark.parametrize("shape", [(1, 3, 1, 7), (1, 3, 7, 1), (2, 3, 1, 1)])
def test_one_pixel_high_or_wide_inputs(cpu, rng, shape):
    """Rows (or columns) of a single pixel: every map entry but one is a zero border."""
    layer = Conv2d(3, 2, 3, padding=1, algorithm="winograd4", dtype=numpy.float64, seed=3).to(cpu).freeze()
    x = rng.standard_normal(shape)
    assert rel_error(layer.forward(x), conv_loops(x, layer.params["W"], layer.params["b"], 1)) < 1e-12


def test_an_nchw_input_is_copied_not_read_across_planes(cpu, rng, monkeypatch):
    """An NCHW array's channels-last view has channels H*W apart: the transform would gather
    across whole planes, so such an input takes the padded (channels-last) copy."""
    calls = []
    pad = ca.pad_to_extent
    monkeypatch.setattr(ca, "pad_to_extent", lambda *a, **k: calls.append(1) or pad(*a, **k))
    layer = Conv2d(16, 4, 3, padding=1, algorithm="winograd4", dtype=numpy.float64, seed=3).to(cpu).freeze()
    x = rng.standard_normal((1, 16, 12, 10))                  # NCHW in memory
    y = layer.forward(x)
    assert calls == [1]
    assert rel_error(y, conv_loops(x, layer.params["W"], layer.params["b"], 1)) < 1e-12
    layer.forward(numpy.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))   # NHWC memory
    assert calls == [1]


def test_kernels_compile_where_no_cache_can_be_written():
    """Numba refuses cache=True for code it cannot place a cache for (here: code without a source
    file, as a read-only install with no writable cache directory): the kernel is still compiled."""
    namespace = {}
    exec(compile("def twice(a):\n    return a + a\n", "<no file>", "exec"), namespace)
    kernel = numpy_kernels._jit(namespace["twice"])
    assert kernel(numpy.arange(3.0)).tolist() == [0.0, 2.0, 4.0]
    assert type(kernel._cache).__name__ == "NullCache" and kernel.targetoptions.get("nogil") is True


def test_padding_maps_are_made_once_and_read_only():
    from xnn.layers.padding import cached_padded_index
    a = cached_padded_index(5, 1, "reflect", 9)
    assert a is cached_padded_index(5, 1, "reflect", 9) and not a.flags.writeable
    assert a.tolist() == [1, 0, 1, 2, 3, 4, 3, -1, -1]


# ------------------------------------------------------------ ReLU and max pooling
def _special(rng, shape, dtype):
    """Random values with NaNs, infinities, signed zeros and many ties (values on a coarse grid)."""
    a = numpy.round(rng.standard_normal(shape) * 2) / 2
    flat = a.reshape(-1)
    picks = rng.choice(flat.size, size=(4, max(1, flat.size // 40)), replace=False)
    flat[picks[0]], flat[picks[1]], flat[picks[2]], flat[picks[3]] = numpy.nan, numpy.inf, -numpy.inf, -0.0
    return a.astype(dtype)


def _layouts(a):
    """a (N, C, H, W) in NCHW memory and as an NCHW view of channels-last memory."""
    return {"nchw": numpy.ascontiguousarray(a),
            "nhwc": numpy.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)}


def _same_bits(a, b):
    """Equal values, NaNs in the same places, the same sign on every zero."""
    return a.shape == b.shape and numpy.array_equal(a, b, equal_nan=True) and \
        numpy.array_equal(numpy.signbit(a), numpy.signbit(b))


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # inf * 0, on purpose
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_compiled_relu_equals_the_generic_one_bit_for_bit(cpu, rng, dtype):
    base = generic(cpu)
    x = _special(rng, (3000,), dtype)
    dy = _special(rng, (3000,), dtype)
    y, mask = numpy.empty_like(x), numpy.empty(x.shape, bool)
    y0, mask0 = numpy.empty_like(x), numpy.empty(x.shape, bool)
    cpu.relu(x, y, mask)
    base("relu")(x, y0, mask0)
    assert _same_bits(y, y0) and numpy.array_equal(mask, mask0)
    assert numpy.isnan(y).any() and (mask == (x > 0)).all()          # NaN stays NaN, its mask is unset
    dx, dx0 = numpy.empty_like(dy), numpy.empty_like(dy)
    cpu.relu_backward(dy, mask, dx)
    base("relu_backward")(dy, mask, dx0)
    assert _same_bits(dx, dx0)
    assert numpy.isnan(dx[~mask & numpy.isinf(dy)]).all()            # inf * 0: as the generic product


def test_relu_takes_the_compiled_path_only_where_it_applies(cpu, rng, monkeypatch):
    """1-D contiguous float arrays: compiled; a strided view or float16: the generic ufuncs, same result."""
    calls = []
    monkeypatch.setattr(numpy_kernels, "_relu", lambda *a: calls.append(a))
    x = rng.standard_normal(100).astype(numpy.float32)
    cpu.relu(x, numpy.empty_like(x), numpy.empty(100, bool))
    assert len(calls) == 1
    y, mask = numpy.empty(50, numpy.float32), numpy.empty(50, bool)
    cpu.relu(x[::2], y, mask)                                       # strided: generic
    cpu.relu(x[:50].astype(numpy.float16), y.astype(numpy.float16), mask)
    assert len(calls) == 1 and (y == numpy.maximum(x[::2], 0)).all()


def pool_case(rng, dtype, layout, k, h, w):
    """x (2, 5, h, w) and dy (2, 5, h // kh, w // kw) with special values in ``layout``; two outputs of
    the pool's shape and memory order, and two input gradients filled with 7 (to see what is written)."""
    kh, kw = k
    ho, wo = h // kh, w // kw
    x = _layouts(_special(rng, (2, 5, h, w), dtype))[layout]
    dy = _layouts(_special(rng, (2, 5, ho, wo), dtype))[layout]
    like_y = x[:, :, :ho * kh:kh, :wo * kw:kw]
    return x, dy, (numpy.empty_like(like_y), numpy.empty_like(like_y)), (numpy.full_like(x, 7), numpy.full_like(x, 7))


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("k,h,w", [((2, 2), 8, 10), ((2, 2), 9, 7), ((3, 3), 10, 8), ((1, 2), 5, 6), ((2, 1), 4, 3)])
def test_compiled_max_pool_equals_the_generic_one_bit_for_bit(cpu, rng, dtype, layout, k, h, w):
    """Forward and backward, band by band (output rows [1, ho) then [0, 1)), on arrays with NaNs,
    infinities, signed zeros and ties; remainder rows and columns are left untouched."""
    base = generic(cpu)
    kh, kw = k
    ho, wo = h // kh, w // kw
    x, dy, (y, y0), (dx, dx0) = pool_case(rng, dtype, layout, k, h, w)
    assert numpy_kernels.channels_inner(x, y, dy, dx) is not None     # the compiled path is taken
    for rows in [(1, ho), (0, 1)]:
        cpu.max_pool(x, y, kh, kw, rows)
        base("max_pool")(x, y0, kh, kw, rows)
    assert _same_bits(y, y0) and numpy.isnan(y).any()
    for rows in [(1, ho), (0, 1)]:
        cpu.max_pool_backward(x, y, dy, dx, kh, kw, rows)
        base("max_pool_backward")(x, y0, dy, dx0, kh, kw, rows)
    assert _same_bits(dx, dx0)
    assert (dx[:, :, ho * kh:] == 7).all() and (dx[:, :, :, wo * kw:] == 7).all()
    # each window passes exactly one dy on: the sum over a window is its dy (finite dy only)
    fin = numpy.isfinite(dy)
    window_sums = sum(dx[:, :, a:ho * kh:kh, b:wo * kw:kw] for a in range(kh) for b in range(kw))
    assert numpy.array_equal(window_sums[fin & numpy.isfinite(window_sums)], dy[fin & numpy.isfinite(window_sums)])


def test_max_pool_on_arrays_of_mixed_layouts_takes_the_generic_path(cpu, rng, monkeypatch):
    """An NCHW dy with a channels-last x: no compiled views (they would be read in the wrong order)."""
    monkeypatch.setattr(numpy_kernels, "_max_pool_backward", lambda *a: pytest.fail("compiled path taken"))
    x = _layouts(rng.standard_normal((2, 3, 4, 4)))["nhwc"]
    y = numpy.empty_like(x[:, :, ::2, ::2])
    cpu.max_pool(x, y, 2, 2, (0, 2))
    dy, dx = _layouts(rng.standard_normal((2, 3, 2, 2)))["nchw"], numpy.empty_like(x)
    assert numpy_kernels.channels_inner(x, y, dy, dx) is None
    cpu.max_pool_backward(x, y, dy, dx, 2, 2, (0, 2))
    want = numpy.empty_like(dx)
    generic(cpu)("max_pool_backward")(x, y, dy, want, 2, 2, (0, 2))
    assert numpy.array_equal(dx, want)


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # inf * 0 and inf - inf, on purpose
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("weight_decay,nesterov", [(5e-4, True), (5e-4, False), (0.0, True), (0.0, False)])
def test_compiled_sgd_step_equals_the_generic_one_bit_for_bit(cpu, rng, dtype, weight_decay, nesterov):
    """The same float operations in the same order: equal bits, NaNs, infs and signed zeros included;
    a transposed gradient (a conv's dW) too.  Weight decay 0 adds nothing (0 * inf would be NaN)."""
    base = generic(cpu)
    p, v = _special(rng, (12, 5, 3, 3), dtype), _special(rng, (12, 5, 3, 3), dtype)
    g = numpy.ascontiguousarray(_special(rng, (12, 5, 3, 3), dtype).transpose(2, 3, 1, 0)).transpose(3, 2, 0, 1)
    start, p0, v0 = p.copy(), p.copy(), v.copy()
    for _ in range(2):
        cpu.sgd_momentum(p, g, v, 0.05, 0.9, weight_decay, nesterov)
        base("sgd_momentum")(p0, g, v0, 0.05, 0.9, weight_decay, nesterov)
    assert _same_bits(p, p0) and _same_bits(v, v0) and p.dtype == dtype
    moved = numpy.isfinite(start) & (start != p)                # the step changed the parameters
    assert moved.mean() > 0.5


def test_sgd_step_takes_the_compiled_path_only_where_it_applies(cpu, rng, monkeypatch):
    """Contiguous float parameters and velocities: compiled (a strided gradient is made contiguous);
    a strided velocity or float16: the generic operations, the same step."""
    calls = []
    real = numpy_kernels._sgd_momentum
    monkeypatch.setattr(numpy_kernels, "_sgd_momentum", lambda *a: (calls.append(a), real(*a)))
    p, g, v = (rng.standard_normal((8, 6)).astype(numpy.float32) for _ in range(3))
    cpu.sgd_momentum(p, g.T.copy().T, v, 0.1, 0.9, 0.0, False)
    assert len(calls) == 1
    want = p.copy()
    vv = numpy.asfortranarray(v)
    cpu.sgd_momentum(p, g, vv, 0.1, 0.9, 0.0, False)                 # velocity not C-ordered: generic
    generic(cpu)("sgd_momentum")(want, g, v.copy(), 0.1, 0.9, 0.0, False)
    assert len(calls) == 1 and numpy.array_equal(p, want)
    h = [a.astype(numpy.float16) for a in (p, g, v)]
    cpu.sgd_momentum(*h, 0.1, 0.9, 0.0, False)
    assert len(calls) == 1
