"""Experiment runners, one module per kind, chosen by a config's ``experiment:`` key."""
from __future__ import annotations

import importlib

from ..config import Field
from ..errors import XnnError

#: kind -> module (imported on first use so `import xnn` stays light)
KINDS = {
    "mnist": "xnn.experiments.mnist",
    "vgg19": "xnn.experiments.vgg19",
    "style": "xnn.experiments.style",
    "adain": "xnn.experiments.adain",
}

#: keys every config has
COMMON = {
    "experiment": Field("str", help="which runner: " + ", ".join(KINDS)),
    "seed": Field("int", 0, "random seed (same seed on the CPU gives the same numbers)", min=0),
    "device": Field("str", "auto", "cpu, gpu or auto", choices=("cpu", "gpu", "auto")),
}


def get(kind):
    if kind not in KINDS:
        raise XnnError(f"config: experiment = {kind!r} is unknown; choose one of: {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind])


def schema_for(module) -> dict:
    return {**COMMON, **module.SCHEMA}
