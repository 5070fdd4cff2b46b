"""The studio's instant picture, timed as a user waits for it: from the request to the image.

    XNN_HOME=../shared/data python benchmarks/studio_instant.py [--rounds 5] [--size 512]

Starts the studio on 127.0.0.1 (the model is loaded and warmed at start, as ``xnn studio``
does), then asks it for AdaIN pictures through its HTTP API (gradio_client: upload, queue,
stylise, PNG encode, download) and times each call end to end.  Each round takes every example
photo once, with Starry Night (whose statistics the studio keeps after the first use) and, to
show the cost of styles the studio has not encoded yet, once with two styles at a new style size.
Prints the median and range, the CPU and the load average.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    from gradio_client import Client, handle_file

    from xnn.studio import serve
    runs = tempfile.mkdtemp(prefix="studio-bench-")
    studio, server, url = serve(runs)
    studio.warm.wait(300)          # the warm-up at start: the model, a first picture, the example paintings
    client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="studio-bench-dl-"))
    photos = [p for p in studio.example_photos()]
    cached, fresh = [], []
    try:
        for r in range(args.rounds):
            for photo in photos:
                t = time.perf_counter()
                client.predict(handle_file(str(photo)), None, ["starry_night"], "", 1.0, 512, args.size, False,
                               "AdaIN (any style)", api_name="/instant")
                cached.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.predict(handle_file(str(photos[0])), None, ["starry_night", "the_scream"], "", 1.0,
                           480 - 32 * r, args.size, False, "AdaIN (any style)", api_name="/instant")
            fresh.append(time.perf_counter() - t)
    finally:
        studio.close()
        server.close()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"{cpu}, {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"instant AdaIN at {args.size} px, request to image ({len(photos)} example photos x {args.rounds} rounds):")
    print(f"  known style:         median {statistics.median(cached):.2f} s "
          f"(range {min(cached):.2f}-{max(cached):.2f}, n={len(cached)})")
    print(f"  2 new styles:        median {statistics.median(fresh):.2f} s "
          f"(range {min(fresh):.2f}-{max(fresh):.2f}, n={len(fresh)})")


if __name__ == "__main__":
    main()
