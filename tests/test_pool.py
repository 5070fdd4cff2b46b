"""MaxPool2d and AvgPool2d: direct-loop references, gradients, the fast path, ties, NaN, layouts."""
import numpy
import pytest

import xnn
from xnn.layers import AvgPool2d, MaxPool2d

from .gradcheck import check_layer


def randn(rng, *shape):
    return rng.standard_normal(shape)


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


@pytest.mark.parametrize("kind,cls", [("max", MaxPool2d), ("avg", AvgPool2d)])
@pytest.mark.parametrize("k,s,p,ceil,h,w", [(2, 2, 0, False, 8, 6), (2, 2, 0, True, 7, 5),
                                            (3, 2, 1, True, 9, 8), (3, 2, 0, False, 7, 6),
                                            (3, 3, 0, True, 10, 8),
                                            (3, 1, 1, False, 5, 4),      # padded, stride 1, floor
                                            (3, 3, 1, False, 9, 9),      # the windows never reach the last row/column
                                            (2, 2, 0, True, 7, 6),       # ceil: odd rows, even columns
                                            (2, 2, 0, True, 6, 7)])      # ceil: even rows, odd columns
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



def test_maxpool_fast_path_routes_ties_to_the_first_offset(dev):
    x = numpy.zeros((1, 1, 2, 4))
    x[0, 0, :, 2:] = [[1.0, 3.0], [3.0, 3.0]]
    pool = MaxPool2d(2).to(dev)
    y = pool.forward(dev.asarray(x))
    numpy.testing.assert_array_equal(xnn.to_numpy(y), [[[[0.0, 3.0]]]])
    dx = xnn.to_numpy(pool.backward(dev.asarray(numpy.array([[[[5.0, 7.0]]]]))))
    numpy.testing.assert_array_equal(dx, [[[[5.0, 0.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0]]]])


def test_maxpool_fast_path_matches_loops_and_keeps_channels_last(dev, rng):
    x = rng.standard_normal((2, 6, 8, 4))                  # NHWC memory, NCHW view
    nchw = dev.asarray(x).transpose(0, 3, 1, 2)
    pool = MaxPool2d(2).to(dev)
    y = pool.forward(nchw)
    ref = x.reshape(2, 3, 2, 4, 2, 4).max(axis=(2, 4)).transpose(0, 3, 1, 2)
    numpy.testing.assert_array_equal(xnn.to_numpy(y), ref)
    assert y.strides[1] < y.strides[3]                      # still channels-last in memory
    dy = rng.standard_normal(ref.shape)
    dx = xnn.to_numpy(pool.backward(dev.asarray(dy)))
    xh = x.transpose(0, 3, 1, 2)
    for i in range(3):
        for j in range(2):
            win = xh[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, 4, 4)
            got = dx[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, 4, 4)
            want = numpy.zeros_like(win)
            numpy.put_along_axis(want, win.argmax(axis=2)[..., None], dy[:, :, i, j][..., None], axis=2)
            numpy.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kw", [dict(kernel_size=2, stride=1), dict(kernel_size=3, stride=1, padding=1),
                                dict(kernel_size=2, stride=2, ceil_mode=True)])
def test_maxpool_general_path_routes_ties_to_the_first_offset(dev, kw):
    """All-equal windows: the gradient goes to each window's first (top-left-most) element,
    as the docstring and PyTorch say."""
    pool = MaxPool2d(**kw).to(dev)
    x = numpy.full((1, 1, 3, 3), 2.0)
    y = pool.forward(dev.asarray(x))
    ho, wo = y.shape[2:]
    dx = xnn.to_numpy(pool.backward(dev.asarray(numpy.ones((1, 1, ho, wo)))))
    s, p = pool.stride[0], pool.padding
    want = numpy.zeros((3, 3))
    for i in range(ho):
        for j in range(wo):
            want[max(i * s - p, 0), max(j * s - p, 0)] += 1   # first in-image element of the window
    numpy.testing.assert_array_equal(dx[0, 0], want)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=2, stride=1),
                                dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True)])
def test_maxpool_propagates_nan_like_pytorch(dev, kw):
    """A NaN anywhere in a window makes that window's maximum NaN, on the fast and the general path."""
    x = numpy.arange(1.0, 26.0).reshape(1, 1, 5, 5)[:, :, :4, :4].copy()
    x[0, 0, 1, 2] = numpy.nan
    pool = MaxPool2d(**kw)
    y = xnn.to_numpy(pool.to(dev).forward(dev.asarray(x)))
    k, s, p = pool.kernel_size[0], pool.stride[0], pool.padding
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            r0, c0 = i * s - p, j * s - p
            win = x[0, 0, max(r0, 0):r0 + k, max(c0, 0):c0 + k]
            if numpy.isnan(win).any():
                assert numpy.isnan(y[0, 0, i, j]), (i, j)
            else:
                assert y[0, 0, i, j] == win.max(), (i, j)
    # backward: a NaN window's gradient goes to its NaN (PyTorch's rule), the others to their maximum
    dx = xnn.to_numpy(pool.backward(dev.asarray(numpy.ones_like(y))))
    assert dx[0, 0, 1, 2] >= 1
    assert dx.sum() == y.size


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_pool_arguments_accept_pairs_and_refuse_clearly(cls):
    assert cls((2, 2), stride=(2, 2), padding=(1, 1)).padding == 1
    with pytest.raises(ValueError, match=r"padding must be an int >= 0 or a pair \(p, p\)"):
        cls(3, padding=(1, 0))
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a pair"):
        cls("2")
    with pytest.raises(ValueError, match="stride must be a positive int"):
        cls(2, stride=0)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_pool_padding_at_most_half_the_kernel(cls):
    assert cls(2, padding=1).padding == 1 and cls((3, 3), padding=1).padding == 1
    with pytest.raises(ValueError, match="^pool padding must be at most half the kernel size$"):
        cls(3, padding=2)
    with pytest.raises(ValueError, match="^pool padding must be at most half the kernel size$"):
        cls(2, padding=2)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_one_by_one_pool_is_the_identity(dev, rng, cls):
    x = rng.standard_normal((2, 3, 4, 5))
    pool = cls(1).to(dev)
    numpy.testing.assert_array_equal(xnn.to_numpy(pool.forward(dev.asarray(x))), x)
    dy = rng.standard_normal(x.shape)
    numpy.testing.assert_array_equal(xnn.to_numpy(pool.backward(dev.asarray(dy))), dy)


def test_pool_stride_defaults_to_the_kernel_and_may_differ():
    assert MaxPool2d(3).stride == (3, 3) and AvgPool2d((2, 2)).stride == (2, 2)
    assert MaxPool2d(3, stride=1).stride == (1, 1) and MaxPool2d(3, ceil_mode=1).ceil_mode is True


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
def test_pools_keep_float32(dev, rng, cls, kw):
    x = dev.asarray(rng.standard_normal((1, 2, 5, 6)).astype(numpy.float32)[:, :, :4])
    pool = cls(**kw).to(dev)
    y = pool.forward(x)
    dx = pool.backward(dev.asarray(numpy.ones(y.shape, numpy.float32)))
    assert y.dtype == numpy.float32 and dx.dtype == numpy.float32


def test_pool_defaults_to_floor_mode_and_names_the_class_in_its_errors():
    assert MaxPool2d(2).ceil_mode is False and AvgPool2d(2).ceil_mode is False
    assert MaxPool2d(2).forward(numpy.zeros((1, 1, 5, 5))).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"^MaxPool2d kernel_size must be a positive int or a pair of them, got '2'$"):
        MaxPool2d("2")
    with pytest.raises(ValueError, match=r"^AvgPool2d stride must be"):
        AvgPool2d(2, stride=0)


@pytest.mark.parametrize("k", [(1, 2), (2, 1)])
def test_maxpool_fast_path_with_two_offsets(dev, rng, k):
    """A 1x2 (or 2x1) kernel that tiles the input: y is the maximum of just two slices."""
    x = rng.standard_normal((2, 3, 4, 6))
    y = xnn.to_numpy(MaxPool2d(k).to(dev).forward(dev.asarray(x)))
    want = x.reshape(2, 3, 4 // k[0], k[0], 6 // k[1], k[1]).max(axis=(3, 5))
    numpy.testing.assert_array_equal(y, want)


def test_maxpool_fast_path_tie_between_the_last_two_offsets_goes_to_the_first_of_them(dev):
    pool = MaxPool2d(2).to(dev)
    pool.forward(dev.asarray(numpy.array([[[[1.0, 2.0], [3.0, 3.0]]]])))
    dx = xnn.to_numpy(pool.backward(dev.asarray(numpy.array([[[[5.0]]]]))))
    numpy.testing.assert_array_equal(dx, [[[[0.0, 0.0], [5.0, 0.0]]]])


def test_floor_mode_remainder_gets_zero_gradient_whatever_fresh_memory_holds(monkeypatch, rng):
    """The fast path allocates dx uninitialised and zeroes only the rows and columns no window
    reads; poison fresh memory with NaN so a skipped zeroing cannot pass by luck."""
    real_empty_like = numpy.empty_like

    def poisoned(a, *args, **kw):
        out = real_empty_like(a, *args, **kw)
        out[...] = numpy.nan if out.dtype.kind == "f" else 1
        return out
    monkeypatch.setattr(numpy, "empty_like", poisoned)
    x = rng.standard_normal((2, 3, 7, 5)).astype(numpy.float32)
    pool = MaxPool2d(2)
    pool.forward(x)
    assert pool._x is not None                           # the fast path was taken
    dx = pool.backward(numpy.ones((2, 3, 3, 2), numpy.float32))
    assert not dx[:, :, 6:].any() and not dx[:, :, :, 4:].any()
    assert numpy.isfinite(dx).all() and dx.sum() == 2 * 3 * 3 * 2


@pytest.mark.parametrize("h,w,fast", [(8, 6, True), (7, 6, False), (8, 5, False), (7, 5, False)])
def test_ceil_mode_takes_the_fast_path_only_when_the_windows_divide_the_input(h, w, fast):
    """kernel == stride in ceil mode: whole windows (sizes divisible) are the side-by-side fast
    path (no winner array kept); a partial last window needs the general path."""
    pool = MaxPool2d(2, ceil_mode=True, device=xnn.device("cpu"))
    pool.forward(numpy.zeros((1, 1, h, w), numpy.float32))
    assert (pool._winner is None) == fast
