#!/usr/bin/env python3
"""How fast a trained fast style network paints: one image at several sizes, end to end.

    python benchmarks/fast_style.py                                   # the shipped model, CPU
    python benchmarks/fast_style.py --model runs/.../model.npz --device gpu --sizes 512x512,1080x1920

Each size: a photo (examples/chelsea.png resized to it, so the numbers are a real picture's),
``--warmup`` untimed runs, then ``--runs`` timed ones of ``xnn.models.fast_style.stylise`` (upload,
the network, download, clip); the median and min-max are printed with the machine's load.
For a video's frames per second end to end (decode, network, optical flow, encode) run the
experiment itself: ``python run.py configs/fast_style.yaml --set input=examples/coffee_pan.mp4``
prints it and writes it to summary.json.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "examples" / "models" / "starry_night.npz"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="512x512,288x512,1080x1920", help="HxW, comma-separated")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    import xnn
    from xnn.data.images import load_image, resize_to
    from xnn.models import fast_style
    dev = xnn.device(args.device)
    from xnn.style.feedforward import FastStyleJob
    net, width = FastStyleJob(args.model, {}).stylizer(dev)      # the network as fast_style.yaml applies it
    photo = load_image(ROOT / "examples" / "chelsea.png")
    print(f"model {args.model} (width {width:g}), device {dev.name}, threads {getattr(dev, 'workers', 1)}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for size in args.sizes.split(","):
        h, w = map(int, size.lower().split("x"))
        image = resize_to(photo, (h, w))
        for _ in range(args.warmup):
            fast_style.stylise(net, image)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fast_style.stylise(net, image)
            dev.synchronize()
            times.append(time.perf_counter() - t)
        print(f"{h}x{w}: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}) over "
              f"{args.runs} runs; {1 / statistics.median(times):.2f} images/s")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
