"""Style-transfer schedules side by side: final 512 px loss against wall time.

    python benchmarks/recipe.py                                  # the default against 300 single-scale iterations
    python benchmarks/recipe.py --rounds 2 --plot docs/recipe.png
    python benchmarks/recipe.py --schedule "single:image_size=512,num_iterations=300" \\
                                --schedule "c2f:image_size=[256,512],num_iterations=[150,60]"
    python benchmarks/recipe.py --plot docs/recipe.png --from-runs single=runs/a c2f=runs/b   # plot runs made

Each schedule is ``configs/style.yaml`` (or ``--config``) with ``--set`` overrides, run
as a user runs it (``python run.py ... --quiet``, its own process), in interleaved
rounds: the order of the schedules alternates from round to round so that a change in
the machine's load falls on both.  For each run the table gives the wall time of the
whole command, the optimisation time (``summary.json``'s ``total_time_s``) and the final
total loss, which every schedule evaluates the same way: the last stage's image at the
last stage's size under the same objective.  ``--plot`` draws the last stage's loss
against the run's elapsed time for every run (``metrics.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT = ["single300:image_size=512,num_iterations=300", "default:"]


def parse(spec: str):
    """"name:key=value,key=[a,b]" -> (name, ["key=value", "key=[a,b]"])."""
    name, _, sets = spec.partition(":")
    out, depth, cur = [], 0, ""
    for ch in sets:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return name, out


def run_once(config, sets, out_dir):
    cmd = [sys.executable, str(REPO / "run.py"), config, "--out", str(out_dir), "--quiet"]
    for kv in sets:
        cmd += ["--set", kv]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return read_run(out_dir, wall=time.perf_counter() - t)


def read_run(out_dir, wall=None):
    """A run folder's result: its final loss and times, and its last stage's loss curve (a run
    stopped early has no summary.json: its curve only)."""
    out_dir = pathlib.Path(out_dir)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = max((r.get("stage", 1) for r in rows), default=1)
    curve = [(r["elapsed_s"], r["total_loss"]) for r in rows if r.get("stage", 1) == last]
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {"wall_s": wall, "optimise_s": summary.get("total_time_s"), "loss": summary.get("total_loss"),
            "iterations": summary.get("iterations"), "curve": curve}


def plot(path, title, curves, target=None):
    """curves: [(label, [(seconds, loss), ...])]; target: a horizontal line (label, loss)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, (label, curve) in enumerate(curves):
        t, loss = zip(*curve)
        ax.plot(t, loss, color=f"C{k % 10}", label=label)
    if target is not None:
        ax.axhline(target[1], color="grey", lw=0.8, ls="--", label=target[0])
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the optimisation started")
    ax.set_ylabel("total loss of the last stage (512 px)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/style.yaml")
    ap.add_argument("--schedule", action="append", help="name:key=value,... (repeatable); default: "
                    + " and ".join(DEFAULT))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--plot", help="write loss against time for every run to this PNG")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--from-runs", nargs="+", metavar="LABEL=RUN_DIR",
                    help="plot finished or stopped run folders instead of running anything (the first one's "
                    "final loss is the line to reach); needs --plot")
    args = ap.parse_args(argv)
    if args.from_runs:
        runs = [(spec.partition("=")[0], read_run(spec.partition("=")[2])) for spec in args.from_runs]
        plot(args.plot, args.config, [(label, r["curve"]) for label, r in runs],
             (f"{runs[0][0]}: final loss", runs[0][1]["loss"]) if runs[0][1]["loss"] else None)
        return
    schedules = [parse(s) for s in (args.schedule or DEFAULT)]
    load0 = os.getloadavg()
    results = {name: [] for name, _ in schedules}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = schedules if r % 2 == 0 else schedules[::-1]
            for name, sets in order:
                res = run_once(args.config, sets, pathlib.Path(tmp) / f"{name}-{r}")
                res["load"] = os.getloadavg()[0]
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['wall_s']:.1f} s wall, {res['optimise_s']:.1f} s optimising, "
                      f"loss {res['loss']:.6g}, {res['iterations']} iterations, load {res['load']:.2f}", flush=True)
    load1 = os.getloadavg()
    base = schedules[0][0]
    print(f"\nload average {' '.join(f'{v:.2f}' for v in load0)} at the start, "
          f"{' '.join(f'{v:.2f}' for v in load1)} at the end\n")
    print(f"| schedule | settings | wall s (median) | optimising s | final loss (median) | wall / {base} | "
          f"loss / {base} |\n|---|---|---|---|---|---|---|")
    for name, sets in schedules:
        rs = results[name]
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(rs, results[base])]
        lr = [a["loss"] / b["loss"] for a, b in zip(rs, results[base])]
        print(f"| {name} | {', '.join(sets) or '(config as it is)'} | {statistics.median(r['wall_s'] for r in rs):.0f} | "
              f"{statistics.median(r['optimise_s'] for r in rs):.0f} | {statistics.median(r['loss'] for r in rs):.5g} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | "
              f"{statistics.median(lr):.3f} ({min(lr):.3f}–{max(lr):.3f}) |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"load": [load0, load1], "schedules": dict(schedules),
                                                       "results": results}, indent=1))
    if args.plot:
        curves = [(f"{name}: {', '.join(sets) or 'config'}" + (f" (round {i + 1})" if i else ""), res["curve"])
                  for name, sets in schedules for i, res in enumerate(results[name])]
        plot(args.plot, f"{args.config}: loss against time ({args.rounds} round(s))", curves,
             (f"{base}'s final loss", statistics.median(r["loss"] for r in results[base])))

if __name__ == "__main__":
    main()
