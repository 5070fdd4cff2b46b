"""The command line: ``python run.py CONFIG [options]`` or ``xnn run CONFIG [options]``.

User errors (XnnError) are printed as one line, ``xnn: error: ...``, with exit code 2
and no traceback; anything else is a bug and keeps its traceback.  Ctrl-C or SIGTERM
asks the runner to stop at the next step boundary, save what it has and a checkpoint,
and exit with code 130; a second Ctrl-C stops at once.
"""
from __future__ import annotations

import argparse
import datetime
import pathlib
import shutil
import signal
import sys

from . import experiments
from .experiments import base as run_base
from .config import apply_override, read_yaml, validate
from .errors import XnnError

EPILOG = """examples:
  python run.py configs/mnist_mlp.yaml
  python run.py configs/style.yaml --device gpu --set image_size=1024
  python run.py configs/mnist_cnn.yaml --set train.epochs=2 --out runs/quick
  python run.py --resume runs/style-20261128-101500

data and weights are read from $XNN_HOME (default ~/.cache/xnn) and downloaded there on
first use; XNN_HOME=../shared/data works offline in the development setup."""


def build_parser(prog="run.py"):
    p = argparse.ArgumentParser(prog=prog, description="Run an xnn experiment from a YAML config.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment config (YAML), e.g. configs/style.yaml")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"),
                   help="where to compute (default: the config's device, else auto = GPU if usable)")
    p.add_argument("--strict-device", action="store_true",
                   help="fail instead of falling back to the CPU when --device gpu is not usable "
                        "(also: XNN_STRICT_DEVICE=1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, validated like the file (repeatable), e.g. --set train.epochs=3")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    p.add_argument("--out", metavar="DIR",
                   help="run folder (default: runs/<config-name>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its folder (its config.yaml and checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _install_stop_handlers(ctx):
    def handler(signum, frame):
        if ctx.stop_requested:  # second request: stop now
            raise KeyboardInterrupt
        ctx.stop_requested = True
        print("\nxnn: stopping after this step (saving the current state; press Ctrl-C again to abort)",
              file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(args) -> int:
    import xnn

    if args.resume:
        run_dir = pathlib.Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise XnnError(f"--resume {run_dir}: no config.yaml there; give the folder of an earlier run")
        raw = read_yaml(run_dir / "config.yaml")
        name = run_dir.name
    else:
        if not args.config:
            raise XnnError("no config given; e.g. python run.py configs/mnist_mlp.yaml (see --help)")
        raw = read_yaml(args.config)
        name = pathlib.Path(args.config).stem
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

    device = xnn.device(cfg["device"], strict=True if args.strict_device else None)
    cfg["device"] = device.name
    state = module.prepare(cfg, device, resume_dir=run_dir if args.resume else None)

    if not args.resume:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = pathlib.Path(args.out) if args.out else pathlib.Path("runs") / f"{name}-{stamp}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise XnnError(f"run folder {run_dir} exists and is not empty; choose another --out "
                           f"or continue it with --resume {run_dir}")
    created = not run_dir.exists()
    ctx = run_base.RunContext(run_dir, cfg, device, resumed=bool(args.resume), quiet=args.quiet)
    ctx.write_config()
    ctx.info(f"xnn: {kind} on {device.name}, run folder {run_dir}")
    _install_stop_handlers(ctx)
    try:
        module.run(state, ctx)
    except XnnError:
        ctx.close()
        if created and not args.resume:
            shutil.rmtree(run_dir, ignore_errors=True)  # leave no partial run behind
        raise
    ctx.close()
    if ctx.stop_requested:
        print(f"xnn: stopped; outputs so far are in {run_dir} (continue with --resume {run_dir})", file=sys.stderr)
        return 130
    ctx.info(f"xnn: done; results in {run_dir}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "run.py"
    if argv and argv[0] == "run":  # the `xnn run CONFIG` console script form
        argv, prog = argv[1:], "xnn run"
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except XnnError as e:
        print(f"xnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xnn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("xnn: error: out of memory; try a smaller image_size or batch size", file=sys.stderr)
        return 2
