"""Experiment runners, one module per kind, chosen by a config's ``experiment:`` key."""
from __future__ import annotations

import importlib

from ..config import Field, check_value

#: kind -> module (imported on first use so `import xnn` stays light)
KINDS = {
    "mnist": "xnn.experiments.mnist",
    "vgg19": "xnn.experiments.vgg19",
    "style": "xnn.experiments.style",
    "adain": "xnn.experiments.adain",
    "video": "xnn.experiments.video",
    "train_style": "xnn.experiments.train_style",
    "fast_style": "xnn.experiments.fast_style",
}

#: keys every config has
COMMON = {
    "experiment": Field("str", help="which runner: " + ", ".join(KINDS), choices=tuple(KINDS)),
    "seed": Field("int", 0, "random seed (same seed on the CPU gives the same numbers)", min=0),
    "device": Field("str", "auto", "cpu, gpu or auto (checked by xnn.device, which knows every name)"),
}


def get(kind):
    """The runner module of a config's ``experiment`` value (checked: a one-line XnnError otherwise)."""
    return importlib.import_module(KINDS[check_value(COMMON["experiment"], kind, "experiment")])


def schema_for(module) -> dict:
    return {**COMMON, **module.SCHEMA}
