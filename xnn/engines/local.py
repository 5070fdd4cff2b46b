"""``engine: local``: the pipeline's steps one after another in this process (see :mod:`xnn.engines`)."""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

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
    ``should_stop()``.  Chunks (``chunk_frames``) only mark where the output's segments begin.

    Two stages overlap: a thread paints batch k + 1 (the network, :meth:`VideoStylizer.paint`)
    while this one finishes batch k (the temporal blend, which needs the previous output) and the
    caller writes it."""
    from ..video.io import read_frames
    from ..video.temporal import opencv_threads
    cfg = job.cfg
    vs = job.video_stylizer(device, stylizer)
    warm = max(0, first - cfg["warmup_frames"])
    reader = read_frames(source, warm, source.frames, size)
    chunk = cfg["chunk_frames"]

    def batch_at(i):
        """(segment start, frames) of the batch that starts at frame i: it ends at batch_size frames
        or at the segment's end."""
        start = first + (i - first) // chunk * chunk
        return start, [f for _, f in zip(range(min(cfg["batch_size"], start + chunk - i)), reader)]

    try:
        # OpenCV on one thread: the network keeps the cores busy
        with opencv_threads(1), ThreadPoolExecutor(1, thread_name_prefix="xnn-paint") as painter:
            if first > warm:
                for _ in vs.process([f for _, f in zip(range(first - warm), reader)]):
                    pass

            def paint_next(i):
                """(segment start, frames, the painting batch's future, a read error): the batch at frame
                i is read here and painted on the painter's thread; no future at the end or a stop."""
                if should_stop():
                    return None, 0, None, None
                try:
                    start, group = batch_at(i)
                except XnnError as e:       # an unreadable frame: raised after the batch before it is out
                    return None, 0, None, e
                return start, len(group), (painter.submit(vs.paint, group) if group else None), None

            i = first
            start, count, ahead, error = paint_next(i)
            while ahead is not None:
                painted, painted_start = ahead.result(), start
                i += count
                start, count, ahead, error = paint_next(i)
                for out, row in vs.finish(painted):
                    yield painted_start, out, row
                if should_stop():           # asked while this batch came out: the one painted ahead is dropped
                    return
            if error is not None:
                raise error
    finally:
        reader.close()
