"""The surface every backend offers, and the kernels written once against ``xp``.

A :class:`Device` bundles an array namespace (``numpy`` or ``cupy``) with the few
operations that are not plain ``xp`` calls: moving arrays to and from the host,
a seeded random generator, synchronisation, the windowed-view kernels that
convolution needs (im2col / col2im on channels-last data) and the real FFTs of the
FFT convolution.

The generic kernels below use only ``xp`` functions that NumPy and CuPy share, so
a backend overrides one only where it has a faster way of its own.
"""
from __future__ import annotations

import time

import numpy

from ..errors import DeviceMismatchError


class Device:
    """One place arrays live and are computed on. Subclasses set ``name`` and ``xp``."""

    name = "abstract"
    #: "cpu" or "gpu": what kind of processor runs the work (runners choose by this)
    kind = "abstract"
    xp = None
    array_type: type = object
    #: how many chunks ``parallel_map`` runs at once (work is split into at least this many)
    workers = 1
    #: True when a fresh element-wise result keeps its inputs' memory order (NumPy's
    #: order="K"); False when it is always C-ordered (CuPy).  Layers that must keep
    #: a channels-last layout on every backend write into ``xp.empty_like(x)``.
    keeps_layout = True
    #: upper bound on one convolution chunk's temporaries (bytes); None: the CPU rule
    #: in :func:`xnn.layers.conv_algorithms.chunk_limit`
    chunk_bytes = None

    # ----------------------------------------------------------------- arrays
    def owns(self, array) -> bool:
        """True when ``array`` is an array of this device."""
        return isinstance(array, self.array_type)

    def check(self, array, what: str = "input") -> None:
        """Raise :class:`DeviceMismatchError` unless ``array`` lives on this device."""
        if not self.owns(array):
            raise DeviceMismatchError(
                f"{what} is a {type(array).__module__}.{type(array).__name__} but this "
                f"operation runs on the {self.name} device; move it explicitly with "
                f"xnn.device('{self.name}').asarray(...) or xnn.to_numpy(...)")

    def asarray(self, host, dtype=None):
        """Copy a host (NumPy) array, scalar or list to this device; arrays already here pass through."""
        raise NotImplementedError

    def to_numpy(self, array) -> numpy.ndarray:
        """A NumPy copy (or the array itself on the CPU)."""
        raise NotImplementedError

    def rng(self, seed):
        """A seeded random generator of this device's namespace."""
        return self.xp.random.default_rng(seed)

    def synchronize(self) -> None:
        """Wait until queued work is done (a no-op on the CPU)."""

    def elapsed(self, fn):
        """(seconds, fn()): the wall time of fn with the device synchronised around it."""
        self.synchronize()
        t0 = time.perf_counter()
        result = fn()
        self.synchronize()
        return time.perf_counter() - t0, result

    def memory_available(self) -> int | None:
        """Bytes free for new arrays on this device (None if unknown)."""
        return None

    def as_strided(self, x, shape, strides):
        raise NotImplementedError

    def __repr__(self):
        return f"xnn.device('{self.name}')"

    def parallel_map(self, fn, items) -> list:
        """[fn(item) for item in items]; a backend may run the calls concurrently.

        ``fn`` must only write disjoint parts of shared outputs.  The generic version
        (used by CuPy, whose kernels are asynchronous anyway) runs them in order.
        """
        return [fn(item) for item in items]

    # ------------------------------------------------------- element-wise layers
    def relu(self, x, y, mask):
        """y = maximum(x, 0) (a NaN stays NaN) and mask = x > 0, written into ``y`` and ``mask``
        (arrays of one shape).  Generic version: two ufuncs."""
        self.xp.greater(x, 0, out=mask)
        self.xp.maximum(x, 0, out=y)

    def relu_backward(self, dy, mask, dx):
        """dx = dy * mask, written into ``dx``."""
        self.xp.multiply(dy, mask, out=dx)

    def max_pool(self, x, y, kh: int, kw: int, rows):
        """Output rows [i0, i1) = ``rows`` of a max pool over side-by-side windows (stride = kernel,
        no padding): y[n, c, i, j] = the maximum of x[n, c, i*kh:(i+1)*kh, j*kw:(j+1)*kw], folded
        in window order by ``xp.maximum`` (a NaN wins).  x (N, C, H, W), y (N, C, Ho, Wo), any
        memory order; rows and columns of x past Ho*kh, Wo*kw are not read."""
        i0, i1 = rows
        views = self._pool_offsets(x, y.shape[3], kh, kw, rows)
        out = y[:, :, i0:i1]
        if len(views) == 1:
            out[...] = views[0]
            return
        self.xp.maximum(views[0], views[1], out=out)
        for v in views[2:]:
            self.xp.maximum(out, v, out=out)

    def max_pool_backward(self, x, y, dy, dx, kh: int, kw: int, rows):
        """The input gradient over the windows of output rows [i0, i1) of :meth:`max_pool`: each
        window's dy goes to its first input (in window order) equal to y or NaN, the window's other
        inputs get dy * 0.  dx (x's shape): rows and columns past Ho*kh, Wo*kw are not written.
        Generic version: per window offset, a comparison, a mask of what is not yet taken, and a
        product."""
        xp = self.xp
        i0, i1 = rows
        xs = self._pool_offsets(x, y.shape[3], kh, kw, rows)
        ds = self._pool_offsets(dx, y.shape[3], kh, kw, rows)
        y, dy = y[:, :, i0:i1], dy[:, :, i0:i1]
        taken, nan = None, xp.empty_like(y, dtype=bool)
        for k, (v, d) in enumerate(zip(xs, ds)):
            hit = xp.equal(v, y, out=xp.empty_like(y, dtype=bool))
            hit |= xp.isnan(v, out=nan)          # NaN != NaN: a NaN window's dy goes to a NaN in it
            if taken is None:
                taken = hit
            else:
                xp.greater(hit, taken, out=hit)  # hit and not taken, in one pass
                if k + 1 < len(xs):
                    taken |= hit
            xp.multiply(dy, hit, out=d)

    def relu_max_pool(self, x, y, winner, kh: int, kw: int, rows):
        """ReLU then :meth:`max_pool`, fused (output rows [i0, i1) = ``rows``): y = the window's
        maximum of maximum(x, 0) (the two commute: pooled first, then ReLU'd), and ``winner``
        (uint8, y's shape) = the window offset a*kw + b of the first input equal to y where y > 0,
        else 255: the offset the gradient of ReLU then max pool passes to, if any.  Generic
        version: the pool, a ReLU of its output, a comparison per offset."""
        xp = self.xp
        i0, i1 = rows
        self.max_pool(x, y, kh, kw, rows)
        out, win = y[:, :, i0:i1], winner[:, :, i0:i1]
        passes = xp.greater(out, 0)
        xp.maximum(out, 0, out=out)
        win[...] = 255
        for q, v in enumerate(self._pool_offsets(x, y.shape[3], kh, kw, rows)):
            hit = xp.equal(v, out)
            hit &= passes
            xp.copyto(win, q, where=hit)
            passes &= ~hit

    def relu_max_pool_backward(self, dy, winner, dx, kh: int, kw: int, rows):
        """The input gradient over the windows of output rows [i0, i1) of :meth:`relu_max_pool`:
        dy at each window's ``winner`` offset, dy * 0 at its other inputs (as ReLU's and the max
        pool's backward give, bit for bit).  dx (the pooled input's shape): rows and columns
        past Ho*kh, Wo*kw are not written."""
        i0, i1 = rows
        win, d = winner[:, :, i0:i1], dy[:, :, i0:i1]
        for q, view in enumerate(self._pool_offsets(dx, dy.shape[3], kh, kw, rows)):
            self.xp.multiply(d, win == q, out=view)

    @staticmethod
    def _pool_offsets(x, wo: int, kh: int, kw: int, rows):
        """The strided views of x that window offset (a, b) reads for output rows [i0, i1), in
        window order."""
        i0, i1 = rows
        return [x[:, :, i0 * kh + a:i1 * kh:kh, b:wo * kw:kw] for a in range(kh) for b in range(kw)]

    # ------------------------------------------------------- optimisers
    def sgd_momentum(self, p, g, v, lr: float, momentum: float, weight_decay: float, nesterov: bool):
        """One step of SGD with momentum, in place on the parameter ``p`` and its velocity ``v``:

            d = g + weight_decay * p          (d = g when weight_decay is 0)
            v = momentum * v + d
            p = p - lr * (d + momentum * v)   (nesterov; else p - lr * v)

        p, g and v have one shape and dtype; the scalars act in that dtype.  Generic version:
        the xp operations, a pass over memory (and a temporary) each."""
        if weight_decay:
            g = g + weight_decay * p
        v *= momentum
        v += g
        g = g + momentum * v if nesterov else v
        p -= lr * g

    # ------------------------------------------------------- conv kernels
    def windows(self, x, kh: int, kw: int, sh: int, sw: int):
        """Sliding windows of a channels-last array as a view, no copy.

        x: (N, H, W, C), any strides.  Returns (N, Ho, Wo, kh, kw, C) with
        ``out[n, i, j, a, b, c] = x[n, i*sh + a, j*sw + b, c]``.
        """
        n, h, w, c = x.shape
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        s_n, s_h, s_w, s_c = x.strides
        return self.as_strided(x, (n, ho, wo, kh, kw, c),
                               (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))

    def im2col(self, x, kh: int, kw: int, sh: int, sw: int):
        """Column matrix of a channels-last array, channels innermost.

        x: (N, H, W, C) already padded.  Returns a C-contiguous
        (N*Ho*Wo, kh*kw*C) matrix whose row (n, i, j) is the flattened window
        (a, b, c); one GEMM with a (kh*kw*C, O) weight matrix is the convolution.
        """
        win = self.windows(x, kh, kw, sh, sw)
        n, ho, wo = win.shape[:3]
        return self.xp.ascontiguousarray(win).reshape(n * ho * wo, kh * kw * x.shape[3])

    def im2col_transposed(self, x, kh: int, kw: int, sh: int, sw: int):
        """``im2col(x).T`` as a C-contiguous (kh*kw*C, N*Ho*Wo) matrix: one row per tap.

        Row (a, b, c) is channel c of x shifted by (a, b): the same windows copied with the
        output pixels innermost, so each copy runs along whole output rows.  For few channels
        this is far cheaper than im2col's copy, whose innermost run is C values (MNIST's conv1,
        C = 1: 0.06 against 0.38 ms on the AVX-512 EPYC; VGG's conv1_1 at 512 px, C = 3: 2.1
        against 4.4 ms); for many it is dearer.
        """
        win = self.windows(x, kh, kw, sh, sw).transpose(3, 4, 5, 0, 1, 2)     # (kh, kw, C, N, Ho, Wo)
        return self.xp.ascontiguousarray(win).reshape(kh * kw * x.shape[3], -1)

    #: True when :meth:`winograd_input` is worth calling on the unpadded input with row and
    #: column maps (it pads as it reads) rather than on a padded copy
    winograd_reads_padding = False

    def winograd_input(self, sub, m: int, tr: int, tw: int, bt, rows=None, cols=None):
        """V (alpha^2, P, C) = B^T d B of every tile d of a padded block, alpha = m + 2.

        sub: (N, tr*m + 2, tw*m + 2, C), any strides; its alpha x alpha tiles start every m
        rows and columns, P = N * tr * tw of them in (n, tile row, tile column) order.
        ``bt`` is kron(B^T, B^T) (alpha^2, alpha^2) on this device.  With ``rows`` and
        ``cols`` (host int arrays, :func:`xnn.layers.padding.padded_index`), ``sub`` is the
        unpadded input and padded row i (column j) is its row rows[i] (column cols[j]), or
        zero where that is -1.  Generic version: the tiles gathered into one contiguous copy,
        then one GEMM with ``bt``.
        """
        xp = self.xp
        if rows is not None:
            rows, cols = numpy.asarray(rows)[:tr * m + 2], numpy.asarray(cols)[:tw * m + 2]
            block = sub[:, xp.asarray(numpy.maximum(rows, 0))][:, :, xp.asarray(numpy.maximum(cols, 0))]
            keep = ((rows >= 0)[:, None] & (cols >= 0)[None, :]).astype(sub.dtype)
            sub = block * xp.asarray(keep)[None, :, :, None]
        alpha = m + 2
        nb, c = sub.shape[0], sub.shape[3]
        s_n, s_h, s_w, s_c = sub.strides
        tiles = self.as_strided(sub, (alpha, alpha, nb, tr, tw, c), (s_h, s_w, s_n, m * s_h, m * s_w, s_c))
        d = xp.ascontiguousarray(tiles).reshape(alpha * alpha, -1)          # (alpha^2, P*C)
        return (bt @ d).reshape(alpha * alpha, -1, c)

    def winograd_output(self, mm, m: int, at, bias, out, tr: int, tw: int):
        """Write A^T M A (+ bias) of each tile's products into ``out``, cut to its size.

        mm: (alpha^2, P, O), P = N * tr * tw as in :meth:`winograd_input`; ``at`` is
        kron(A^T, A^T) (m^2, alpha^2); out: (N, rows, cols, O) with rows <= tr*m and
        cols <= tw*m, tile (a, b)'s m x m block at rows a*m.., columns b*m.. .
        Generic version: one GEMM with ``at``, then a transposing copy into ``out``.
        """
        nb, rows, cols, o = out.shape
        y = (at @ mm.reshape(mm.shape[0], -1)).reshape(m, m, nb, tr, tw, o)
        y = y.transpose(2, 3, 0, 4, 1, 5).reshape(nb, tr * m, tw * m, o)[:, :rows, :cols]
        if bias is None:
            out[...] = y
        else:
            self.xp.add(y, bias, out=out)

    def rfft2(self, x, shape, axes):
        """Real-to-complex 2-D FFT of ``x`` over ``axes``, zero-padded (or cut) to ``shape``.

        float32 in, complex64 out (float64: complex128); the last of ``axes`` gets
        shape[1] // 2 + 1 frequencies.  Generic version: ``xp.fft.rfft2``.
        """
        return self.xp.fft.rfft2(x, s=shape, axes=axes)

    def irfft2(self, spectrum, shape, axes):
        """Inverse of :meth:`rfft2`: a real array with ``shape`` along ``axes``."""
        return self.xp.fft.irfft2(spectrum, s=shape, axes=axes)

    def col2im(self, cols, padded_shape, kh: int, kw: int, sh: int, sw: int):
        """Adjoint of :meth:`im2col`: scatter-add window gradients back to pixels.

        cols: (N, Ho, Wo, kh, kw, C).  Returns (N, Hp, Wp, C), the padded shape.
        One vectorised add per kernel offset (kh*kw of them), never per pixel.
        """
        n, ho, wo = cols.shape[:3]
        out = self.xp.zeros(padded_shape, dtype=cols.dtype)
        for a in range(kh):
            for b in range(kw):
                out[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw, :] += cols[:, :, :, a, b, :]
        return out
