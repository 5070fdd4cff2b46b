"""What every experiment runner gets: a run folder, metric logging, progress, stop requests.

An experiment module defines

    KIND = "mnist"                      # the value of `experiment:` in a config file
    SCHEMA = {...}                      # its keys (see xnn.config.Field)
    def prepare(cfg, device): ...       # load and check every input; raise XnnError here,
                                        # BEFORE the run folder exists
    def run(state, ctx) -> dict: ...    # do the work, return the summary

The run folder holds config.yaml (resolved), metrics.jsonl, summary.json and the outputs.
Whole files are written atomically (xnn.files: a temporary name, then one rename), so no
output is ever half-written; metrics.jsonl is appended one line at a time, and a torn last
line (a crash mid-write) is skipped by :meth:`RunContext.read_metrics` and cut off by --resume.
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
import time

from ..config import Field, dump_yaml
from ..errors import XnnError
from ..files import atomic_write, write_bytes
from ..stop import StopFlag


def _output_name_problem(name: str):
    p = pathlib.PurePath(name)
    if p.is_absolute() or ".." in p.parts or p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        return "must be a .png or .jpg file name inside the run folder (use --out to choose the folder)"
    return None


def _tile_side_problem(v):
    return None if v == "auto" or (v % 16 == 0 and v >= 64) else "a tile side must be a multiple of 16 and at least 64"


def tile_size_field(what: str) -> Field:
    """The ``tile_size`` key of the style and adain runners (one rule for both)."""
    return Field("int|auto", "auto", f"{what} tile by tile (with halos: the same result) so memory follows the "
                 "tile: a side in pixels (a multiple of 16, >= 64), auto (the whole image when it fits, else the "
                 "largest tile that does) or null (never tile)", nullable=True, check=_tile_side_problem)


def stylisation_fields(content_help: str) -> dict:
    """Keys that the style and adain experiments share, with the same meaning."""
    return {
        "content_image": Field("path", "examples/chelsea.png", content_help),
        "style_image": Field("path|list[path]", ["examples/starry_night.jpg"], "one style image or a list"),
        "style_blend_weights": Field("list[float]", None, "one weight per style image, >= 0, not all 0 "
                                     "(normalised to sum 1; default equal; the rule is xnn.blend's)", nullable=True),
        "original_colors": Field("bool", False, "keep the content's colours (transfer luminance only)"),
        "output_image": Field("path", "output.png", "file name of the result inside the run folder",
                              check=_output_name_problem),
    }


def engine_fields(what: str) -> dict:
    """The keys that choose where the work runs (adain folders, video)."""
    return {
        "engine": Field("str", "local", f"local: {what} in this process; ray: on Ray Data, with the model "
                        "loaded once per actor (pip install 'xnn[ray]'; see the README's 'At scale')",
                        choices=("local", "ray")),
        "ray_address": Field("str", None, "engine: ray joins this cluster (host:port or ray://host:port; "
                             "default $RAY_ADDRESS); unset: a local Ray is started and stopped by the run",
                             nullable=True),
        "ray_actors": Field("int", None, "engine: ray: how many actors, each with the model (default: one per "
                            "GPU on a GPU cluster, else one per node using its cores)", min=1, nullable=True),
        "ray_wait_s": Field("float", 300.0, "engine: ray: seconds to wait for the actors to start (the cluster "
                            "offering their CPUs or GPUs, each loading the model) before the run stops with an "
                            "error naming what it waited for", gt=0),
    }


def blend_weights(cfg) -> list:
    """The config's style_blend_weights under the one rule (xnn.blend), normalised."""
    from ..blend import normalise_blend_weights
    try:
        return normalise_blend_weights(cfg["style_blend_weights"], len(cfg["style_image"]))
    except XnnError as e:
        raise XnnError(f"config: {e}") from None


def to_json(obj, indent=None) -> str:
    """Strict JSON: NaN and +-inf (a diverged loss) become null, so every file stays valid JSON."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a crash mid-append) is skipped."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # a bad line before the end is not a torn append
                raise XnnError(f"{path}: line {i + 1} is not JSON") from None
    return rows


def _cut_torn_line(path: pathlib.Path) -> None:
    """Drop an unfinished last line (no newline at the end) before appending to ``path``."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class RunContext:
    """What a runner gets.  ``stop`` is the :class:`~xnn.stop.StopFlag` the CLI installs
    around ``run`` (Ctrl-C / SIGTERM); runners poll ``ctx.stop_requested``."""

    def __init__(self, run_dir, cfg: dict, device, resumed: bool = False, quiet: bool = False,
                 stop: StopFlag | None = None):
        self.dir = pathlib.Path(run_dir)
        self.cfg, self.device, self.resumed, self.quiet = cfg, device, resumed, quiet
        self.stop = stop if stop is not None else StopFlag()
        metrics = self.dir / "metrics.jsonl"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if resumed:
                _cut_torn_line(metrics)
            self._metrics = open(metrics, "a" if resumed else "w", encoding="utf-8")
        except OSError as e:
            raise XnnError(f"cannot write the run folder {self.dir}: {e.strerror or e}") from None

    @property
    def stop_requested(self) -> bool:
        return bool(self.stop)

    def path(self, name: str) -> pathlib.Path:
        return self.dir / name

    # ---------------------------------------------------------------- files
    def write_config(self):
        write_bytes(self.path("config.yaml"), dump_yaml(self.cfg).encode())

    def log(self, **metrics):
        """Append one JSON object to metrics.jsonl as one line (flushed at once)."""
        try:
            self._metrics.write(to_json(metrics) + "\n")
            self._metrics.flush()
        except OSError as e:
            raise XnnError(f"cannot write {self.path('metrics.jsonl')}: {e.strerror or e}") from None

    def read_metrics(self) -> list[dict]:
        if not self._metrics.closed:
            self._metrics.flush()
        return read_jsonl(self.path("metrics.jsonl"))

    def keep_metrics(self, keep) -> int:
        """Rewrite metrics.jsonl (atomically) with only the rows ``keep(row)`` accepts, e.g. on
        a resume the rows up to the checkpoint: an aborted run may have logged past it, and
        those steps run again.  Returns how many rows were dropped."""
        rows = self.read_metrics()
        kept = [r for r in rows if keep(r)]
        if len(kept) < len(rows):
            self._metrics.close()
            write_bytes(self.path("metrics.jsonl"), "".join(to_json(r) + "\n" for r in kept).encode())
            self._metrics = open(self.path("metrics.jsonl"), "a", encoding="utf-8")
        return len(rows) - len(kept)

    def save_json(self, name: str, obj):
        write_bytes(self.path(name), (to_json(obj, indent=2) + "\n").encode())

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
        try:
            with atomic_write(self.path(name)) as f:
                fig.savefig(f, dpi=110, format="png")
        finally:
            plt.close(fig)

    def close(self):
        try:
            self._metrics.close()
        except OSError:  # a full disk at the final flush: the rows before are on disk
            pass

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
