"""Conv2d and every convolution algorithm (forced through Conv2d(algorithm=...)) against
direct loops in float64, finite-difference gradients, float32 accuracy at VGG's channel
counts, chunking, algorithm selection and the frozen-weight cache, on every backend."""
import tracemalloc

import numpy
import pytest

import xnn
from xnn.layers import Conv2d
from xnn.layers import conv_algorithms as ca

from .gradcheck import check_layer, rel_error

ALGOS = list(ca.ALGORITHMS)


def randn(rng, *shape):
    return rng.standard_normal(shape)


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


def conv_loops(x, w, b, pad, mode="zeros"):
    """Stride-1 reference in float64 (see :func:`conv_reference`)."""
    x, w = numpy.asarray(x, numpy.float64), numpy.asarray(w, numpy.float64)
    return conv_reference(x, w, numpy.asarray(b, numpy.float64), 1, pad, mode)


GRAD_SHAPES = [
    (1, 1, 1, 5, 5, 3, 1, 1),     # batch 1, one channel
    (2, 3, 4, 6, 5, 3, 1, 0),     # non-square, padding 0
    (2, 2, 3, 7, 6, 3, 2, 1),     # stride 2
    (1, 2, 2, 8, 7, 5, 1, 2),     # kernel 5, padding 2
    (2, 3, 2, 9, 9, 7, 2, 2),     # kernel 7, stride 2
    (2, 4, 3, 4, 5, 1, 1, 0),     # 1x1 kernel
    (1, 3, 2, 6, 6, 1, 2, 1),     # 1x1 kernel, stride 2, padding 1
]
#: a chunk budget far below one image's im2col rows: dW (and the forward) run in many row blocks
TINY_CHUNK = 64


def every_algorithm_and_chunking():
    """Each shape through each algorithm that applies to it (not only what "auto" picks at these
    sizes: im2col), with the default chunk budget and with a tiny one."""
    for shape in GRAD_SHAPES:
        k, s = shape[5], shape[6]
        for algo in ALGOS:
            if ca.applicable(algo, k, k, s, s):
                for chunk in (None, TINY_CHUNK):
                    yield pytest.param(*shape, algo, chunk, id="-".join(map(str, shape + (algo, chunk or "big"))))


def spy_weight_grad_chunks(monkeypatch):
    """Record how many blocks each Conv2d weight-gradient call was cut into."""
    counts, real_chunks, real_dw = [], ca._chunks, ca.weight_grad_nhwc
    inside = []

    def chunks(*args, **kwargs):
        blocks = real_chunks(*args, **kwargs)
        if inside:
            counts.append(len(blocks))
        return blocks

    def weight_grad(*args, **kwargs):
        inside.append(1)
        try:
            return real_dw(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(ca, "_chunks", chunks)
    monkeypatch.setattr(ca, "weight_grad_nhwc", weight_grad)
    return counts


@pytest.mark.parametrize("n,cin,cout,h,w,k,s,p,algo,chunk", list(every_algorithm_and_chunking()))
def test_conv2d_gradients(dev, rng, monkeypatch, n, cin, cout, h, w, k, s, p, algo, chunk):
    if chunk:
        monkeypatch.setattr(ca, "CHUNK_BYTES", chunk)
        if dev.chunk_bytes:                              # a GPU's own budget
            monkeypatch.setattr(dev, "chunk_bytes", chunk)
    dw_blocks = spy_weight_grad_chunks(monkeypatch)
    layer = Conv2d(cin, cout, k, stride=s, padding=p, seed=1, algorithm=algo)
    layer.params["b"] = numpy.random.default_rng(2).standard_normal(cout)
    errors = check_layer(layer, randn(rng, n, cin, h, w), dev)
    assert set(errors) == {"x", "W", "b"}
    assert layer.last_algorithms["fwd"] == algo
    if (s, k) == (1, 3) and p <= 2:
        assert layer.last_algorithms["dx"] == algo     # the input gradient is a convolution too
    assert dw_blocks and (max(dw_blocks) > 1) == bool(chunk), dw_blocks


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
    assert layer._xpad is None                          # a frozen layer keeps no input


@pytest.mark.parametrize("k,s,p,mode", [(3, 1, 1, "zeros"), (3, 2, 0, "zeros"), (5, 2, 2, "zeros"),
                                        (1, 1, 0, "zeros"), (3, 1, 1, "reflect"), (7, 3, 3, "zeros"),
                                        (3, 3, 1, "zeros")])     # the last columns of padding are never read
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



def input_grad_loops(dy, w, pad, shape):
    """dx of a stride-1 zero-padded conv by scattering each dy through each kernel offset."""
    n, c, h, wd = shape
    o, _, kh, kw = w.shape
    dxpad = numpy.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    ho, wo = dy.shape[2:]
    for a in range(kh):
        for bb in range(kw):
            dxpad[:, :, a:a + ho, bb:bb + wo] += numpy.einsum("nohw,oc->nchw", dy, w[:, :, a, bb])
    return dxpad[:, :, pad:pad + h, pad:pad + wd]


def weight_grad_loops(x, dy, pad, k=3):
    """dW[o, c, a, b] = sum_{n, i, j} dy[n, o, i, j] xpad[n, c, i + a, j + b] (stride 1), every tap."""
    xpad = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = dy.shape[2:]
    dw = numpy.zeros((dy.shape[1], x.shape[1], k, k))
    for a in range(k):
        for b in range(k):
            dw[:, :, a, b] = numpy.einsum("nohw,nchw->oc", dy, xpad[:, :, a:a + ho, b:b + wo])
    return dw


def make(dev, algo, c, o, pad=1, mode="zeros", dtype=numpy.float64, frozen=False, rng=None):
    layer = Conv2d(c, o, 3, padding=pad, padding_mode=mode, algorithm=algo, seed=3).to(dev, dtype)
    if rng is not None:   # a non-zero bias
        layer.params["b"] = dev.asarray(rng.standard_normal(o).astype(dtype))
    return layer.freeze() if frozen else layer


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("n,c,o,h,w,pad,mode", [
    (1, 3, 4, 11, 9, 1, "zeros"),      # sizes that are not whole tiles
    (2, 2, 3, 4, 4, 0, "zeros"),       # no padding: 2x2 output
    (2, 5, 2, 8, 8, 1, "reflect"),
    (1, 1, 1, 1, 1, 1, "zeros"),       # one pixel
])
def test_forward_matches_direct_loops(dev, rng, algo, n, c, o, h, w, pad, mode):
    layer = make(dev, algo, c, o, pad, mode, rng=rng)
    x = rng.standard_normal((n, c, h, w))
    y = xnn.to_numpy(layer.forward(dev.asarray(x)))
    ref = conv_loops(x, xnn.to_numpy(layer.params["W"]), xnn.to_numpy(layer.params["b"]), pad, mode)
    assert y.shape == ref.shape
    assert rel_error(y, ref) < 1e-12


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("pad,mode,frozen", [(1, "zeros", False), (0, "zeros", False), (1, "reflect", False),
                                             (1, "zeros", True), (2, "zeros", False)])
def test_gradients(dev, rng, algo, pad, mode, frozen):
    layer = Conv2d(2, 3, 3, padding=pad, padding_mode=mode, algorithm=algo, seed=1)
    if frozen:
        layer.freeze()
    errors = check_layer(layer, rng.standard_normal((2, 2, 6, 5)), dev)
    assert ("W" in errors) != frozen


@pytest.mark.parametrize("algo,tol", [("im2col", 1e-6), ("winograd2", 1.5e-6), ("winograd4", 1e-5),
                                      ("winograd6", 3e-5)])
@pytest.mark.parametrize("channels", [256, 512])
def test_float32_accuracy_at_vgg_widths(dev, rng, algo, tol, channels):
    x = rng.standard_normal((1, channels, 10, 9)).astype(numpy.float32)
    layer = make(dev, algo, channels, channels, dtype=numpy.float32, frozen=True)
    w = xnn.to_numpy(layer.params["W"]).astype(numpy.float64)
    y = layer.forward(dev.asarray(x))
    assert y.dtype == numpy.float32
    assert rel_error(xnn.to_numpy(y), conv_loops(x, w, numpy.zeros(channels), 1)) < tol
    dy = rng.standard_normal(y.shape).astype(numpy.float32)
    dx = layer.backward(dev.asarray(dy))
    assert dx.dtype == numpy.float32
    assert rel_error(xnn.to_numpy(dx), input_grad_loops(dy, w, 1, x.shape)) < tol


@pytest.mark.parametrize("algo", ALGOS)
def test_chunked_and_threaded_paths_agree(dev, rng, monkeypatch, algo):
    """Tiny chunks: split rows of one image, and groups of images; forward and backward."""
    for n, h in ((1, 13), (5, 6)):
        monkeypatch.setattr(ca, "CHUNK_BYTES", 3000)
        layer = make(dev, algo, 4, 5, rng=rng)
        x = rng.standard_normal((n, 4, h, 7))
        y = layer.forward(dev.asarray(x))
        dy = rng.standard_normal(y.shape)
        dx = xnn.to_numpy(layer.backward(dev.asarray(dy)))
        w = xnn.to_numpy(layer.params["W"])
        assert rel_error(xnn.to_numpy(y), conv_loops(x, w, xnn.to_numpy(layer.params["b"]), 1)) < 1e-12
        assert rel_error(dx, input_grad_loops(dy, w, 1, x.shape)) < 1e-12
        assert rel_error(xnn.to_numpy(layer.grads["W"]), weight_grad_loops(x, dy, 1)) < 1e-12
        assert rel_error(xnn.to_numpy(layer.grads["b"]), dy.sum(axis=(0, 2, 3))) < 1e-12


def test_chunks_cover_everything_once():
    for n, rows, row_bytes, parts in [(1, 512, 10**6, 2), (64, 28, 10**4, 2), (3, 5, 10, 2), (1, 1, 10, 2),
                                      (7, 3, 2 * 10**7, 1)]:
        hits = numpy.zeros((n, rows), int)
        for n0, n1, r0, r1 in ca._chunks(n, rows, row_bytes, parts):
            assert n1 - n0 == 1 or (r0, r1) == (0, rows)       # out[n0:n1, r0:r1] is contiguous
            hits[n0:n1, r0:r1] += 1
        assert (hits == 1).all()


def test_forward_memory_grows_with_pixels_not_with_im2col(rng, monkeypatch):
    """A 64-channel forward at 128x128 would need a 37 MB column matrix; chunked it stays small."""
    monkeypatch.setattr(ca, "CHUNK_BYTES", 2**20)
    x = rng.standard_normal((1, 64, 128, 128)).astype(numpy.float32)
    layer = Conv2d(64, 64, 3, padding=1, algorithm="im2col").freeze()
    layer.forward(x)
    tracemalloc.start()
    layer.forward(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    io = 2 * x.nbytes * 1.1          # padded input + output
    assert peak < io + 4 * ca.CHUNK_BYTES * xnn.device("cpu").workers


def test_autotune_times_once_and_remembers(dev, rng):
    ca.clear_choices()
    layer = make(dev, "autotune", 3, 4)
    x = dev.asarray(rng.standard_normal((1, 3, 9, 9)))
    layer.forward(x)
    chosen = layer.last_algorithms["fwd"]
    assert chosen in ca.ALGORITHMS
    key = [k for k in ca._CHOICE if k[0] == dev.name and k[2] == "fwd"]
    assert len(key) == 1 and ca._CHOICE[key[0]] == chosen


def test_environment_forces_an_algorithm(dev, rng, monkeypatch):
    monkeypatch.setenv("XNN_CONV_ALGO", "winograd2")
    layer = make(dev, "auto", 2, 2)
    layer.backward(layer.forward(dev.asarray(rng.standard_normal((1, 2, 6, 6)))))
    assert layer.last_algorithms == {"fwd": "winograd2", "dx": "winograd2"}
    strided = Conv2d(2, 2, 3, stride=2).to(dev)           # Winograd does not apply: im2col
    strided.forward(dev.asarray(rng.standard_normal((1, 2, 6, 6)).astype(numpy.float32)))
    assert strided.last_algorithms["fwd"] == "im2col"
    monkeypatch.setenv("XNN_CONV_ALGO", "fftw")
    with pytest.raises(ValueError, match="XNN_CONV_ALGO"):
        layer.forward(dev.asarray(rng.standard_normal((1, 2, 6, 6))))


def test_auto_follows_a_fixed_rule(dev, rng, monkeypatch):
    monkeypatch.delenv("XNN_CONV_ALGO", raising=False)
    ca.clear_choices()
    cases = [((1, 3, 16, 16), 3, "im2col"),       # 3 input channels: a short GEMM
             ((1, 32, 32, 32), 32, "winograd4"),  # 64 output tiles of 4x4
             ((1, 32, 16, 16), 32, "im2col"),     # 16 tiles: transforms dominate
             ((8, 32, 16, 16), 32, "winograd4")]  # 16 tiles per image, 128 in the batch
    for shape, cin, want in cases:
        layer = make(dev, "auto", cin, 4)
        layer.forward(dev.asarray(rng.standard_normal(shape)))
        assert layer.last_algorithms["fwd"] == want, (shape, layer.last_algorithms)
    # large kernels: the rule needs the output channels (the fast style network's 9x9 layers)
    for cin, cout, want in ((3, 16, "fft"), (16, 3, "fft"), (32, 8, "tapsum"), (8, 32, "im2col")):
        layer = Conv2d(cin, cout, 9, padding=4, seed=3).to(dev, numpy.float64)
        layer.forward(dev.asarray(rng.standard_normal((1, cin, 12, 12))))
        assert layer.last_algorithms["fwd"] == want, (cin, cout, layer.last_algorithms)
    assert not ca._CHOICE  # nothing timed


def test_autotune_candidates_are_the_algorithms_that_apply():
    """Winograd F(m x m) needs a 3x3 stride-1 kernel and at least one whole m x m output tile; the tap
    sum and the FFT any stride-1 kernel."""
    assert ca.candidates(3, 3, 1, 1, 1, 9) == ["im2col", "tapsum", "fft"]
    assert ca.candidates(3, 3, 1, 1, 2, 3) == ["im2col", "tapsum", "fft", "winograd2"]
    assert ca.candidates(3, 3, 1, 1, 9, 3) == ["im2col", "tapsum", "fft", "winograd2"]
    assert sorted(ca.candidates(3, 3, 1, 1, 4, 5)) == sorted(set(ALGOS) - {"winograd6"})
    assert sorted(ca.candidates(3, 3, 1, 1, 6, 6)) == sorted(ALGOS)
    assert ca.candidates(3, 3, 2, 2, 8, 8) == ["im2col"]
    assert ca.candidates(5, 5, 1, 1, 8, 8) == ["im2col", "tapsum", "fft"]


@pytest.mark.parametrize("m", [2, 4, 6])
def test_winograd_matrices_compute_a_tile_exactly(m, rng):
    """A^T [(G w G^T) .* (B^T d B)] A is the valid 3x3 correlation of one (m+2)^2 tile, in float64."""
    bb, gg, aa = ca.winograd_matrices(m)
    assert bb.dtype == gg.dtype == aa.dtype == numpy.float64
    d, w = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    y = (aa @ ((gg @ w.ravel()) * (bb @ d.ravel()))).reshape(m, m)
    want = numpy.array([[(d[i:i + 3, j:j + 3] * w).sum() for j in range(m)] for i in range(m)])
    assert rel_error(y, want) < 1e-13


def test_winograd_matrices_are_copied_to_a_device_once_per_dtype(dev):
    f32 = ca.device_matrices(dev, 4, numpy.float32)
    assert ca.device_matrices(dev, 4, numpy.float32) is f32
    assert all(dev.owns(a) and a.dtype == numpy.float32 for a in f32)
    f64 = ca.device_matrices(dev, 4, numpy.float64)
    assert all(a.dtype == numpy.float64 for a in f64) and ca.device_matrices(dev, 4, "f8") is f64
    two = ca.device_matrices(dev, 2, numpy.float32)
    assert two[0].shape == (16, 16) and f32[0].shape == (36, 36)
    for got, want in zip(f64, ca.winograd_matrices(4)):
        numpy.testing.assert_array_equal(xnn.to_numpy(got), want)


def test_winograd_needs_a_3x3_stride_1_kernel():
    with pytest.raises(ValueError, match="3x3 stride-1"):
        Conv2d(2, 2, 5, algorithm="winograd4")
    with pytest.raises(ValueError, match="3x3 stride-1"):
        Conv2d(2, 2, 3, stride=2, algorithm="winograd2")
    with pytest.raises(ValueError, match="unknown conv algorithm"):
        Conv2d(2, 2, 3, algorithm="fftw")
    with pytest.raises(ValueError, match="needs stride 1"):
        Conv2d(2, 2, 3, stride=2, algorithm="fft")


@pytest.mark.parametrize("algo", ALGOS)
def test_frozen_weight_cache_follows_new_weights(dev, rng, algo):
    layer = make(dev, algo, 3, 2, frozen=True)
    x = rng.standard_normal((1, 3, 7, 7))
    layer.forward(dev.asarray(x))
    w2 = rng.standard_normal((2, 3, 3, 3))
    layer.params["W"] = dev.asarray(w2.copy())             # replaced: the cache must notice
    y = xnn.to_numpy(layer.forward(dev.asarray(x)))
    assert rel_error(y, conv_loops(x, w2, numpy.zeros(2), 1)) < 1e-12
    layer.unfreeze()                                        # trained in place, then frozen again
    layer.params["W"] *= 2
    layer.freeze()
    y = xnn.to_numpy(layer.forward(dev.asarray(x)))
    assert rel_error(y, conv_loops(x, 2 * w2, numpy.zeros(2), 1)) < 1e-12


def test_chunk_limit_follows_weight_size_within_bounds():
    assert ca.chunk_limit(0) == ca.MIN_CHUNK_BYTES
    assert ca.chunk_limit(3 * 2**20) == 6 * 2**20
    assert ca.chunk_limit(10**9) == ca.CHUNK_BYTES


@pytest.mark.parametrize("limit", [700, 5000, None])
def test_weight_grad_in_small_chunks_matches_loops(dev, rng, limit):
    """dW = X^T dY summed over chunks of whole images and of row blocks, against einsum loops."""
    n, c, o, h, w = 3, 2, 4, 6, 5
    x = rng.standard_normal((n, h + 2, w + 2, c))
    dy = rng.standard_normal((n, h, w, o))
    got = xnn.to_numpy(ca.weight_grad_nhwc(dev, dev.asarray(x), dev.asarray(dy), 3, 3, 1, 1, limit=limit))
    want = numpy.zeros((3, 3, c, o))
    for a in range(3):
        for b in range(3):
            want[a, b] = numpy.einsum("nhwc,nhwo->co", x[:, a:a + h, b:b + w], dy)
    assert rel_error(got, want.reshape(9 * c, o)) < 1e-12


def test_conv2d_arguments_accept_pairs_and_refuse_clearly():
    layer = Conv2d(2, 3, (3, 3), stride=(1, 1), padding=(1, 1))
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (1, 1), 1)
    with pytest.raises(ValueError, match=r"padding must be an int >= 0 or a pair \(p, p\) of equal ints"):
        Conv2d(2, 3, 3, padding=(1, 2))
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        Conv2d(2, 3, 3, padding=-1)
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a pair"):
        Conv2d(2, 3, (3, 3, 3))
    with pytest.raises(ValueError, match="unknown padding_mode 'reflection'"):
        Conv2d(2, 3, 3, padding_mode="reflection")


# ---------------------------------------------------------------- documented rules, pinned (mutation testing)
def spy_chunks(monkeypatch):
    """Record (args, blocks) of every _chunks call."""
    calls, real = [], ca._chunks

    def chunks(*args, **kwargs):
        blocks = real(*args, **kwargs)
        calls.append((args, kwargs, blocks))
        return blocks

    monkeypatch.setattr(ca, "_chunks", chunks)
    return calls


def test_weight_grad_chunk_budget_follows_the_weight_size_and_the_device(rng, monkeypatch):
    """chunk_limit of the dW size (kh*kw*C*O items), a device's own chunk_bytes, or the caller's limit;
    and the whole column matrix ``cols`` gives the same dW without unrolling."""
    import copy
    cpu = xnn.device("cpu")
    c = o = 256                                         # 2.4 MB of float32 dW: a budget between the bounds
    xpad = rng.standard_normal((1, 4, 5, c)).astype(numpy.float32)
    dy = rng.standard_normal((1, 2, 3, o)).astype(numpy.float32)
    calls = spy_chunks(monkeypatch)
    dw = ca.weight_grad_nhwc(cpu, xpad, dy, 3, 3, 1, 1)
    (args, kwargs, _), = calls
    assert args == (1, 2, 3 * 9 * c * 4) and kwargs == {"limit": ca.chunk_limit(9 * c * o * 4)}
    assert ca.MIN_CHUNK_BYTES < kwargs["limit"] < ca.CHUNK_BYTES
    calls.clear()
    ca.weight_grad_nhwc(cpu, xpad, dy, 3, 3, 1, 1, limit=700)
    assert calls[0][1] == {"limit": 700}
    gpu_like = copy.copy(cpu)
    gpu_like.chunk_bytes = 12345
    calls.clear()
    ca.weight_grad_nhwc(gpu_like, xpad, dy, 3, 3, 1, 1)
    assert calls[0][1] == {"limit": 12345}
    calls.clear()
    with_cols = ca.weight_grad_nhwc(cpu, xpad, dy, 3, 3, 1, 1, cols=cpu.im2col(xpad, 3, 3, 1, 1))
    assert not calls and with_cols.shape == (9 * c, o)
    numpy.testing.assert_allclose(with_cols, dw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algo", ALGOS)
def test_forward_chunks_keep_every_temporary_within_the_device_budget(rng, monkeypatch, algo):
    """conv_nhwc cuts its work so that no chunk's temporary (im2col's column matrix; Winograd's
    (m+2)^2 transformed tiles x max(C, O)) passes the budget by more than a row, which a device with its own
    chunk_bytes sets; the parts are the device's workers."""
    import copy
    dev = copy.copy(xnn.device("cpu"))
    dev.chunk_bytes = 2**14
    n, c, o, h, w = 2, 8, 6, 18, 14
    x = rng.standard_normal((n, h, w, c))
    wt = rng.standard_normal((o, c, 3, 3))
    m = ca.tile_size(algo)
    ho, wo = h - 2, w - 2
    extent = ca.padded_extent(algo, ho, wo, 3, 3, 1, 1)
    xpad = numpy.zeros((n,) + tuple(extent) + (c,))
    xpad[:, :h, :w] = x
    if algo == "tapsum":        # its temporary is Y of an input row band: kh*kw*O values a padded position
        bands, real = [], ca._tapsum_part
        monkeypatch.setattr(ca, "_tapsum_part", lambda *a: bands.append(a[-1]) or real(*a))
        y = ca.conv_nhwc(dev, xpad, ca.prepare_weights(dev, wt, algo), None, algo, (ho, wo), 3, 3)
        want = conv_loops(x.transpose(0, 3, 1, 2), wt, numpy.zeros(o), 0).transpose(0, 2, 3, 1)
        assert rel_error(y, want) < 1e-12
        per_row = extent[1] * 9 * o * 8
        every = [b for part in bands for b in part]
        assert len(bands) == n * min(dev.workers, len(every) // n) and len(every) > n
        assert all((r1 - r0) * per_row <= dev.chunk_bytes for r0, r1 in every)
        rows = every[0][1] - every[0][0]                    # the bands of each image cover its rows once
        assert sorted(every) == sorted([(r, min(r + rows, extent[0])) for r in range(0, extent[0], rows)] * n)
        return
    if algo == "fft":           # bands of output rows plus the kernel's kh - 1, at an FFT size
        bands, real = [], ca._fft_band
        monkeypatch.setattr(ca, "_fft_band", lambda *a: bands.append((a[-5], a[-1])) or real(*a))
        y = ca.conv_nhwc(dev, xpad, ca.prepare_weights(dev, wt, algo), None, algo, (ho, wo), 3, 3)
        want = conv_loops(x.transpose(0, 3, 1, 2), wt, numpy.zeros(o), 0).transpose(0, 2, 3, 1)
        assert rel_error(y, want) < 1e-12
        per_row = ca.fft_row_bytes(c, o, ca.fft_length(wo + 2), 8)
        (fh,) = {f for f, _ in bands}
        blocks = [b for _, b in bands]
        assert len(blocks) > n and sorted(b[2:] for b in blocks if b[0] == 0) == sorted(b[2:] for b in blocks
                                                                                          if b[0] == 1)
        assert all(n1 - n0 == 1 and fh >= r1 - r0 + 2 for n0, n1, r0, r1 in blocks)
        assert sorted(r for b in blocks if b[0] == 0 for r in range(b[2], b[3])) == list(range(ho))
        assert fh * per_row <= 1.16 * dev.chunk_bytes
        return
    calls = spy_chunks(monkeypatch)
    if algo == "im2col":                                  # stride 1 by default
        y = ca.conv_nhwc(dev, xpad, ca.prepare_weights(dev, wt, algo), None, algo, (ho, wo), 3, 3)
        rows, per_row = ho, wo * 9 * c * 8
    else:
        y = ca.conv_nhwc(dev, xpad, ca.prepare_weights(dev, wt, algo), None, algo, (ho, wo), 3, 3, 1, 1)
        rows, per_row = -(-ho // m), (m + 2) ** 2 * -(-wo // m) * max(c, o) * 8
    want = conv_loops(x.transpose(0, 3, 1, 2), wt, numpy.zeros(o), 0).transpose(0, 2, 3, 1)
    assert rel_error(y, want) < 1e-12
    (args, kwargs, blocks), = calls
    assert args[:2] == (n, rows) and args[3:] == (dev.workers, dev.chunk_bytes) and not kwargs
    assert per_row <= dev.chunk_bytes < rows * per_row     # one row fits, one image does not
    # within the budget, give or take one row (the rows are shared out evenly between the blocks)
    assert len(blocks) > n and all((n1 - n0) * (r1 - r0) * per_row < dev.chunk_bytes + per_row
                                   for n0, n1, r0, r1 in blocks)


def test_winograd_runs_in_the_input_dtype(rng, monkeypatch):
    """float32 weights and inputs use float32 transform matrices (one device copy per dtype)."""
    cpu = xnn.device("cpu")
    monkeypatch.setattr(ca, "_DEVICE_MATS", {})
    wt = rng.standard_normal((4, 3, 3, 3)).astype(numpy.float32)
    u = ca.prepare_weights(cpu, wt, "winograd4")
    assert u.dtype == numpy.float32 and u.shape == (36, 3, 4)
    xpad = rng.standard_normal((1, 10, 10, 3)).astype(numpy.float32)
    y = ca.conv_nhwc(cpu, xpad, u, None, "winograd4", (8, 8), 3, 3, 1, 1)
    assert y.dtype == numpy.float32
    assert {k[1] for k in ca._DEVICE_MATS} == {numpy.dtype(numpy.float32).str}


def test_tile_size_and_padded_extent_follow_the_algorithm():
    assert [ca.tile_size(a) for a in ("im2col", "winograd2", "winograd4", "winograd6")] == [1, 2, 4, 6]
    assert ca.padded_extent("winograd6", 5, 13, 3, 3, 1, 1) == (6 + 2, 18 + 2)
    assert ca.padded_extent("im2col", 4, 5, 5, 3, 2, 1) == (3 * 2 + 5, 4 * 1 + 3)
    assert ca.padded_extent("im2col", 6, 7, 3, 3, 1, 1) == (8, 9)
    assert ca.padded_extent("winograd4", 5, 9, 3, 3, 1, 1) == (8 + 2, 12 + 2)
    assert ca.padded_extent("winograd2", 5, 4, 3, 3, 1, 1) == (6 + 2, 4 + 2)


def test_fft_length_is_the_next_5_smooth_number():
    smooth = [m for m in range(1, 2100) if _only_factors(m, (2, 3, 5))]
    for k in range(1, 2000):
        want = min(m for m in smooth if m >= k)
        assert ca.fft_length(k) == want, k
        assert want <= 1.16 * k


def _only_factors(m, primes):
    for p in primes:
        while m % p == 0:
            m //= p
    return m == 1


def test_default_choice_boundaries():
    """The rule of default_choice's docstring at its edges."""
    choose = ca.default_choice
    assert choose(3, 3, 1, 1, 16, 1, 32, 32) == "winograd4"     # 16 input channels are enough
    # F(6x6): 32 channels or more, at least max(C, O) tiles of 6x6, at most 10 % more area than F(4x4)'s
    assert choose(3, 3, 1, 1, 64, 1, 341, 512, 64) == "winograd6"   # VGG19's conv1_2 in the style step
    assert choose(3, 3, 1, 1, 256, 1, 86, 128, 256) == "winograd6"  # conv3_x: 15 x 22 = 330 tiles
    assert choose(3, 3, 1, 1, 512, 1, 43, 64, 512) == "winograd4"   # conv4_x: 88 tiles < 512 channels
    assert choose(3, 3, 1, 1, 256, 1, 43, 64, 512) == "winograd4"   # the output channels count too
    assert choose(3, 3, 1, 1, 31, 1, 512, 512, 31) == "winograd4"   # fewer than 32 channels
    assert choose(3, 3, 1, 1, 32, 1, 512, 512, 32) == "winograd6"
    assert choose(3, 3, 1, 1, 64, 1, 48, 48, 64) == "winograd6"     # 8 x 8 = 64 tiles, no waste
    assert choose(3, 3, 1, 1, 64, 1, 42, 48, 64) == "winograd4"     # 7 x 8 = 56 tiles < 64
    assert choose(3, 3, 1, 1, 64, 1, 48, 48, 65) == "winograd4"     # 64 tiles < 65 output channels
    assert choose(3, 3, 1, 1, 64, 1, 13, 600, 64) == "winograd4"    # 18 rows of tiles for 13: 12.5 % more than 16
    assert choose(3, 3, 1, 1, 64, 1, 7, 600, 64) == "winograd4"     # 2 tile rows for 7: 54 % more area
    assert choose(3, 3, 1, 1, 64, 1, 12, 600, 64) == "winograd6"
    assert choose(3, 3, 1, 1, 64, 2, 24, 48, 64) == "winograd6"     # images in a batch count: 2 x 4 x 8
    assert choose(3, 3, 1, 1, 15, 1, 32, 32) == "im2col"
    assert choose(3, 3, 1, 1, 3, 1, 64, 64) == "im2col"         # few channels, however many tiles
    assert choose(5, 5, 1, 1, 32, 1, 64, 64) == "im2col"        # not 3x3 stride 1
    assert choose(3, 3, 2, 2, 32, 1, 64, 64) == "im2col"
    assert choose(3, 3, 1, 1, 32, 1, 4, 256) == "winograd4"     # one 4-row of 64 tiles
    assert choose(3, 3, 1, 1, 32, 1, 3, 256) == "im2col"        # not one whole tile high
    assert choose(3, 3, 1, 1, 32, 1, 30, 30) == "winograd4"     # 8 x 8 tiles (partial ones count)
    assert choose(3, 3, 1, 1, 32, 1, 28, 28) == "im2col"        # 7 x 7 tiles
    assert choose(3, 3, 1, 1, 64, 1, 28, 28) == "winograd4"     # ... enough with 64 input channels
    assert choose(3, 3, 1, 1, 64, 1, 24, 24) == "winograd4"     # 6 x 6 tiles
    assert choose(3, 3, 1, 1, 64, 1, 20, 24) == "winograd2"     # 5 x 6 of 4x4, 10 x 12 of 2x2
    assert choose(3, 3, 1, 1, 512, 1, 14, 14) == "winograd2"    # 7 x 7 tiles of 2x2 (VGG's conv5 at 224)
    assert choose(3, 3, 1, 1, 512, 1, 13, 13) == "winograd2"    # partial tiles count
    assert choose(3, 3, 1, 1, 512, 1, 12, 14) == "im2col"       # 6 x 7 tiles of 2x2
    assert choose(3, 3, 1, 1, 63, 1, 14, 14) == "im2col"        # fewer than 64 input channels
    assert choose(9, 9, 1, 1, 16, 1, 64, 64, 3) == "fft"        # large kernel, few channel pairs
    assert choose(9, 9, 1, 1, 3, 1, 64, 64, 16) == "fft"
    assert choose(5, 5, 1, 1, 16, 1, 64, 64, 8) == "fft"        # 5x5, 128 pairs
    assert choose(4, 6, 1, 1, 16, 1, 64, 64, 8) == "im2col"     # 24 taps: not a large kernel
    assert choose(5, 5, 1, 1, 16, 1, 64, 64, 9) == "tapsum"     # 144 pairs, fewer outputs than inputs
    assert choose(9, 9, 1, 1, 64, 1, 64, 64, 3) == "tapsum"
    assert choose(9, 9, 1, 1, 16, 1, 64, 64, 16) == "im2col"    # 256 pairs, as many outputs as inputs
    assert choose(3, 3, 1, 1, 64, 1, 64, 64, 3) == "winograd6"  # 3x3: Winograd's rule
    assert choose(9, 9, 2, 2, 16, 1, 64, 64, 3) == "im2col"     # stride 2
    assert choose(9, 9, 1, 1, 16, 1, 64, 64) == "im2col"        # outputs not known


def test_forced_algorithm_reads_the_environment(monkeypatch):
    monkeypatch.delenv("XNN_CONV_ALGO", raising=False)
    assert ca.forced_algorithm() == "auto"
    monkeypatch.setenv("XNN_CONV_ALGO", "  ")
    assert ca.forced_algorithm() == "auto"
    monkeypatch.setenv("XNN_CONV_ALGO", " WinoGrad2 ")
    assert ca.forced_algorithm() == "winograd2"
    monkeypatch.setenv("XNN_CONV_ALGO", "fftw")
    with pytest.raises(ValueError, match=r"^XNN_CONV_ALGO='fftw' is not one of auto, autotune, im2col, "
                                         r"winograd2, winograd4, winograd6, tapsum, fft$"):
        ca.forced_algorithm()


def test_convolve_uses_the_chosen_algorithms_weights_and_times_autotune_once(rng, monkeypatch):
    cpu = xnn.device("cpu")
    monkeypatch.delenv("XNN_CONV_ALGO", raising=False)
    ca.clear_choices()
    wt = rng.standard_normal((4, 3, 3, 3))
    asked = []

    def weights_for(a):
        asked.append(a)
        return ca.prepare_weights(cpu, wt, a)

    x = rng.standard_normal((1, 9, 9, 3))
    want = conv_loops(x.transpose(0, 3, 1, 2), wt, numpy.zeros(4), 1).transpose(0, 2, 3, 1)
    y, _, algo = ca.convolve(cpu, x, "winograd4", weights_for, None, (3, 3), (1, 1), 1, "zeros", 4)
    assert algo == "winograd4" and asked == ["winograd4"] and rel_error(y, want) < 1e-12
    timed = []
    monkeypatch.setattr(cpu, "elapsed", lambda fn: timed.append(1) or (0.0, fn()))
    asked.clear()
    y, _, algo = ca.convolve(cpu, x, "autotune", weights_for, None, (3, 3), (1, 1), 1, "zeros", 4)
    assert sorted(asked) == sorted(ALGOS * 2) and len(timed) == 2 * len(ALGOS)   # each candidate twice
    assert rel_error(y, want) < 1e-12
    (key, chosen), = ca._CHOICE.items()
    assert key[2] == "fwd" and chosen == algo == "im2col"     # the default tag; on a tie the first candidate
    ca.convolve(cpu, x, "autotune", weights_for, None, (3, 3), (1, 1), 1, "zeros", 4)
    assert len(timed) == 2 * len(ALGOS)                                           # remembered: not timed again
    ca.clear_choices()
    speed = {"im2col": [3.0, 2.5], "winograd2": [1.0, 4.0], "winograd4": [2.0, 1.5], "winograd6": [1.1, 1.05],
             "tapsum": [2.0, 5.0], "fft": [1.2, 3.0]}   # two runs each

    def elapsed(fn):
        asked.clear()
        y = fn()
        return speed[asked[0]].pop(0), y

    monkeypatch.setattr(cpu, "elapsed", elapsed)
    y, _, algo = ca.convolve(cpu, x, "autotune", weights_for, None, (3, 3), (1, 1), 1, "zeros", 4, "dx")
    assert algo == "winograd2" and ca._CHOICE == {key[:2] + ("dx",) + key[3:]: "winograd2"}   # the faster run counts
    assert rel_error(y, want) < 1e-12
    ca.clear_choices()


def test_conv2d_output_shape():
    assert Conv2d(1, 1, 3, stride=2).output_shape(8, 9) == (3, 4)
    assert Conv2d(1, 1, (3, 3), stride=(1, 2), padding=1).output_shape(5, 6) == (5, 3)
    assert Conv2d(1, 1, 5, padding=2).output_shape(7, 8) == (7, 8)


def test_conv2d_defaults_initialisers_and_exact_messages():
    layer = Conv2d(2, 3, 3)
    assert (layer.stride, layer.padding, layer.padding_mode, layer.algorithm) == ((1, 1), 0, "zeros", "auto")
    assert layer.params["W"].dtype == numpy.float32 and layer.params["b"].dtype == numpy.float32
    numpy.testing.assert_array_equal(layer.params["b"], numpy.zeros(3))
    numpy.testing.assert_array_equal(layer.params["W"], Conv2d(2, 3, 3, seed=0, init="he").params["W"])
    assert "b" not in Conv2d(2, 3, 3, bias=False).params
    he = Conv2d(64, 8, 3, seed=1).params["W"]                          # N(0, 2 / (C k k))
    assert he.std() == pytest.approx(numpy.sqrt(2 / (64 * 9)), rel=0.05)
    xavier = Conv2d(16, 32, 3, init="xavier", seed=1).params["W"]      # U(-a, a), a = sqrt(6 / (9 C + 9 O))
    a = numpy.sqrt(6 / (16 * 9 + 32 * 9))
    assert a * 0.99 < numpy.abs(xavier).max() <= a
    assert Conv2d(2, 3, 3, init="xavier", dtype=numpy.float64).params["W"].dtype == numpy.float64
    choices = "auto, autotune, im2col, winograd2, winograd4, winograd6, tapsum, fft"
    for kwargs, message in [
            (dict(kernel_size=(3, 3, 3)), "Conv2d kernel_size must be a positive int or a pair of them, got (3, 3, 3)"),
            (dict(kernel_size=3, stride=0), "Conv2d stride must be a positive int or a pair of them, got 0"),
            (dict(kernel_size=3, padding=(1, 2)), "Conv2d padding must be an int >= 0 or a pair (p, p) of equal "
                                                  "ints (H and W are padded alike), got (1, 2)"),
            (dict(kernel_size=3, padding_mode="reflection"), "unknown padding_mode 'reflection'; choose 'zeros' or "
                                                             "'reflect'"),
            (dict(kernel_size=3, algorithm="fftw"), f"unknown conv algorithm 'fftw'; choose one of {choices}"),
            (dict(kernel_size=5, algorithm="winograd4"), "conv algorithm 'winograd4' needs a 3x3 stride-1 kernel; "
                                                         f"choose one of {choices}")]:
        with pytest.raises(ValueError) as info:
            Conv2d(2, 3, **kwargs)
        assert str(info.value) == message
    assert Conv2d(2, 3, 3, padding_mode="reflect").padding_mode == "reflect"


@pytest.mark.parametrize("algo", ALGOS)
def test_frozen_conv_prepares_each_directions_weights_once(dev, rng, algo, monkeypatch):
    """A frozen layer caches the forward and the input-gradient weights of its algorithm, and
    the cached input-gradient weights give the gradient an unfrozen layer computes."""
    prepared, real = [], ca.prepare_weights
    monkeypatch.setattr(ca, "prepare_weights", lambda *a: prepared.append(a[2]) or real(*a))
    layer = make(dev, algo, 3, 4, frozen=True)
    x = dev.asarray(rng.standard_normal((1, 3, 8, 8)))
    y = xnn.to_numpy(layer.forward(x))
    assert prepared == [algo]
    layer.forward(x)
    assert prepared == [algo]                                          # cached
    dy = dev.asarray(rng.standard_normal(y.shape))
    dx = xnn.to_numpy(layer.backward(dy))
    assert prepared == [algo, algo]                                    # the dx weights
    numpy.testing.assert_array_equal(xnn.to_numpy(layer.forward(x)), y)
    numpy.testing.assert_array_equal(xnn.to_numpy(layer.backward(dy)), dx)
    assert prepared == [algo, algo] and sorted(layer._wcache) == [(algo, "dx"), (algo, "fwd")]
    trained = make(dev, algo, 3, 4)                                    # not frozen: nothing is cached
    trained.forward(x)
    numpy.testing.assert_allclose(xnn.to_numpy(trained.backward(dy)), dx, rtol=1e-12, atol=1e-12)
    trained.forward(x)
    assert not trained._wcache


def test_autotune_remembers_per_direction_and_channel_count(dev, rng):
    ca.clear_choices()
    x = dev.asarray(rng.standard_normal((1, 3, 6, 6)))
    for o in (4, 5):
        layer = make(dev, "autotune", 3, o)
        layer.backward(layer.forward(x))
    assert sorted((k[2], k[-1]) for k in ca._CHOICE) == [("dx", 3), ("dx", 3), ("fwd", 4), ("fwd", 5)]
    ca.clear_choices()


def test_a_forced_algorithm_that_does_not_apply_falls_back_to_im2col_untimed(dev, rng, monkeypatch):
    monkeypatch.setenv("XNN_CONV_ALGO", "winograd4")
    ca.clear_choices()
    strided = Conv2d(2, 2, 3, stride=2).to(dev)
    strided.forward(dev.asarray(rng.standard_normal((1, 2, 9, 9)).astype(numpy.float32)))
    assert strided.last_algorithms["fwd"] == "im2col" and not ca._CHOICE


@pytest.mark.parametrize("algo", ALGOS)
def test_input_gradient_path_choice(dev, rng, algo):
    """Stride 1 with p <= k - 1 (here 3x3, p = 2; and reflect padding): dx is a convolution by the
    layer's algorithm; p = 3 > k - 1 folds dY W^T back by col2im (no dx convolution)."""
    x = rng.standard_normal((1, 2, 6, 5))
    for pad, mode, conv_dx in ((2, "zeros", True), (1, "reflect", True), (3, "zeros", False)):
        layer = Conv2d(2, 3, 3, padding=pad, padding_mode=mode, algorithm=algo, seed=1)
        check_layer(layer, x, dev)
        assert (layer.last_algorithms.get("dx") == algo) == conv_dx, (pad, mode, layer.last_algorithms)


def test_frozen_strided_conv_caches_one_weight_copy(dev, rng):
    layer = Conv2d(2, 3, 3, stride=2, padding=1).to(dev, numpy.float64).freeze()
    x = dev.asarray(rng.standard_normal((1, 2, 7, 7)))
    y = layer.forward(x)
    dx = xnn.to_numpy(layer.backward(dev.asarray(numpy.ones(y.shape))))
    assert list(layer._wcache) == [("im2col", "fwd")] and dx.shape == (1, 2, 7, 7)


def test_conv2d_forward_messages():
    layer = Conv2d(2, 3, 3)
    with pytest.raises(ValueError) as info:
        layer.forward(numpy.zeros((1, 3, 5, 5), numpy.float32))
    assert str(info.value) == "Conv2d expects (N, 2, H, W) input, got (1, 3, 5, 5)"
    with pytest.raises(ValueError) as info:
        layer.forward(numpy.zeros((1, 2, 2, 4), numpy.float32))
    assert str(info.value) == "Conv2d input 2x4 is smaller than its 3x3 kernel"
    with pytest.raises(ValueError) as info:
        Conv2d(2, 3, 3, init="lecun")
    assert str(info.value) == "unknown initialiser 'lecun'; choose 'he' or 'xavier'"
    unset = Conv2d(2, 3, 3, init=None)                                 # weights about to be loaded
    assert unset.params["W"].dtype == numpy.float32 and not unset.params["W"].any()


def test_frozen_autotune_keeps_only_the_chosen_weights_and_auto_keeps_each_it_uses(rng):
    ca.clear_choices()
    for shape in ((1, 3, 4, 5), (1, 3, 8, 8)):                         # 2 and 3 candidates
        layer = Conv2d(3, 4, 3, algorithm="autotune").freeze()
        layer.forward(rng.standard_normal(shape).astype(numpy.float32))
        assert list(layer._wcache) == [(layer.last_algorithms["fwd"], "fwd")]
    ca.clear_choices()
    auto = Conv2d(16, 4, 3, padding=1).freeze()
    for size in (32, 8):                                               # winograd4, then im2col
        auto.forward(rng.standard_normal((1, 16, size, size)).astype(numpy.float32))
    assert sorted(auto._wcache) == [("im2col", "fwd"), ("winograd4", "fwd")]


def test_chunks_group_whole_images_that_fit_and_share_them_between_the_workers():
    assert ca._chunks(3, 4, 10) == [(0, 3, 0, 4)]                              # one worker by default
    assert ca._chunks(2, 4, 256, 2, limit=1024) == [(0, 1, 0, 4), (1, 2, 0, 4)]   # an image that just fits
    assert ca._chunks(4, 8, 10, 2, limit=1000) == [(0, 2, 0, 8), (2, 4, 0, 8)]
    assert ca._chunks(2, 8, 10, 2, limit=1000) == [(0, 1, 0, 8), (1, 2, 0, 8)]
    assert ca._chunks(1, 2, 10, 2, limit=1000) == [(0, 1, 0, 1), (0, 1, 1, 2)]    # fewer images than workers
    assert ca._chunks(4, 8, 100, 1, limit=1600) == [(0, 2, 0, 8), (2, 4, 0, 8)]


class _NanEmpty:
    """NumPy whose ``empty`` is full of NaN: what pad_to_extent does not write shows."""

    def __getattr__(self, name):
        return getattr(numpy, name)

    @staticmethod
    def empty(shape, dtype=float):
        return numpy.full(shape, numpy.nan, dtype)


@pytest.mark.parametrize("shape,p,mode,extent", [((2, 3, 4, 2), 2, "zeros", (5, 6)),
                                                  ((1, 3, 3, 2), 2, "zeros", (10, 9)),
                                                  ((1, 4, 5, 1), 1, "reflect", (8, 9)),
                                                  ((1, 4, 5, 1), 0, "zeros", (6, 7))])
def test_pad_to_extent_writes_every_element(rng, shape, p, mode, extent):
    from xnn.layers.padding import pad_to_extent
    x = rng.standard_normal(shape)
    got = pad_to_extent(_NanEmpty(), x, p, mode, extent)
    want = numpy.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant" if mode == "zeros" else "reflect")
    eh, ew = max(extent[0], want.shape[1]), max(extent[1], want.shape[2])
    want = numpy.pad(want, ((0, 0), (0, eh - want.shape[1]), (0, ew - want.shape[2]), (0, 0)))
    assert got.shape == want.shape and got.dtype == x.dtype
    numpy.testing.assert_array_equal(got, want)
    assert pad_to_extent(numpy, x, 0, mode, shape[1:3]) is x                      # nothing to pad: no copy


def test_fft_kernel_spectra_are_kept_per_size_within_their_bound(dev, rng):
    """conj(rfft2(K padded to (fh, fw))) in the kernels' complex precision, computed once per size and
    kept while the total stays within max_bytes (a frozen layer's FFTKernels lives as long as its weights)."""
    k = rng.standard_normal((3, 5, 2, 4))                                   # (kh, kw, C, O)
    for dtype, ctype in ((numpy.float64, numpy.complex128), (numpy.float32, numpy.complex64)):
        kernels = ca.FFTKernels(dev, dev.asarray(k.astype(dtype)))
        spec = kernels.spectrum(8, 9)
        assert spec.dtype == ctype and spec.shape == (8, 5, 2, 4)
        padded = numpy.zeros((8, 9, 2, 4))
        padded[:3, :5] = k
        want = numpy.conj(numpy.fft.rfft2(padded, axes=(0, 1)))
        got = dev.to_numpy(spec)
        for part in (numpy.real, numpy.imag):                               # rel_error takes real arrays
            assert rel_error(part(got), part(want)) < (1e-12 if dtype == numpy.float64 else 1e-6)
        assert kernels.spectrum(8, 9) is spec                               # kept: not computed again
        assert kernels.spectrum(10, 9) is not spec and kernels.spectrum(10, 9).shape == (10, 5, 2, 4)
    kernels = ca.FFTKernels(dev, dev.asarray(k))
    one = 8 * 5 * 2 * 4 * 16                                                # bytes of an (8, 9) spectrum
    kernels.max_bytes = one                                                 # room for exactly one
    first = kernels.spectrum(8, 9)
    assert kernels.spectrum(8, 9) is first
    other = kernels.spectrum(8, 10)                                         # the same bytes: over the bound
    assert kernels.spectrum(8, 10) is not other
    numpy.testing.assert_array_equal(dev.to_numpy(kernels.spectrum(8, 10)), dev.to_numpy(other))
    assert kernels.spectrum(8, 9) is first
    kernels = ca.FFTKernels(dev, dev.asarray(k))
    kernels.max_bytes = 2 * one                      # room for two (8, 5)-frequency spectra, then nothing more
    kept = [kernels.spectrum(8, fw) for fw in (9, 8)]
    assert all(kernels.spectrum(8, fw) is spec for fw, spec in zip((9, 8), kept))
    third = kernels.spectrum(7, 9)                                          # smaller, but over the bound
    assert kernels.spectrum(7, 9) is not third


def test_fft_row_bytes_counts_both_spectra_and_the_real_result():
    # a 540-wide FFT row: 271 complex frequencies of C + O channels, 540 real outputs of O channels
    assert ca.fft_row_bytes(3, 16, 540, 4) == 271 * 19 * 8 + 540 * 16 * 4
    assert ca.fft_row_bytes(16, 3, 15, 8) == 8 * 19 * 16 + 15 * 3 * 8


def test_fft_computes_the_kernel_spectrum_once_per_call_not_per_band(rng, monkeypatch):
    """The bands run on the CPU's workers at once; the spectrum they share is made before them (two
    workers missing an empty cache together would each compute it and count its bytes twice)."""
    import copy
    dev = copy.copy(xnn.device("cpu"))
    dev.chunk_bytes, dev.workers = 2**14, 2
    x = rng.standard_normal((1, 30, 14, 3))
    w = rng.standard_normal((4, 3, 5, 5))
    kernels = ca.prepare_weights(dev, w, "fft")
    calls, bands, real = [], [], kernels.spectrum
    monkeypatch.setattr(kernels, "spectrum", lambda fh, fw: calls.append((fh, fw)) or real(fh, fw))
    real_band = ca._fft_band
    monkeypatch.setattr(ca, "_fft_band", lambda *a: bands.append(a[-1]) or real_band(*a))
    y = ca.conv_nhwc(dev, x, kernels, None, "fft", (26, 10), 5, 5)
    want = conv_loops(x.transpose(0, 3, 1, 2), w, numpy.zeros(4), 0).transpose(0, 2, 3, 1)
    assert rel_error(y, want) < 1e-12
    assert len(bands) > 2 and len(calls) == 1
    assert kernels._kept == next(iter(kernels._spectra.values())).nbytes


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("n,h,w,c,o", [(2, 9, 11, 5, 7), (1, 8, 8, 3, 4), (3, 5, 6, 4, 3)])
def test_winograd_weight_gradient_equals_every_tap(dev, rng, m, n, h, w, c, o):
    """F(3x3, m x m) for dW: whole and partial tiles, one chunk and many (a tiny budget)."""
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, o, h, w))
    ext = ca.padded_extent(f"winograd{m}", h, w, 3, 3, 1, 1)
    xpad = numpy.zeros((n, ext[0], ext[1], c))
    xpad[:, 1:h + 1, 1:w + 1] = x.transpose(0, 2, 3, 1)
    dy_nhwc = numpy.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    want = weight_grad_loops(x, dy, 1)
    for limit in (None, 600):
        dwm = xnn.to_numpy(ca.winograd_weight_grad(dev, dev.asarray(xpad), dev.asarray(dy_nhwc), m, limit=limit))
        assert rel_error(dwm.reshape(3, 3, c, o).transpose(3, 2, 0, 1), want) < 1e-12


def test_wide_winograd_layers_take_the_winograd_weight_gradient(dev, rng, monkeypatch):
    """128 channels in and out after a Winograd forward: dW by Winograd (equal to every tap's loop);
    fewer channels, or an im2col forward: by im2col."""
    used = []
    for name in ("winograd_weight_grad", "weight_grad_nhwc"):
        real = getattr(ca, name)
        monkeypatch.setattr(ca, name, lambda *a, _real=real, _name=name, **k: used.append(_name) or _real(*a, **k))
    for c, o, algo, want in ((128, 128, "winograd4", "winograd_weight_grad"), (128, 128, "winograd2", "winograd_weight_grad"),
                             (128, 128, "winograd6", "winograd_weight_grad"),
                             (64, 128, "winograd4", "weight_grad_nhwc"), (128, 128, "im2col", "weight_grad_nhwc")):
        used.clear()
        layer = make(dev, algo, c, o, rng=rng)
        x = rng.standard_normal((1, c, 9, 7))
        y = layer.forward(dev.asarray(x))
        dy = rng.standard_normal(y.shape)
        layer.backward(dev.asarray(dy))
        assert used == [want], (c, o, algo, used)
        assert rel_error(xnn.to_numpy(layer.grads["W"]), weight_grad_loops(x, dy, 1)) < 1e-12


@pytest.mark.parametrize("algo,tol", [("winograd4", 1e-5), ("winograd6", 3e-5)])
def test_winograd_weight_gradient_in_float32_at_vgg_widths(rng, algo, tol):
    cpu = xnn.device("cpu")
    x = rng.standard_normal((1, 256, 12, 10)).astype(numpy.float32)
    layer = make(cpu, algo, 256, 256, dtype=numpy.float32)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(numpy.float32)
    layer.backward(dy)
    assert layer.grads["W"].dtype == numpy.float32
    assert rel_error(layer.grads["W"], weight_grad_loops(x.astype(numpy.float64), dy.astype(numpy.float64), 1)) < tol


@pytest.mark.parametrize("n,h,w,c,kh,kw,sh,sw", [(2, 7, 6, 1, 3, 3, 1, 1), (1, 9, 8, 3, 3, 3, 2, 1),
                                                 (2, 6, 9, 2, 2, 4, 1, 2), (1, 5, 5, 4, 5, 5, 1, 1)])
def test_im2col_transposed_is_im2col_transposed(dev, rng, n, h, w, c, kh, kw, sh, sw):
    """Row (a, b, c) of the tap-major matrix is column (a, b, c) of im2col's, value for value, for
    any kernel and stride; C-contiguous, so that X^T dY is a plain GEMM."""
    x = dev.asarray(rng.standard_normal((n, h, w, c)).astype(numpy.float32))
    want = dev.to_numpy(dev.im2col(x, kh, kw, sh, sw))
    got = dev.im2col_transposed(x, kh, kw, sh, sw)
    assert got.flags.c_contiguous and got.shape == want.T.shape
    assert numpy.array_equal(dev.to_numpy(got), want.T)


@pytest.mark.parametrize("c,k,transposed", [(1, 3, True), (4, 3, True), (5, 3, False), (1, 7, False),
                                            (36, 1, True), (37, 1, False)])
def test_columns_are_built_tap_major_up_to_36_taps_times_channels(dev, rng, c, k, transposed):
    """The forward's and dW's column matrix: im2col's values either way, built transposed (a
    column-major view) for kh*kw*C <= TRANSPOSED_COLUMNS_MAX_K."""
    x = dev.asarray(rng.standard_normal((2, k + 3, k + 2, c)).astype(numpy.float32))
    got = ca.columns(dev, x, k, k, 1, 1)
    assert numpy.array_equal(dev.to_numpy(got), dev.to_numpy(dev.im2col(x, k, k, 1, 1)))
    assert got.flags.f_contiguous == transposed and got.flags.c_contiguous == (not transposed)


@pytest.mark.parametrize("p,o,layout", [(25088, 32, "c"), (6, 1500, "c"), (7, 3, "c"), (1, 16, "c"),
                                        (10, 16, "f"), (12, 32, "rows")])
def test_add_bias_adds_the_bias_to_every_row(dev, rng, p, o, layout):
    """add_bias widens contiguous targets into rows of about 1024 values with the bias repeated;
    the sum is the broadcast sum exactly, for row counts that do and do not divide, and for
    targets it cannot widen (column-major, a strided view of rows)."""
    base = rng.standard_normal((2 * p, o)).astype(numpy.float32)
    bias = rng.standard_normal(o).astype(numpy.float32)
    t = dev.asarray(base)
    target = {"c": t[:p], "f": dev.xp.asfortranarray(t[:p]), "rows": t[::2]}[layout]
    want = dev.to_numpy(target) + bias
    ca.add_bias(dev.xp, target, dev.asarray(bias))
    assert numpy.array_equal(dev.to_numpy(target), want)
