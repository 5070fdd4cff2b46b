"""What every experiment runner gets: a run folder, metric logging, progress, stop requests.

An experiment module defines

    KIND = "mnist"                      # the value of `experiment:` in a config file
    SCHEMA = {...}                      # its keys (see xnn.config.Field)
    def prepare(cfg, device): ...       # load and check every input; raise XnnError here,
                                        # BEFORE the run folder exists
    def run(state, ctx) -> dict: ...    # do the work, return the summary

The run folder holds config.yaml (resolved), metrics.jsonl, summary.json and the outputs.
Every file is written atomically (temporary name, then rename): no half-written outputs.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from ..config import Field, dump_yaml
from ..errors import XnnError


def _output_name_problem(name: str):
    p = pathlib.PurePath(name)
    if p.is_absolute() or ".." in p.parts or p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        return "must be a .png or .jpg file name inside the run folder (use --out to choose the folder)"
    return None


def stylisation_fields(content_help: str) -> dict:
    """Keys that the style and adain experiments share, with the same meaning."""
    return {
        "content_image": Field("path", "examples/chelsea.png", content_help),
        "style_image": Field("path|list[path]", ["examples/starry_night.jpg"], "one style image or a list"),
        "style_blend_weights": Field("list[float]", None, "one weight per style image (normalised to sum 1; "
                                     "default equal)", nullable=True, min=0),
        "original_colors": Field("bool", False, "keep the content's colours (transfer luminance only)"),
        "output_image": Field("path", "output.png", "file name of the result inside the run folder",
                              check=_output_name_problem),
    }


def check_blend_weights(cfg) -> None:
    """One weight per style image, not all zero."""
    weights, styles = cfg["style_blend_weights"], cfg["style_image"]
    if weights is None:
        return
    if len(weights) != len(styles):
        raise XnnError(f"config: style_blend_weights has {len(weights)} weights for {len(styles)} style "
                       "images; give one weight per style image")
    if sum(weights) <= 0:
        raise XnnError("config: style_blend_weights must not all be 0")


def atomic_write_bytes(path, data: bytes):
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunContext:
    def __init__(self, run_dir, cfg: dict, device, resumed: bool = False, quiet: bool = False):
        self.dir = pathlib.Path(run_dir)
        self.cfg, self.device, self.resumed, self.quiet = cfg, device, resumed, quiet
        self.stop_requested = False   # set by the CLI on Ctrl-C / SIGTERM
        self.dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.dir / "metrics.jsonl", "a" if resumed else "w")

    def path(self, name: str) -> pathlib.Path:
        return self.dir / name

    # ---------------------------------------------------------------- files
    def write_config(self):
        atomic_write_bytes(self.path("config.yaml"), dump_yaml(self.cfg).encode())

    def log(self, **metrics):
        """Append one JSON object to metrics.jsonl (flushed at once)."""
        self._metrics.write(json.dumps(metrics) + "\n")
        self._metrics.flush()

    def read_metrics(self) -> list[dict]:
        self._metrics.flush()
        with open(self.path("metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def save_json(self, name: str, obj):
        atomic_write_bytes(self.path(name), (json.dumps(obj, indent=2) + "\n").encode())

    def save_image(self, name: str, image):
        from ..data.images import save_image
        save_image(self.path(name), image)

    def plot(self, name: str, x_key: str, series: dict[str, list[str]], title: str = ""):
        """Save a PNG with one panel per entry of ``series`` (panel title -> metric keys)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = self.read_metrics()
        fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.6), squeeze=False)
        for ax, (panel, keys) in zip(axes[0], series.items()):
            log = panel.endswith("(log)")
            for key in keys:
                pts = [(r[x_key], r[key]) for r in rows if key in r and x_key in r and r[key] is not None
                       and not (log and r[key] <= 0)]  # a log axis cannot show 0 (e.g. iteration 0)
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=key)
            ax.set_xlabel(x_key)
            ax.set_title(panel)
            ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        tmp = self.path(name + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, self.path(name))

    def close(self):
        self._metrics.close()

    # ---------------------------------------------------------------- console
    def progress(self, total: int, desc: str, unit: str = "it", initial: int = 0):
        return Progress(total, desc, unit, initial, quiet=self.quiet)

    def info(self, message: str):
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar on a terminal; otherwise a plain log line at most every ``every_s`` seconds."""

    def __init__(self, total, desc, unit="it", initial=0, quiet=False, stream=None, every_s=10.0):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.quiet = quiet
        self.start, self.start_n = time.perf_counter(), initial
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        self.every_s, self.last_print = every_s, self.start
        if self.tty and not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int = 1, **postfix):
        self.n += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)
        elif not self.quiet and time.perf_counter() - self.last_print >= self.every_s:
            self.last_print = time.perf_counter()
            elapsed = self.last_print - self.start
            rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%) "
                  f"{extra} {rate:.3g} {self.unit}/s elapsed {elapsed:.0f}s eta {eta:.0f}s".replace("  ", " "),
                  file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return v
