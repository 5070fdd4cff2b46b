"""``engine: local``: the pipeline's steps one after another in this process (see :mod:`xnn.engines`)."""
from __future__ import annotations

import contextlib

from ..errors import XnnError
from . import ImageResult


def check(cfg) -> None:
    """Nothing to check: this process is the engine."""


@contextlib.contextmanager
def session(cfg, device):
    yield None


def images(job, paths, device, should_stop, stylizer=None):
    """Yield an :class:`ImageResult` per path, in order; a file that cannot be read or is too small
    is an ``error``.  ``stylizer``: the job's (stylizer, target) pair, when the caller has built it."""
    from ..data.images import load_image
    from ..style.feedforward import sized_content
    step = job.image_step(device, stylizer)
    for path in paths:
        if should_stop():
            return
        try:
            content = sized_content(load_image(path), job.cfg, path)
        except XnnError as e:
            yield ImageResult(str(path), error=str(e))
            continue
        out, seconds, tile = step(content)
        yield ImageResult(str(path), image=out, seconds=seconds, tile=tile)


def frames(job, source, size, first, device, should_stop, stylizer=None):
    """Yield (chunk start, frame, metrics row) for frames ``first`` .. end, in order, read in one pass
    (one entry into the video, at ``first`` less the warm-up frames); stops at a batch boundary once
    ``should_stop()``.  Chunks (``chunk_frames``) only mark where the output's segments begin."""
    from ..video.io import read_frames
    cfg = job.cfg
    vs = job.video_stylizer(device, stylizer)
    warm = max(0, first - cfg["warmup_frames"])
    reader = read_frames(source, warm, source.frames, size)
    try:
        if first > warm:
            for _ in vs.process([f for _, f in zip(range(first - warm), reader)]):
                pass
        i, chunk = first, cfg["chunk_frames"]
        while not should_stop():
            start = first + (i - first) // chunk * chunk           # the segment frame i belongs to
            group = [f for _, f in zip(range(min(cfg["batch_size"], start + chunk - i)), reader)]
            if not group:
                return
            for out, row in vs.process(group):
                yield start, out, row
            i += len(group)
    finally:
        reader.close()
