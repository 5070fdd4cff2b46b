"""Compiled CPU kernels for the NumPy backend (Numba): the Winograd tile transforms of F(2x2), F(4x4)
and F(6x6), the element-wise layers ReLU and max pooling (side-by-side windows, also fused as ReLU
then max pool), and SGD's momentum step.

The generic Winograd code (:class:`xnn.backends.base.Device`) gathers every alpha x alpha
input tile into a contiguous copy and applies the transforms as GEMMs with Kronecker
matrices: kron(B^T, B^T) is 36 x 36 for F(4x4, 3x3), so each tile channel costs 1296
multiply-adds and three passes over memory (gather, GEMM, scatter).  Here each transform
is done separably, rows then columns, straight from the padded input into V and from the
products straight into the output:

    input   V[i*alpha + j, p, c] = (B^T d_p B)[i, j]          d_p the tile p of channel c
    output  y[tile p's m x m block, o] = (A^T M_p A) + bias[o]  M_p[k] = M[k, p, o]

with the additions of B^T's and A^T's few non-zero entries written out (F(4x4): about 100
operations a tile channel instead of 1296; F(6x6), alpha = 8, pairs B^T's rows into even and
odd parts: 38 operations for each 8 values a row or column pass transforms, where a dense 8 x 8
product takes 64 multiply-adds), channels innermost (contiguous in the
channels-last layout, so the compiler vectorises over them).  The input kernel reads each
tile through row and column maps of the padded block (zeros and mirrored pixels included),
so a layer's input needs no padded copy; it first gathers the tile into a small buffer,
which cost nothing measurable against reading it in place and is less to compile.  Same
maths, other rounding: the tests compare every path with the generic one and with float64.

ReLU and max pooling are memory-bound: NumPy's ufuncs pass over memory once per operation (the
pool's backward, per window offset, compares, masks, combines and multiplies: about 20 passes),
where a compiled loop reads each input and writes each output once.  Pooling runs over
(N, H, W, C)-indexed views with the channels innermost (:func:`channels_inner`); ReLU over 1-D
views in memory order.  Their results equal the generic ``xp`` code's bit for bit (NaNs and
signed zeros included: the same comparisons, and a gradient that does not pass is dy * 0, not 0).
SGD's momentum step likewise: one pass where NumPy makes eight (the same float operations in the
same order, so the same bits).

Each kernel releases the GIL (``nogil``), so the backend's ``parallel_map`` workers run
them side by side, as they run the GEMMs.  Compiled on first use per dtype (about 7 s for
float32 on the 2-core EPYC) and cached on disk by Numba (``cache=True``: next to this file, or
in a user-wide cache directory where that is not writable), so later runs load them in
about 0.2 s.  Constants come in as an array of the data's dtype
(``_constants``): a Python literal would promote float32 arithmetic to float64.
"""
from __future__ import annotations

import numpy

try:
    import numba
except ImportError:         # pragma: no cover - numba is a dependency; this keeps the generic path usable
    numba = None

_CONSTANTS: dict = {}


#: the transforms' constants, all exact in float32: F(4x4) uses the first five, F(6x6) the rest
CONSTANTS = (2, 4, 5, 8, 0, 5.25, 4.25, 0.25, 1.25, 0.5, 2.5, 16, 32, 0.125, 0.0625, 0.03125)


def _constants(dtype):
    """:data:`CONSTANTS` as ``dtype``, made once per dtype."""
    key = numpy.dtype(dtype).str
    k = _CONSTANTS.get(key)
    if k is None:
        k = _CONSTANTS[key] = numpy.array(CONSTANTS, dtype=dtype)
    return k


def available() -> bool:
    """True when Numba imported (the compiled kernels can be used)."""
    return numba is not None


def _jit(fn):
    """numba.njit(nogil=True, cache=True), or without the disk cache where Numba finds nowhere to
    write it (a read-only install and cache directory): compiled on every first use then."""
    if numba is None:
        return fn
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:        # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)


# ---------------------------------------------------------------- F(4x4, 3x3), alpha = 6
# B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
#        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
# A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
@_jit
def _tile4(d, v, p, t, k):
    """V[:, p] = B^T d B of one 6 x 6 x C tile d."""
    k2, k4, k5 = k[0], k[1], k[2]
    for j in range(6):                      # t = B^T d (over the tile's rows)
        for c in range(d.shape[2]):
            d0, d1, d2 = d[0, j, c], d[1, j, c], d[2, j, c]
            d3, d4, d5 = d[3, j, c], d[4, j, c], d[5, j, c]
            t[0, j, c] = k4 * d0 - k5 * d2 + d4
            t[1, j, c] = d3 + d4 - k4 * (d1 + d2)
            t[2, j, c] = k4 * (d1 - d2) - d3 + d4
            t[3, j, c] = k2 * (d3 - d1) - d2 + d4
            t[4, j, c] = k2 * (d1 - d3) - d2 + d4
            t[5, j, c] = k4 * d1 - k5 * d3 + d5
    for i in range(6):                      # V = t B (over its columns)
        q = 6 * i
        for c in range(d.shape[2]):
            e0, e1, e2 = t[i, 0, c], t[i, 1, c], t[i, 2, c]
            e3, e4, e5 = t[i, 3, c], t[i, 4, c], t[i, 5, c]
            v[q, p, c] = k4 * e0 - k5 * e2 + e4
            v[q + 1, p, c] = e3 + e4 - k4 * (e1 + e2)
            v[q + 2, p, c] = k4 * (e1 - e2) - e3 + e4
            v[q + 3, p, c] = k2 * (e3 - e1) - e2 + e4
            v[q + 4, p, c] = k2 * (e1 - e3) - e2 + e4
            v[q + 5, p, c] = k4 * e1 - k5 * e3 + e5


@_jit
def _input(x, rows, cols, v, m, tr, tw, k):
    """Every tile of the block whose padded rows and columns come from ``rows``/``cols`` of x."""
    alpha = m + 2
    nb, channels = x.shape[0], x.shape[3]
    zero = k[4]
    t = numpy.empty((alpha, alpha, channels), x.dtype)
    d = numpy.empty((alpha, alpha, channels), x.dtype)
    for n in range(nb):
        for a in range(tr):
            r0 = m * a
            for b in range(tw):
                c0 = m * b
                for i in range(alpha):      # the tile, zeros and mirrored pixels at a border
                    ri = rows[r0 + i]
                    for j in range(alpha):
                        cj = cols[c0 + j]
                        if ri < 0 or cj < 0:
                            for c in range(channels):
                                d[i, j, c] = zero
                        else:
                            for c in range(channels):
                                d[i, j, c] = x[n, ri, cj, c]
                p = (n * tr + a) * tw + b
                if m == 4:
                    _tile4(d, v, p, t, k)
                elif m == 6:
                    _tile6(d, v, p, t, k)
                else:
                    _tile2(d, v, p, t)


@_jit
def _output4(mm, bias, has_bias, out, tr, tw, k):
    channels = mm.shape[2]
    rows, cols = out.shape[1], out.shape[2]
    k2, k4, k8, zero = k[0], k[1], k[3], k[4]
    t = numpy.empty((4, 6, channels), mm.dtype)
    for n in range(out.shape[0]):
        for a in range(tr):
            for b in range(tw):
                p = (n * tr + a) * tw + b
                for j in range(6):                  # t = A^T M (over the tile's rows)
                    for o in range(channels):
                        m0, m1, m2 = mm[j, p, o], mm[6 + j, p, o], mm[12 + j, p, o]
                        m3, m4, m5 = mm[18 + j, p, o], mm[24 + j, p, o], mm[30 + j, p, o]
                        s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                        t[0, j, o] = m0 + s12 + s34
                        t[1, j, o] = d12 + k2 * d34
                        t[2, j, o] = s12 + k4 * s34
                        t[3, j, o] = d12 + k8 * d34 + m5
                col = 4 * b
                width = min(4, cols - col)
                if width <= 0:
                    continue
                for i in range(4):                  # y = t A (over its columns), cut to the output
                    row = 4 * a + i
                    if row >= rows:
                        break
                    for o in range(channels):
                        e0, e1, e2 = t[i, 0, o], t[i, 1, o], t[i, 2, o]
                        e3, e4, e5 = t[i, 3, o], t[i, 4, o], t[i, 5, o]
                        s12, d12, s34, d34 = e1 + e2, e1 - e2, e3 + e4, e3 - e4
                        bo = bias[o] if has_bias else zero
                        out[n, row, col, o] = e0 + s12 + s34 + bo
                        if width == 4:
                            out[n, row, col + 1, o] = d12 + k2 * d34 + bo
                            out[n, row, col + 2, o] = s12 + k4 * s34 + bo
                            out[n, row, col + 3, o] = d12 + k8 * d34 + e5 + bo
                        else:
                            if width > 1:
                                out[n, row, col + 1, o] = d12 + k2 * d34 + bo
                            if width > 2:
                                out[n, row, col + 2, o] = s12 + k4 * s34 + bo


# ---------------------------------------------------------------- F(6x6, 3x3), alpha = 8
# Points 0, 1, -1, 2, -2, 1/2, -1/2 (and infinity); the rows of B^T, paired as even and odd parts:
#   [1, 0, -21/4, 0, 21/4, 0, -1, 0]                       v0
#   [0, +-1, 1, -+17/4, -17/4, +-1, 1, 0]                  v1, v2
#   [0, +-1/2, 1/4, -+5/2, -5/4, +-2, 1, 0]                v3, v4
#   [0, +-2, 4, -+5/2, -5, +-1/2, 1, 0]                    v5, v6
#   [0, -1, 0, 21/4, 0, -21/4, 0, 1]                       v7
# A^T[k] = [0^k, 1, (-1)^k, 2^k, (-2)^k, (1/2)^k, (-1/2)^k, k == 5] for k = 0 .. 5
@_jit
def _tile6(d, v, p, t, k):
    """V[:, p] = B^T d B of one 8 x 8 x C tile d."""
    k2, k4, k5 = k[0], k[1], k[2]
    k525, k425, k025, k125, k05, k25 = k[5], k[6], k[7], k[8], k[9], k[10]
    for j in range(8):                      # t = B^T d (over the tile's rows)
        for c in range(d.shape[2]):
            d0, d1, d2, d3 = d[0, j, c], d[1, j, c], d[2, j, c], d[3, j, c]
            d4, d5, d6, d7 = d[4, j, c], d[5, j, c], d[6, j, c], d[7, j, c]
            t[0, j, c] = d0 - d6 + k525 * (d4 - d2)
            even, odd = d2 + d6 - k425 * d4, d1 + d5 - k425 * d3
            t[1, j, c] = even + odd
            t[2, j, c] = even - odd
            even, odd = k025 * d2 - k125 * d4 + d6, k05 * d1 - k25 * d3 + k2 * d5
            t[3, j, c] = even + odd
            t[4, j, c] = even - odd
            even, odd = k4 * d2 - k5 * d4 + d6, k2 * d1 - k25 * d3 + k05 * d5
            t[5, j, c] = even + odd
            t[6, j, c] = even - odd
            t[7, j, c] = d7 - d1 + k525 * (d3 - d5)
    for i in range(8):                      # V = t B (over its columns)
        q = 8 * i
        for c in range(d.shape[2]):
            e0, e1, e2, e3 = t[i, 0, c], t[i, 1, c], t[i, 2, c], t[i, 3, c]
            e4, e5, e6, e7 = t[i, 4, c], t[i, 5, c], t[i, 6, c], t[i, 7, c]
            v[q, p, c] = e0 - e6 + k525 * (e4 - e2)
            even, odd = e2 + e6 - k425 * e4, e1 + e5 - k425 * e3
            v[q + 1, p, c] = even + odd
            v[q + 2, p, c] = even - odd
            even, odd = k025 * e2 - k125 * e4 + e6, k05 * e1 - k25 * e3 + k2 * e5
            v[q + 3, p, c] = even + odd
            v[q + 4, p, c] = even - odd
            even, odd = k4 * e2 - k5 * e4 + e6, k2 * e1 - k25 * e3 + k05 * e5
            v[q + 5, p, c] = even + odd
            v[q + 6, p, c] = even - odd
            v[q + 7, p, c] = e7 - e1 + k525 * (e3 - e5)


@_jit
def _output6(mm, bias, has_bias, out, tr, tw, k):
    channels = mm.shape[2]
    rows, cols = out.shape[1], out.shape[2]
    k2, k4, k8, zero = k[0], k[1], k[3], k[4]
    k16, k32, k05, k025, k0125, k00625, k003125 = k[11], k[12], k[9], k[7], k[13], k[14], k[15]
    t = numpy.empty((6, 8, channels), mm.dtype)
    y = numpy.empty(6, mm.dtype)
    for n in range(out.shape[0]):
        for a in range(tr):
            for b in range(tw):
                p = (n * tr + a) * tw + b
                for j in range(8):                  # t = A^T M (over the tile's rows)
                    for o in range(channels):
                        m0, m1, m2, m3 = mm[j, p, o], mm[8 + j, p, o], mm[16 + j, p, o], mm[24 + j, p, o]
                        m4, m5, m6, m7 = mm[32 + j, p, o], mm[40 + j, p, o], mm[48 + j, p, o], mm[56 + j, p, o]
                        s1, d1, s2, d2, s3, d3 = m1 + m2, m1 - m2, m3 + m4, m3 - m4, m5 + m6, m5 - m6
                        t[0, j, o] = m0 + s1 + s2 + s3
                        t[1, j, o] = d1 + k2 * d2 + k05 * d3
                        t[2, j, o] = s1 + k4 * s2 + k025 * s3
                        t[3, j, o] = d1 + k8 * d2 + k0125 * d3
                        t[4, j, o] = s1 + k16 * s2 + k00625 * s3
                        t[5, j, o] = d1 + k32 * d2 + k003125 * d3 + m7
                col = 6 * b
                width = min(6, cols - col)
                if width <= 0:
                    continue
                for i in range(6):                  # y = t A (over its columns), cut to the output
                    row = 6 * a + i
                    if row >= rows:
                        break
                    for o in range(channels):
                        e0, e1, e2, e3 = t[i, 0, o], t[i, 1, o], t[i, 2, o], t[i, 3, o]
                        e4, e5, e6, e7 = t[i, 4, o], t[i, 5, o], t[i, 6, o], t[i, 7, o]
                        s1, d1, s2, d2, s3, d3 = e1 + e2, e1 - e2, e3 + e4, e3 - e4, e5 + e6, e5 - e6
                        bo = bias[o] if has_bias else zero
                        if width == 6:
                            out[n, row, col, o] = e0 + s1 + s2 + s3 + bo
                            out[n, row, col + 1, o] = d1 + k2 * d2 + k05 * d3 + bo
                            out[n, row, col + 2, o] = s1 + k4 * s2 + k025 * s3 + bo
                            out[n, row, col + 3, o] = d1 + k8 * d2 + k0125 * d3 + bo
                            out[n, row, col + 4, o] = s1 + k16 * s2 + k00625 * s3 + bo
                            out[n, row, col + 5, o] = d1 + k32 * d2 + k003125 * d3 + e7 + bo
                        else:
                            y[0] = e0 + s1 + s2 + s3
                            y[1] = d1 + k2 * d2 + k05 * d3
                            y[2] = s1 + k4 * s2 + k025 * s3
                            y[3] = d1 + k8 * d2 + k0125 * d3
                            y[4] = s1 + k16 * s2 + k00625 * s3
                            for q in range(width):
                                out[n, row, col + q, o] = y[q] + bo


# ---------------------------------------------------------------- F(2x2, 3x3), alpha = 4
# B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]];  A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
@_jit
def _tile2(d, v, p, t):
    """V[:, p] = B^T d B of one 4 x 4 x C tile d."""
    for j in range(4):
        for c in range(d.shape[2]):
            d0, d1, d2, d3 = d[0, j, c], d[1, j, c], d[2, j, c], d[3, j, c]
            t[0, j, c] = d0 - d2
            t[1, j, c] = d1 + d2
            t[2, j, c] = d2 - d1
            t[3, j, c] = d1 - d3
    for i in range(4):
        q = 4 * i
        for c in range(d.shape[2]):
            e0, e1, e2, e3 = t[i, 0, c], t[i, 1, c], t[i, 2, c], t[i, 3, c]
            v[q, p, c] = e0 - e2
            v[q + 1, p, c] = e1 + e2
            v[q + 2, p, c] = e2 - e1
            v[q + 3, p, c] = e1 - e3


@_jit
def _output2(mm, bias, has_bias, out, tr, tw, k):
    channels = mm.shape[2]
    rows, cols = out.shape[1], out.shape[2]
    zero = k[4]
    t = numpy.empty((2, 4, channels), mm.dtype)
    for n in range(out.shape[0]):
        for a in range(tr):
            for b in range(tw):
                p = (n * tr + a) * tw + b
                for j in range(4):
                    for o in range(channels):
                        m0, m1, m2, m3 = mm[j, p, o], mm[4 + j, p, o], mm[8 + j, p, o], mm[12 + j, p, o]
                        t[0, j, o] = m0 + m1 + m2
                        t[1, j, o] = m1 - m2 - m3
                col = 2 * b
                if col >= cols:
                    continue
                for i in range(2):
                    row = 2 * a + i
                    if row >= rows:
                        break
                    for o in range(channels):
                        bo = bias[o] if has_bias else zero
                        out[n, row, col, o] = t[i, 0, o] + t[i, 1, o] + t[i, 2, o] + bo
                        if col + 1 < cols:
                            out[n, row, col + 1, o] = t[i, 1, o] - t[i, 2, o] - t[i, 3, o] + bo


_OUTPUT = {6: _output6, 4: _output4, 2: _output2}
#: the dtypes the kernels are compiled for
DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def compiled_for(dtype) -> bool:
    """True when the kernels can run on ``dtype`` arrays (Numba present, float32 or float64)."""
    return numba is not None and numpy.dtype(dtype) in DTYPES


# ---------------------------------------------------------------- ReLU and max pooling
@_jit
def _relu(x, y, mask, k):
    """y = maximum(x, 0) as NumPy's (x where x > 0 or x is NaN, else 0: -0.0 gives +0.0); mask = x > 0."""
    zero = k[4]
    for i in range(x.shape[0]):
        v = x[i]
        mask[i] = v > zero
        y[i] = v if (v > zero or v != v) else zero


@_jit
def _relu_backward(dy, mask, dx, k):
    """dx = dy * mask: dy where the mask is set, else dy * 0 (a NaN or inf dy stays NaN)."""
    zero = k[4]
    for i in range(dy.shape[0]):
        d = dy[i]
        dx[i] = d if mask[i] else d * zero


@_jit
def _max_pool(x, y, kh, kw, i0, i1):
    """y[n, i, j, c] (rows i0 <= i < i1) = the maximum of x over rows i*kh.., columns j*kw.., folded
    in window order as NumPy's maximum(m, v) (m where m > v or m is NaN, else v)."""
    for n in range(y.shape[0]):
        for i in range(i0, i1):
            for j in range(y.shape[2]):
                for c in range(y.shape[3]):
                    y[n, i, j, c] = x[n, i * kh, j * kw, c]
                for a in range(kh):
                    for b in range(kw):
                        if a + b == 0:
                            continue
                        for c in range(y.shape[3]):
                            m, v = y[n, i, j, c], x[n, i * kh + a, j * kw + b, c]
                            if not (m > v or m != m):
                                y[n, i, j, c] = v


@_jit
def _max_pool_backward(x, y, dy, dx, kh, kw, i0, i1, k):
    """dx over the windows of output rows i0 <= i < i1: each window's dy goes to its first input (in
    window order) equal to y or NaN; the window's other inputs get dy * 0."""
    zero = k[4]
    taken = numpy.empty(y.shape[3], numpy.bool_)
    for n in range(y.shape[0]):
        for i in range(i0, i1):
            for j in range(y.shape[2]):
                taken[:] = False
                for a in range(kh):
                    for b in range(kw):
                        for c in range(y.shape[3]):
                            v, d = x[n, i * kh + a, j * kw + b, c], dy[n, i, j, c]
                            hit = (v == y[n, i, j, c] or v != v) and not taken[c]
                            taken[c] = taken[c] or hit
                            dx[n, i * kh + a, j * kw + b, c] = d if hit else d * zero


@_jit
def _relu_max_pool(x, y, win, kh, kw, i0, i1, k):
    """ReLU then max pooling, fused: y[n, i, j, c] = the pool of maximum(x, 0) over the window (NaN
    wins, folded in window order as :func:`_max_pool`); win = the window offset of the first input
    equal to y where y > 0, else 255 (no gradient passes)."""
    zero = k[4]
    for n in range(y.shape[0]):
        for i in range(i0, i1):
            for j in range(y.shape[2]):
                for c in range(y.shape[3]):
                    y[n, i, j, c] = x[n, i * kh, j * kw, c]
                    win[n, i, j, c] = 0
                for q in range(1, kh * kw):
                    for c in range(y.shape[3]):
                        m, v = y[n, i, j, c], x[n, i * kh + q // kw, j * kw + q % kw, c]
                        if not (m > v or m != m):
                            y[n, i, j, c] = v
                            if v > m or v != v:         # a tie keeps the first
                                win[n, i, j, c] = q
                for c in range(y.shape[3]):             # ReLU after the pool (the two commute)
                    m = y[n, i, j, c]
                    if not (m > zero):                  # not > 0: +0 (a NaN stays), no gradient
                        win[n, i, j, c] = 255
                        if m == m:
                            y[n, i, j, c] = zero


@_jit
def _relu_max_pool_backward(dy, win, dx, kh, kw, i0, i1, k):
    """dx over the windows of output rows i0 <= i < i1: dy at the window offset win, dy * 0 elsewhere."""
    zero = k[4]
    for n in range(dy.shape[0]):
        for i in range(i0, i1):
            for j in range(dy.shape[2]):
                for q in range(kh * kw):
                    for c in range(dy.shape[3]):
                        d = dy[n, i, j, c]
                        dx[n, i * kh + q // kw, j * kw + q % kw, c] = d if win[n, i, j, c] == q else d * zero


def channels_inner(*arrays):
    """(N, H, W, C)-indexed C-contiguous views of 4-D (N, C, H, W) arrays that share one memory order,
    or None: channels-last memory (a conv's output) as its transposed view, NCHW memory as
    (N*C, H, W, 1).  The pooling kernels' innermost loop then runs over contiguous memory."""
    if all(a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous for a in arrays):
        return [a.transpose(0, 2, 3, 1) for a in arrays]
    if all(a.ndim == 4 and a.flags.c_contiguous for a in arrays):
        return [a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3], 1) for a in arrays]
    return None


def elementwise_ok(dtype, *arrays) -> bool:
    """True when the element-wise kernels take these arrays: float32 or float64 data, every array 1-D
    and contiguous."""
    return (compiled_for(dtype)
            and all(a.ndim == 1 and a.flags.c_contiguous for a in arrays))


def relu(x, y, mask):
    """y = maximum(x, 0) and mask = x > 0 of 1-D contiguous arrays (:func:`elementwise_ok`)."""
    _relu(x, y, mask, _constants(x.dtype))


def relu_backward(dy, mask, dx):
    """dx = dy * mask of 1-D contiguous arrays."""
    _relu_backward(dy, mask, dx, _constants(dy.dtype))


def max_pool(x, y, kh: int, kw: int, rows):
    """Output rows [rows[0], rows[1]) of a max pool over side-by-side kh x kw windows, on the
    (N, H, W, C) views of :func:`channels_inner`."""
    _max_pool(x, y, kh, kw, rows[0], rows[1])


def max_pool_backward(x, y, dy, dx, kh: int, kw: int, rows):
    """dx over the windows of output rows [rows[0], rows[1]), (N, H, W, C) views as in :func:`max_pool`."""
    _max_pool_backward(x, y, dy, dx, kh, kw, rows[0], rows[1], _constants(dy.dtype))


def relu_max_pool(x, y, win, kh: int, kw: int, rows):
    """ReLU then a max pool over side-by-side windows, output rows [rows[0], rows[1]), on (N, H, W, C)
    views (:func:`channels_inner`); ``win`` (uint8, y's view) gets each window's passing offset."""
    _relu_max_pool(x, y, win, kh, kw, rows[0], rows[1], _constants(x.dtype))


def relu_max_pool_backward(dy, win, dx, kh: int, kw: int, rows):
    """dx over the windows of output rows [rows[0], rows[1]) of :func:`relu_max_pool`."""
    _relu_max_pool_backward(dy, win, dx, kh, kw, rows[0], rows[1], _constants(dy.dtype))


def supports(m: int, dtype) -> bool:
    """True when a compiled kernel exists for F(m x m, 3 x 3) on ``dtype`` arrays."""
    return m in _OUTPUT and compiled_for(dtype)


def winograd_input(x, m: int, tr: int, tw: int, rows=None, cols=None):
    """V (alpha^2, P, C), P = N * tr * tw tiles, of a padded block.

    Without ``rows``/``cols``, x (N, >= tr*m + 2, >= tw*m + 2, C) is the padded block itself.
    With them, x is the unpadded input and padded row i (column j) of the block is x's row
    rows[i] (column cols[j]), -1 for a zero (:func:`xnn.layers.padding.padded_index`).
    """
    alpha = m + 2
    if rows is None:
        rows = numpy.arange(tr * m + 2)
        cols = numpy.arange(tw * m + 2)
        if x.ndim != 4 or x.shape[1] < tr * m + 2 or x.shape[2] < tw * m + 2:
            raise ValueError(f"winograd_input: a block of {tr} x {tw} tiles of F({m}x{m}) needs "
                             f"{tr * m + 2} x {tw * m + 2} padded pixels, got {x.shape}")
    elif (len(rows) < tr * m + 2 or len(cols) < tw * m + 2 or max(rows.max(), 0) >= x.shape[1]
          or max(cols.max(), 0) >= x.shape[2]):
        raise ValueError(f"winograd_input: row and column maps ({len(rows)}, {len(cols)}) do not "
                         f"cover {tr} x {tw} tiles of F({m}x{m}) inside an input of {x.shape}")
    v = numpy.empty((alpha * alpha, x.shape[0] * tr * tw, x.shape[3]), dtype=x.dtype)
    _input(x, numpy.asarray(rows, numpy.int64), numpy.asarray(cols, numpy.int64), v, m, tr, tw,
           _constants(x.dtype))
    return v


def winograd_output(mm, m: int, bias, out, tr: int, tw: int):
    """Write A^T M A (+ bias) of the products ``mm`` (alpha^2, P, O) into ``out`` (N, rows, cols, O)."""
    alpha, (n, rows, cols, o) = m + 2, out.shape
    if mm.shape != (alpha * alpha, n * tr * tw, o) or rows > tr * m or cols > tw * m:
        raise ValueError(f"winograd_output: products {mm.shape} do not fit {tr} x {tw} tiles of "
                         f"F({m}x{m}) into an output of {out.shape}")
    k = _constants(mm.dtype)
    has_bias = bias is not None
    _OUTPUT[m](mm, bias if has_bias else k, has_bias, out, tr, tw, k)


# ---------------------------------------------------------------- SGD with momentum
@_jit
def _sgd_momentum(p, g, v, k, decay, nesterov):
    """In place on 1-D p and v: d = g (+ k[2] p when decay), v = k[1] v + d, p -= k[0] (d + k[1] v
    when nesterov, else v); k = (lr, momentum, weight decay) in the data's dtype."""
    lr, mu, wd = k[0], k[1], k[2]
    for i in range(p.shape[0]):
        d = g[i] + wd * p[i] if decay else g[i]
        vi = mu * v[i] + d
        v[i] = vi
        p[i] = p[i] - lr * (d + mu * vi if nesterov else vi)


def sgd_momentum(p, g, v, lr: float, momentum: float, weight_decay: float, nesterov: bool):
    """SGD's momentum step (:meth:`xnn.backends.base.Device.sgd_momentum`) on 1-D contiguous arrays
    (:func:`elementwise_ok`)."""
    k = numpy.array((lr, momentum, weight_decay), dtype=p.dtype)
    _sgd_momentum(p, g, v, k, bool(weight_decay), bool(nesterov))
