"""Frames in order -> stylised frames that do not flicker (AdaIN, or a feed-forward network, with
temporal state).

    vs = VideoStylizer(stylizer, target=blend_stats(style_stats), temporal="flow")
    for out, row in vs.process(batch_of_frames):     # uint8 (h, w, 3) in, uint8 out, in order
        ...

Per-frame AdaIN flickers for two reasons, and each temporal mode adds one remedy:

``none``   every frame on its own (the reference tools' video mode).
``stats``  the content's relu4_1 channel statistics, with which AdaIN normalises each frame,
           are smoothed over frames (an exponential moving average, ``stats_momentum``),
           so a frame's overall tone does not jump with small changes in the picture.
           Style statistics are computed once for the whole video.
``flow``   ``stats``, and each output blends in the previous *output*, warped onto this
           frame by the input's optical flow (bicubic): b = (1 - w) fresh + w warped, with
           w = ``flow_weight`` where the flow is consistent and 0 elsewhere (occlusions,
           new content).  Along a motion path this is an exponential moving average of
           the stylised frames, so textures move with the picture instead of boiling.
           Averaging flattens brush strokes, so b then gets the local contrast of the
           fresh frame back (:func:`~xnn.video.temporal.restore_contrast`): on the
           example clip, plain averaging kept 76 % of the stylisation (by the AdaIN style
           loss, between the photo and the per-frame output), this keeps about 95 %.

Both reset at a scene cut (:mod:`xnn.video.temporal`).  Each output row reports the temporal
error, the same for every mode: the mean |out_t - warp(out_{t-1})| on consistent pixels.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy

from ..data.images import to_uint8, transfer_luminance
from ..layers.adain import channel_stats
from .temporal import TemporalState, restore_contrast, temporal_error, warp

TEMPORAL_MODES = ("none", "stats", "flow")


class VideoStylizer:
    """Stylise frames in order, carrying the temporal state from one batch to the next."""

    def __init__(self, stylizer, target, alpha: float = 1.0, temporal: str = "flow",
                 original_colors: bool = False, flow_weight: float = 0.7, stats_momentum: float = 0.8):
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        self.stylizer, self.target, self.alpha = stylizer, target, alpha
        self.temporal, self.original_colors = temporal, original_colors
        self.flow_weight, self.stats_momentum = flow_weight, stats_momentum
        self.state = TemporalState()
        self.reset()

    def reset(self):
        """Forget the past (a new video, or a chunk that starts without warm-up frames)."""
        self.state.reset()
        self.mean = self.std = None
        self.prev_out = None

    def _fresh(self, frames, steps_of) -> list:
        """Each frame stylised on its own (float (h, w, 3) in [0, 1]), with the smoothed content
        statistics when ``temporal`` is not none; ``steps_of()`` waits for the frames' steps."""
        size = frames[0].shape[:2]
        feats = self.stylizer.encode_frames(frames)
        content_stats = None if self.temporal == "none" else self._smoothed(channel_stats(feats, self.stylizer.eps),
                                                                             steps_of())
        return self.stylizer.decode_frames(feats, self.target, size, self.alpha, content_stats)

    def process(self, frames):
        """Yield (uint8 output frame, metrics row) for each uint8 (h, w, 3) frame, in order:
        :meth:`paint` then :meth:`finish`."""
        yield from self.finish(self.paint(frames))

    def paint(self, frames) -> tuple:
        """The first stage of :meth:`process`: each frame stylised on its own, and the motion from
        the previous frame.  Batches are painted in order, one at a time, and may be painted one
        batch ahead of :meth:`finish` on another thread (``engine: local`` does).
        Returns (frames, steps, fresh outputs, seconds a frame)."""
        t0 = time.perf_counter()
        # the motion between input frames needs only the inputs: it is found on a thread of its own
        # (OpenCV runs outside the GIL) while the network paints, which leaves cores idle between layers
        with ThreadPoolExecutor(1, thread_name_prefix="xnn-motion") as motion:
            pending = motion.submit(lambda: [self.state.step(f) for f in frames])
            fresh = self._fresh(frames, pending.result)
            steps = pending.result()
        return frames, steps, fresh, (time.perf_counter() - t0) / len(frames)

    def finish(self, painted):
        """The second stage: yield (uint8 output frame, metrics row) for the frames of one painted
        batch, blending in the previous output (``temporal: flow``); batches in order."""
        frames, steps, fresh, seconds = painted
        for frame, step, out in zip(frames, steps, fresh):
            if self.original_colors:
                out = transfer_luminance(frame / 255.0, out)
            if step.cut:
                self.prev_out = None
            if self.temporal == "flow" and self.prev_out is not None:
                w = self.flow_weight * step.mask[..., None].astype(numpy.float32)
                out = restore_contrast((1 - w) * out + w * warp(self.prev_out, step.backward, cubic=True), out)
            row = {"scene_cut": step.cut and not step.first, "consistent_fraction": round(step.consistent_fraction, 4),
                   "temporal_error": None, "seconds": seconds}
            if self.prev_out is not None:
                row["temporal_error"] = temporal_error(self.prev_out, out, step.backward, step.mask)
            self.prev_out = out
            yield to_uint8(out), row

    def _smoothed(self, stats, steps):
        """Per-frame (mean, std) of the content, each (N, C, 1, 1): an exponential moving average
        over frames that restarts at each scene cut."""
        mean_c, std_c = stats
        xp = self.stylizer.device.xp
        m = self.stats_momentum
        means, stds = [], []
        for i, step in enumerate(steps):
            if step.cut or self.mean is None:
                self.mean, self.std = mean_c[i:i + 1], std_c[i:i + 1]
            else:
                self.mean = m * self.mean + (1 - m) * mean_c[i:i + 1]
                self.std = m * self.std + (1 - m) * std_c[i:i + 1]
            means.append(self.mean)
            stds.append(self.std)
        return xp.concatenate(means), xp.concatenate(stds)


class NetworkVideoStylizer(VideoStylizer):
    """The same temporal machinery for a feed-forward network with nothing to smooth but its
    outputs (the fast style network, :mod:`xnn.models.fast_style`): ``temporal`` is none or flow."""

    def __init__(self, net, temporal: str = "flow", original_colors: bool = False, flow_weight: float = 0.7):
        if temporal == "stats":
            raise ValueError("temporal 'stats' smooths AdaIN's content statistics; a network's video takes "
                             "none or flow")
        super().__init__(None, None, temporal=temporal, original_colors=original_colors, flow_weight=flow_weight)
        self.net = net

    def _fresh(self, frames, steps_of) -> list:
        from ..models.fast_style import stylise_batch
        return stylise_batch(self.net, frames)
