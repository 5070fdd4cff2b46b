"""The command line: ``python run.py CONFIG [options]`` or ``xnn run CONFIG [options]``.

User errors (XnnError, and bad command-line arguments) are printed as one line,
``xnn: error: ...``, with exit code 2 and no traceback; anything else is a bug and keeps
its traceback.  Ctrl-C or SIGTERM asks the runner to stop at the next step boundary, save
what it has and a checkpoint, and exit with code 130; a second Ctrl-C stops at once.

A run refused before it starts leaves nothing behind.  An error during the run keeps
what the run finished (and says where); when it had finished nothing yet, the files it
wrote (config.yaml, an empty metrics.jsonl) and the folder it made are removed again.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import sys
import warnings

from . import experiments
from .config import apply_override, read_yaml, validate
from .errors import ArgumentParser, XnnError
from .experiments import base as run_base
from .stop import StopFlag

EPILOG = """examples:
  python run.py configs/mnist_mlp.yaml
  python run.py configs/style.yaml --device gpu --set image_size=1024
  python run.py configs/mnist_cnn.yaml --set train.epochs=2 --out runs/quick
  python run.py --resume runs/style-20261128-101500

data and weights are read from $XNN_HOME (default ~/.cache/xnn) and downloaded there on
first use; XNN_HOME=../shared/data works offline in the development setup."""


def build_parser(prog="run.py"):
    p = ArgumentParser(prog=prog, description="Run an xnn experiment from a YAML config.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment config (YAML), e.g. configs/style.yaml")
    p.add_argument("--device", metavar="NAME",
                   help="where to compute: cpu, gpu or auto (default: the config's device, else auto = GPU "
                        "if usable)")
    p.add_argument("--strict-device", action="store_true",
                   help="fail instead of falling back to the CPU when --device gpu is not usable "
                        "(also: XNN_STRICT_DEVICE=1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, validated like the file (repeatable), e.g. --set train.epochs=3")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    p.add_argument("--out", metavar="DIR",
                   help="run folder (default: runs/<config-name>-<timestamp>); must not exist or be empty")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run in its folder, with its config.yaml (change keys with "
                        "--set; no CONFIG or --out with it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


STOP_MESSAGE = "xnn: stopping after this step (saving the current state; press Ctrl-C again to abort)"


def _check_run_dir(run_dir: pathlib.Path) -> None:
    """Refuse a run folder that cannot be made or is not free, before any work."""
    if run_dir.exists():
        if not run_dir.is_dir():
            raise XnnError(f"--out {run_dir} is a file, not a folder; choose another --out")
        if any(run_dir.iterdir()):
            raise XnnError(f"run folder {run_dir} exists and is not empty; choose another --out "
                           f"or continue it with --resume {run_dir}")
        return
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise XnnError(f"--out {run_dir}: {parent} is a file, so no folder can be made below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise XnnError(f"--out {run_dir}: cannot create a folder in {parent} (permission denied)")


def _resolve(args):
    """(raw config, name, run folder, resumed) from the arguments, checked."""
    if args.resume:
        if args.config:
            raise XnnError(f"--resume {args.resume} continues that run with its own config.yaml; drop "
                           f"{args.config} (change keys with --set)")
        if args.out:
            raise XnnError(f"--resume {args.resume} continues in that folder; drop --out {args.out}")
        run_dir = pathlib.Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise XnnError(f"--resume {run_dir}: no config.yaml there; give the folder of an earlier run")
        return read_yaml(run_dir / "config.yaml"), run_dir.name, run_dir, True
    if not args.config:
        raise XnnError("no config given; e.g. python run.py configs/mnist_mlp.yaml (see --help)")
    name = pathlib.Path(args.config).stem
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = pathlib.Path(args.out) if args.out else pathlib.Path("runs") / f"{name}-{stamp}"
    return read_yaml(args.config), name, run_dir, False


def _finished(run_dir: pathlib.Path, before: set) -> list:
    """Names of what this run has written beyond its config and an empty metrics file."""
    now = {p.name for p in run_dir.iterdir() if not _empty_dir(p)} if run_dir.is_dir() else set()
    done = sorted(now - before - {"config.yaml", "metrics.jsonl"})
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size and "metrics.jsonl" not in before:
        done.insert(0, "metrics.jsonl")
    return done


def _empty_dir(p: pathlib.Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def _clean_up(run_dir: pathlib.Path, before: set, created: bool) -> None:
    """Remove what a run that finished nothing wrote (and the folder, if it made it)."""
    for name in ("config.yaml", "metrics.jsonl"):
        if name not in before:
            with contextlib.suppress(OSError):
                (run_dir / name).unlink()
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        if p.name not in before and _empty_dir(p):   # e.g. the segments/ or outputs/ folder it never filled
            with contextlib.suppress(OSError):
                p.rmdir()
    if created:
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def run(args) -> int:
    import xnn

    raw, name, run_dir, resumed = _resolve(args)
    kind = raw.get("experiment")
    if kind is None:
        raise XnnError(f"config: 'experiment' is missing; set it to one of: {', '.join(experiments.KINDS)}")
    module = experiments.get(kind)
    schema = experiments.schema_for(module)
    for assignment in args.overrides:
        apply_override(raw, assignment, schema)
    if args.device:
        raw["device"] = args.device
    if args.seed is not None:
        raw["seed"] = args.seed
    cfg = validate(raw, schema)
    if cfg["experiment"] != kind:
        raise XnnError(f"--set experiment={cfg['experiment']}: the experiment of a config cannot be changed; "
                       f"use a {cfg['experiment']} config instead")
    try:
        device = xnn.device(cfg["device"], strict=True if args.strict_device else None)
    except XnnError as e:
        raise XnnError(f"device = {cfg['device']!r}: {e}") from None
    cfg["device"] = device.name
    if not resumed:
        _check_run_dir(run_dir)
    state = module.prepare(cfg, device, resume_dir=run_dir if resumed else None)

    created = not run_dir.exists()
    before = {p.name for p in run_dir.iterdir()} if not created else set()
    stop = StopFlag(STOP_MESSAGE)
    ctx = None
    try:
        ctx = run_base.RunContext(run_dir, cfg, device, resumed=resumed, quiet=args.quiet, stop=stop)
        with stop.installed(), warnings.catch_warnings():
            # config.yaml is written after the stop handler is in place: the studio sends a stop
            # only once the file appears (xnn/studio/jobs.py), so none is lost to a run still starting
            ctx.write_config()
            ctx.info(f"xnn: {kind} on {device.name}, run folder {run_dir}")
            # a diverging run is reported once, as an error naming the key to change, not as
            # NumPy's overflow / invalid-value warnings on every step
            warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                    RuntimeWarning)
            result = module.run(state, ctx)
    except XnnError as e:
        if ctx is not None:
            ctx.close()
        done = _finished(run_dir, before)
        if resumed or done:
            shown = ", ".join(done[:6]) + (" ..." if len(done) > 6 else "")
            raise XnnError(f"{e} (the run stopped; what it finished is kept in {run_dir}"
                           + (f": {shown})" if done else ")")) from None
        _clean_up(run_dir, before, created)  # it finished nothing: leave nothing behind
        raise
    ctx.close()
    # the runner says whether work was left undone: a stop that came after its last step is no stop
    stopped = bool(result.get("stopped")) if isinstance(result, dict) else bool(stop)
    if stopped:
        print(f"xnn: stopped; outputs so far are in {run_dir} (continue with --resume {run_dir})", file=sys.stderr)
        return 130
    ctx.info(f"xnn: done; results in {run_dir}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .backends.numpy_backend import retain_freed_memory
    retain_freed_memory()       # this process is xnn's (a run or the studio): large arrays reuse freed memory
    prog = "run.py"
    if argv and argv[0] == "run":  # the `xnn run CONFIG` console script form
        argv, prog = argv[1:], "xnn run"
    try:
        if argv and argv[0] in ("studio", "--studio"):   # `xnn studio`, `python run.py --studio`
            from .studio import main as studio_main
            return studio_main(argv[1:])
        return run(build_parser(prog).parse_args(argv))
    except XnnError as e:
        print(f"xnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xnn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("xnn: error: out of memory; try a smaller image_size or batch size", file=sys.stderr)
        return 2
