"""Video stylisation: frames/s per temporal mode and engine, and the temporal error, side by side.

    python benchmarks/video.py                       # examples/coffee_pan.mp4 at 512 px, 2 rounds
    python benchmarks/video.py --rounds 3 --image-size 256 --input my_clip.mp4

Each case is a real `run.py configs/video.yaml` in its own process; the cases run in
interleaved rounds (none, stats, flow, ray, none, stats, ...), so a change in machine load
hits every case alike.  Reported per case: the median over the rounds of

* frames/s while stylising (summary.json: frames / seconds, after the model is loaded and,
  for ray, after Ray and its actor are up),
* the wall time of the whole command (start-up, Ray start and shut-down included),
* the temporal error (mean |out_t - warp(out_t-1)| on flow-consistent pixels, 8-bit levels),
* the stylisation kept at the summary's sample frames (style loss: 1 = as stylised as the
  per-frame output, 0 = the photo).

It prints a markdown table, with the load average before and after.
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {
    "local, temporal none": ["temporal=none"],
    "local, temporal stats": ["temporal=stats"],
    "local, temporal flow": ["temporal=flow"],
    "ray (1 actor), temporal flow": ["temporal=flow", "engine=ray"],
    "ray (2 actors, chunks of 36), temporal flow": ["temporal=flow", "engine=ray", "ray_actors=2", "chunk_frames=36"],
}


def run_case(sets, args, folder):
    cmd = [sys.executable, str(ROOT / "run.py"), str(ROOT / "configs" / "video.yaml"), "--quiet", "--device",
           args.device, "--out", str(folder), "--set", f"input={args.input}", "--set", f"image_size={args.image_size}"]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t
    s = json.loads((folder / "summary.json").read_text())
    kept = [x["stylisation_kept"] for x in s["samples"] if x.get("stylisation_kept") is not None]
    return {"fps": s["frames_per_s"], "wall": wall, "error": s["temporal_error_mean"],
            "kept": statistics.fmean(kept) if kept else None, "frames": s["frames"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=str(ROOT / "examples" / "coffee_pan.mp4"))
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", nargs="*", default=list(CASES), help="names from: " + "; ".join(CASES))
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    results = {c: [] for c in args.cases}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, case in enumerate(args.cases):
                res = run_case(CASES[case], args, pathlib.Path(tmp) / f"r{r}c{i}")
                results[case].append(res)
                print(f"round {r + 1} {case}: {res['fps']:.3f} frames/s, wall {res['wall']:.1f} s, "
                      f"error {res['error']:.2f}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    base = statistics.median(x["fps"] for x in results[args.cases[0]])
    frames = results[args.cases[0]][0]["frames"]
    print(f"\n{frames} frames of {pathlib.Path(args.input).name} at {args.image_size} px, {args.device}, "
          f"{os.cpu_count()} cores, {args.rounds} interleaved rounds; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after\n")
    print("| case | frames/s (median, min-max) | vs first case | wall s (median) | temporal error | stylisation kept |")
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        rs = results[case]
        fps = [x["fps"] for x in rs]
        kept = [x["kept"] for x in rs if x["kept"] is not None]
        print(f"| {case} | {statistics.median(fps):.3f} ({min(fps):.3f}-{max(fps):.3f}) | "
              f"{statistics.median(fps) / base:.2f} | {statistics.median(x['wall'] for x in rs):.1f} | "
              f"{statistics.median(x['error'] for x in rs):.2f} | "
              f"{f'{statistics.median(kept):.2f}' if kept else '-'} |")


if __name__ == "__main__":
    main()
