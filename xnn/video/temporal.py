"""Temporal consistency between video frames: optical flow, warping, scene cuts, the error metric.

Everything here runs on the host, on uint8 / float32 (h, w, 3) frames, with OpenCV.

Dense optical flow is OpenCV's DIS (Kroeger et al. 2016).  For frames ``prev`` -> ``cur``,
``backward = flow(cur, prev)`` says where each pixel x of ``cur`` was in ``prev``:
``cur(x) ~ prev(x + backward(x))``; so ``warp(prev_output, backward)`` lines the previous
output up with the current frame.  The flow is *consistent* at x when going back and coming
forward again returns to x (Sundaram et al. 2010, as used by Ruder et al. 2016):

    |b + f(x + b)|^2 <= 0.01 (|b|^2 + |f(x + b)|^2) + 0.5,      b = backward(x), f = forward

and x + b lies inside the frame.  Where it is not (occlusions, things entering the frame,
cuts), nothing from the previous frame is used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

import numpy

from ..errors import XnnError

#: a new shot starts when the colour histograms of two frames differ by more than this
#: (half the L1 distance of the normalised 3 x 32-bin histograms: 0 = same, 1 = disjoint)
SCENE_CUT_DISTANCE = 0.5
#: a new shot also starts when less than this fraction of pixels has a consistent flow
MIN_CONSISTENT = 0.2


def require_cv2():
    try:
        import cv2
    except ImportError:
        raise XnnError("video needs PyAV and OpenCV: pip install 'xnn[video]'") from None
    return cv2


@contextlib.contextmanager
def opencv_threads(n: int):
    """OpenCV's thread count set to ``n`` for the block, then put back (it is one setting for the
    whole process).  A video's optical flow and blends run beside the network, which already keeps
    every core busy: OpenCV's own threads on top of that only get in its way."""
    cv2 = require_cv2()
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def grey(frame) -> numpy.ndarray:
    """uint8 (h, w) luma of a uint8 (h, w, 3) RGB frame."""
    return require_cv2().cvtColor(numpy.ascontiguousarray(frame), require_cv2().COLOR_RGB2GRAY)


def histogram_distance(a, b) -> float:
    """Half the L1 distance of the per-channel 32-bin colour histograms of two uint8 frames (0..1)."""
    def hist(x):
        small = x[::4, ::4].reshape(-1, 3)
        h = numpy.stack([numpy.bincount(small[:, c] >> 3, minlength=32) for c in range(3)]).astype(numpy.float64)
        return h / small.shape[0]
    return float(numpy.abs(hist(a) - hist(b)).sum() / 6)


#: an image whose edge map varies by less than this (8-bit levels per pixel) has too little structure to
#: tell one picture of it from another (an empty road, fog, a dark frame)
WEAK_STRUCTURE = 4.0


def structure(frame, width: int = 64) -> numpy.ndarray:
    """float32 edge strength, in 8-bit levels per pixel, of a uint8 (h, w, 3) frame at ``width``
    pixels across, or half its own width if that is less (area-averaged first, so a painting's brush
    texture counts less than the outlines of the scene): the gradient magnitude of its luma (Sobel,
    divided by its gain of 8), lightly blurred."""
    cv2 = require_cv2()
    g = grey(frame)
    h, w = g.shape
    width = max(1, min(width, w // 2))
    small = cv2.resize(g, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    small = small.astype(numpy.float32)
    gx, gy = cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1)
    return cv2.GaussianBlur(numpy.sqrt(gx * gx + gy * gy) / 8, (0, 0), 1.0)


def structure_correlation(frame, reference) -> float | None:
    """Pearson correlation of the :func:`structure` of two frames of one size: near 1 for the same
    scene however it is painted, near 0 for another picture.  None when ``reference`` has too little
    structure to judge (its edge map's standard deviation is under WEAK_STRUCTURE)."""
    a, b = structure(frame).ravel().astype(numpy.float64), structure(reference).ravel().astype(numpy.float64)
    if b.std() < WEAK_STRUCTURE:
        return None
    if a.std() == 0:
        return 0.0
    return float(numpy.mean((a - a.mean()) * (b - b.mean())) / (a.std() * b.std()))


class Flow:
    """Backward flow between consecutive frames, and where it can be trusted."""

    def __init__(self):
        cv2 = require_cv2()
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def between(self, prev_grey, cur_grey):
        """(backward flow (h, w, 2) float32 as (dx, dy), consistency mask (h, w) bool)."""
        backward = self._dis.calc(cur_grey, prev_grey, None)
        forward = self._dis.calc(prev_grey, cur_grey, None)
        return backward, consistent(backward, forward)


@functools.lru_cache(maxsize=4)
def _grid(h, w):
    """Pixel coordinates (xs, ys), float32 (h, w): made once per frame size (read-only)."""
    ys, xs = numpy.mgrid[0:h, 0:w].astype(numpy.float32)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def warp(image, flow, cubic: bool = False) -> numpy.ndarray:
    """``image`` sampled at x + flow(x), edges replicated: image(x + flow(x)).  Bilinear, or bicubic
    (``cubic``: sharper, for images warped again and again)."""
    cv2 = require_cv2()
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def restore_contrast(blended, fresh, sigma: float = 2.0, max_gain: float = 3.0) -> numpy.ndarray:
    """``blended`` with its local contrast set to ``fresh``'s, per channel, clipped to [0, 1].

    Averaging two stylised frames whose brush strokes differ flattens the strokes.  With local
    means m and variances v over a Gaussian window of ``sigma`` pixels, the result is
    m_b + (blended - m_b) * sqrt(v_f / v_b): the stable texture of the blend with the contrast of
    a fresh stylisation (the gain is capped at ``max_gain``).  The arithmetic is done in place.
    """
    cv2 = require_cv2()
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), sigma)   # noqa: E731
    m_b, m_f = blur(blended), blur(fresh)
    v_b = blur(blended * blended)
    v_b -= m_b * m_b
    v_f = blur(fresh * fresh)
    v_f -= m_f * m_f
    gain = numpy.divide(numpy.maximum(v_f, 0, out=v_f), numpy.maximum(v_b, 1e-6, out=v_b), out=v_f)
    numpy.minimum(numpy.sqrt(gain, out=gain), max_gain, out=gain)
    out = blended - m_b
    out *= gain
    out += m_b
    return numpy.clip(out, 0, 1, out=out)


def consistent(backward, forward) -> numpy.ndarray:
    """The forward-backward check above: True where ``backward`` can be trusted."""
    h, w = backward.shape[:2]
    xs, ys = _grid(h, w)
    tx, ty = xs + backward[..., 0], ys + backward[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    f = warp(forward, backward)
    bx, by, fx, fy = backward[..., 0], backward[..., 1], f[..., 0], f[..., 1]
    # sums over the two flow components written out: NumPy's reduction over a length-2 last axis
    # is about 10x slower than these element-wise operations
    round_trip = (bx + fx) ** 2 + (by + fy) ** 2
    scale = bx * bx + by * by + fx * fx + fy * fy
    return inside & (round_trip <= 0.01 * scale + 0.5)


def temporal_error(prev_out, cur_out, backward, mask) -> float | None:
    """Mean |cur_out(x) - prev_out(x + backward(x))| over the consistent pixels, in 8-bit levels
    (0..255), for float [0, 1] or uint8 frames; None when no pixel is consistent."""
    if not mask.any():
        return None
    scale = 255.0 if prev_out.dtype != numpy.uint8 else 1.0
    a = warp(numpy.asarray(prev_out, numpy.float32), backward)
    diff = numpy.abs(numpy.asarray(cur_out, numpy.float32) - a)
    # the channels' sum written out: NumPy's reduction over a length-3 last axis is 4x slower
    per_pixel = diff[..., 0] + diff[..., 1] + diff[..., 2]
    return float(per_pixel[mask].mean(dtype=numpy.float64) * scale / 3)


@dataclasses.dataclass
class Step:
    """What :class:`TemporalState` found between the previous frame and this one."""
    cut: bool                                 # start afresh: a new shot, or the first frame
    first: bool = False                       # the first frame this state has seen (not a cut in the video)
    backward: numpy.ndarray | None = None     # flow to the previous frame (None at a cut / first frame)
    mask: numpy.ndarray | None = None         # where it is consistent
    consistent_fraction: float = 0.0


class TemporalState:
    """The previous input frame, and what comes of comparing the next one with it."""

    def __init__(self):
        self.flow = Flow()
        self.prev = self.prev_grey = None

    def reset(self):
        self.prev = self.prev_grey = None

    def step(self, frame) -> Step:
        g = grey(frame)
        prev, prev_grey = self.prev, self.prev_grey
        self.prev, self.prev_grey = frame, g
        if prev is None:
            return Step(cut=True, first=True)
        if histogram_distance(prev, frame) > SCENE_CUT_DISTANCE:
            return Step(cut=True)
        backward, mask = self.flow.between(prev_grey, g)
        frac = float(mask.mean())
        if frac < MIN_CONSISTENT:
            return Step(cut=True, consistent_fraction=frac)
        return Step(cut=False, backward=backward, mask=mask, consistent_fraction=frac)
