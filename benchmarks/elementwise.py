"""The compiled ReLU and max-pooling kernels against the generic ``xp`` code, in one process.

    python benchmarks/elementwise.py                        # cnn_train, vgg19_224, style_512
    python benchmarks/elementwise.py --only cnn_train --rounds 7

For each workload of ``workloads.py`` (xnn's side only), rounds alternate the two paths (order
alternating), each timed as the median of ``--steps`` steps after a warm-up step; the line per
workload is the median (min-max) over rounds of compiled / generic time.  The generic path is the
base ``Device``'s ReLU and pooling methods put in place of the CPU backend's for its turn.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

import xnn  # noqa: E402
from xnn.backends.base import Device  # noqa: E402
from xnn.backends.numpy_backend import NumpyDevice, retain_freed_memory  # noqa: E402

OPS = ("relu", "relu_backward", "max_pool", "max_pool_backward")


def use(compiled: dict, which: str):
    for name in OPS:
        setattr(NumpyDevice, name, compiled[name] if which == "compiled" else getattr(Device, name))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="cnn_train,vgg19_224,style_512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    retain_freed_memory()                      # as run.py and bench.py
    dev = xnn.device("cpu")
    if not dev.compiled_kernels:
        sys.exit("the compiled kernels are off (XNN_NUMBA=0 or numba missing): nothing to compare")
    compiled = {name: getattr(NumpyDevice, name) for name in OPS}
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name in args.only.split(","):
        step = workloads.XNN[name](dev, numpy.random.default_rng(0))[0]
        ratios = []
        for r in range(args.rounds):
            took = {}
            for which in (("generic", "compiled") if r % 2 == 0 else ("compiled", "generic")):
                use(compiled, which)
                step()
                times = []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - start)
                took[which] = float(numpy.median(times))
            ratios.append(took["compiled"] / took["generic"])
            print(f"  {name} round {r + 1}: generic {took['generic']:.4f} s, compiled {took['compiled']:.4f} s")
        use(compiled, "compiled")
        print(f"{name}: compiled / generic {numpy.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
