"""Test and example clips made from a still photo: a camera pan (with a slow zoom) over it.

    frames = pan_frames(load_image("examples/coffee.png"), count=72, size=(288, 512))
    write_clip(frames, "pan.mp4", fps=24, tone_hz=440)     # with a sine tone as audio

``examples/coffee_pan.mp4`` is made this way (``python -m xnn.video.clips``); the tests and
benchmarks make their own clips, so no large video lives in the repository.
"""
from __future__ import annotations

import fractions
import pathlib

import numpy

from .io import SegmentWriter, require_av


def pan_frames(image, count: int, size, zoom: float = 1.25, moving_patch: bool = False):
    """``count`` uint8 (h, w, 3) frames: a window of the photo's aspect ``size`` gliding from the
    top-left to the bottom-right while zooming in by ``zoom``; ``moving_patch`` adds a square cut
    from the photo that moves the other way (occlusions for the flow check)."""
    from PIL import Image
    src = Image.fromarray(numpy.asarray(image))
    H, W = src.height, src.width
    h, w = size
    frames = []
    for i in range(count):
        t = i / max(count - 1, 1)
        scale = min(W / w, H / h) / (1 + (zoom - 1) * t)          # source pixels per output pixel
        cw, ch = w * scale, h * scale
        x0, y0 = (W - cw) * t, (H - ch) * t
        frame = numpy.asarray(src.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch)))
        if moving_patch:
            frame = frame.copy()
            p = h // 3
            px, py = int((w - p) * (1 - t)), (h - p) // 2
            frame[py:py + p, px:px + p] = frames[0][:p, :p] if frames else frame[:p, :p]
        frames.append(frame)
    return frames


def write_clip(frames, path, fps=24, tone_hz: float | None = None):
    """Write uint8 frames as a video (H.264 in .mp4 / .mov / .mkv, VP9 in .webm), with a quiet sine
    tone of ``tone_hz`` as its audio track when given."""
    path = pathlib.Path(path)
    h, w = frames[0].shape[:2]
    if tone_hz is None:
        with SegmentWriter(path, fps, (h, w), crf=20) as seg:
            for f in frames:
                seg.write(f)
        return path
    av = require_av()
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264" if path.suffix != ".webm" else "libvpx-vp9", rate=fractions.Fraction(fps))
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac" if path.suffix != ".webm" else "libopus", rate=48000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(f), format="rgb24")
            vf.pts = i
            c.mux(v.encode(vf))
        c.mux(v.encode())
        seconds = len(frames) / fps
        t = numpy.arange(int(48000 * seconds)) / 48000
        tone = (0.2 * numpy.sin(2 * numpy.pi * tone_hz * t)).astype(numpy.float32)[None]
        af = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        c.mux(a.encode(af))
        c.mux(a.encode())
    return path


if __name__ == "__main__":   # python -m xnn.video.clips: remake examples/coffee_pan.mp4
    from ..data.images import load_image
    root = pathlib.Path(__file__).resolve().parents[2] / "examples"
    out = write_clip(pan_frames(load_image(root / "coffee.png"), 72, (288, 512)), root / "coffee_pan.mp4")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
