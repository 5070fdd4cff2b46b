"""Memory layout rules that hold on every backend.

xnn's convolutions return NCHW-shaped views of channels-last (NHWC) memory, which the
next convolution reads for free.  NumPy's element-wise results keep their inputs'
memory order; CuPy's are always C-ordered, so on a GPU a plain ``a * b`` would turn a
channels-last activation into NCHW memory and cost the next conv a transposing copy.
Layers therefore write element-wise results into ``like(xp, a)`` (``empty_like``,
order "K" on both) with ``out=``.
"""
from __future__ import annotations


def channels_last(a) -> bool:
    """True for a 4-D (N, C, H, W) array whose memory is NHWC (a conv output)."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def flat(a):
    """a's elements as a 1-D array in memory order: a free view for C-ordered and for
    channels-last arrays (sums and dot products do not care about the order)."""
    return a.transpose(0, 2, 3, 1).reshape(-1) if channels_last(a) else a.reshape(-1)


def like(xp, a, dtype=None):
    """An uninitialised array of a's shape in a's memory order, for ``out=``."""
    return xp.empty_like(a, dtype=dtype)


def in_layout_of(xp, a, ref):
    """``a`` (same shape as ``ref``) in ref's NHWC memory order when ref has it and ``a`` lacks it.

    An element-wise op between NCHW and NHWC operands walks one of them across its
    strides (NumPy: 70 ms for 16M floats); one transposing copy (27 ms) and a
    same-layout op (8 ms) are much cheaper.
    """
    if channels_last(ref) and not channels_last(a):
        return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return a


#: element-wise work on fewer elements than this runs as one chunk: a thread hand-off costs
#: more than it saves (a 64x128x128 ReLU takes about 1 ms)
SPLIT_ELEMENTS = 1 << 20


def _row_axis(a, axis):
    """The axis bands cut: ``axis``, by default H of an (N, C, H, W) array, else axis 0."""
    return (2 if a.ndim == 4 else 0) if axis is None else axis


def row_ranges(dev, a, axis=None):
    """[(lo, hi)]: ``a``'s rows (``axis``; by default H of an (N, C, H, W) array, else axis 0) cut
    into ``dev.workers`` bands, for work run side by side by ``dev.parallel_map``.

    One band, all the rows, when ``a`` is small or the device runs one chunk at a time
    (CuPy).  NumPy's element-wise loops and the compiled kernels release the GIL, so on the
    CPU the bands run on the cores at once: ReLU and pooling are otherwise a third of a VGG19
    step on one core.
    """
    axis = _row_axis(a, axis)
    rows = a.shape[axis] if a.ndim else 1
    parts = min(dev.workers, rows) if a.size >= SPLIT_ELEMENTS else 1
    cuts = [rows * i // max(parts, 1) for i in range(max(parts, 1) + 1)]
    return list(zip(cuts, cuts[1:]))


def row_parts(dev, a, axis=None):
    """Index tuples of the bands of :func:`row_ranges`: ``(Ellipsis,)``, the whole array, for one band."""
    axis = _row_axis(a, axis)
    bands = row_ranges(dev, a, axis)
    if len(bands) == 1:
        return [(Ellipsis,)]
    return [(slice(None),) * axis + (slice(lo, hi),) for lo, hi in bands]


def flat_views(*arrays):
    """1-D views of arrays of one shape in their memory order when all are C-ordered or all
    channels-last (element-wise work on them then runs over contiguous memory, in bands of any
    size); otherwise the arrays themselves."""
    if all(a.flags.c_contiguous for a in arrays) or all(channels_last(a) for a in arrays):
        return tuple(flat(a) for a in arrays)
    return arrays


def add(xp, a, b, dev=None):
    """a + b in a's memory order (a fresh array; neither input is modified); with ``dev``,
    in bands of rows side by side on its workers (:func:`row_parts`)."""
    out = like(xp, a)
    if dev is None:
        return xp.add(a, b, out=out)
    dev.parallel_map(lambda s: xp.add(a[s], b[s], out=out[s]), row_parts(dev, out))
    return out
