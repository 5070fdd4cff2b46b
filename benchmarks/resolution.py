#!/usr/bin/env python3
"""Time and peak memory of style transfer at large sizes, tiled (issue: any resolution).

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its own:

    python benchmarks/resolution.py gatys 1024 --tile 512        # one Gatys evaluation (fwd + bwd)
    python benchmarks/resolution.py adain 3072 --tile 512        # one AdaIN stylisation
    python benchmarks/resolution.py all                           # the table in docs/benchmarks.md

A Gatys "iteration" here is one loss_and_grad of the default objective (relu4_2 content,
relu1_1..relu5_1 style, VGG19 to relu5_1) plus the optimiser's own arrays; L-BFGS takes about
one evaluation per iteration after its first few.  Sizes are the longer side of a 3:2 photo.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def _image(size):
    from xnn.data.images import load_image, resize_longer_side
    return resize_longer_side(load_image(os.path.join(REPO, "examples", "chelsea.png")), size)


def gatys(size: int, tile: int | None, repeats: int):
    import xnn
    from xnn.data.images import load_image, resize_longer_side
    from xnn.models import vgg19
    from xnn.style import StyleTransferObjective
    from xnn.style.tiled import TiledStyleObjective
    dev = xnn.device("cpu")
    vgg = vgg19(device=dev, include_top=False)
    vgg.truncate("relu5_1")
    obj = StyleTransferObjective(vgg, ["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
                                 content_weight=1, style_weight=1000, tv_weight=10)
    content = _image(size)
    style = resize_longer_side(load_image(os.path.join(REPO, "examples", "starry_night.jpg")), size)
    run = TiledStyleObjective(obj, tile) if tile else obj
    t0 = time.perf_counter()
    run.set_targets(vgg.preprocess(content), [vgg.preprocess(style)])
    targets_s = time.perf_counter() - t0
    x = vgg.preprocess(content)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        losses, grad = run.loss_and_grad(x)
        times.append(time.perf_counter() - t0)
    assert numpy.isfinite(losses["total"])
    return {"what": "gatys", "size": list(content.shape[:2]), "tile": tile, "targets_s": round(targets_s, 1),
            "evaluation_s": round(min(times), 1), "peak_rss_gb": round(peak_rss_gb(), 2),
            "tiles": len(run.tiles(x.shape)) if tile else 1}


def adain(size: int, tile: int | None, repeats: int):
    from xnn.data.images import load_image, resize_longer_side
    from xnn.models import AdaINStylizer
    st = AdaINStylizer()
    content = _image(size)
    stats = st.encode_style(resize_longer_side(load_image(os.path.join(REPO, "examples", "starry_night.jpg")), 512))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = st.stylize(content, stats, tile_size=tile)
        times.append(time.perf_counter() - t0)
    assert out.shape[:2] == content.shape[:2]
    return {"what": "adain", "size": list(content.shape[:2]), "tile": tile, "stylize_s": round(min(times), 1),
            "peak_rss_gb": round(peak_rss_gb(), 2)}


PLAN = [("gatys", 1024, None), ("gatys", 1024, 512), ("gatys", 2048, 512), ("gatys", 3072, 512),
        ("gatys", 4096, 512), ("adain", 1024, None), ("adain", 3072, None), ("adain", 3072, 512)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("gatys", "adain", "all"))
    ap.add_argument("size", type=int, nargs="?", default=1024)
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.what != "all":
        result = (gatys if args.what == "gatys" else adain)(args.size, args.tile, args.repeats)
        print(json.dumps(result))
        return
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for what, size, tile in PLAN:
        cmd = [sys.executable, __file__, what, str(size)] + (["--tile", str(tile)] if tile else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        print(out.stdout.strip() or f"{what} {size} tile {tile}: failed: {out.stderr.strip().splitlines()[-1:]}",
              flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
