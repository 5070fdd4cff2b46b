"""Engines: where a per-item stylisation pipeline runs.  ``local`` (this process) and ``ray``
(Ray Data actor pools, :mod:`xnn.engines.ray`) are peers with one surface, the way
:mod:`xnn.backends` holds NumPy and CuPy:

    engine = engines.get(cfg["engine"])
    engine.check(cfg)                                  # before the run folder exists: one-line errors
    with engine.session(cfg, device):
        for r in engine.images(job, paths, device, should_stop):           # ImageResult, input order
            ...
        for start, frame, row in engine.frames(job, source, size, first, device, should_stop):
            ...                                        # frames in order; start: their chunk's first frame

``job`` is a :class:`xnn.style.feedforward.AdaINJob` (the model's weights, the style images, the
config): the engine runs the job's steps and knows no experiment.  Both engines stop taking new
work once ``should_stop()`` is true; what has been computed by then is still yielded.
"""
from __future__ import annotations

import dataclasses
import importlib

ENGINES = ("local", "ray")


@dataclasses.dataclass
class ImageResult:
    """One input's outcome: ``image`` (float HxWx3 in [0, 1], from ``local``) or ``data`` (the output
    file's bytes, encoded where it was computed, from ``ray``), or ``error`` (one line)."""
    path: str
    image: object = None
    data: bytes | None = None
    seconds: float = 0.0
    tile: int | None = None
    error: str | None = None


def get(name: str):
    """The engine module called ``name`` (``local`` or ``ray``)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return importlib.import_module(f"{__name__}.{name}")
