"""Where the time of one Gatys style step goes: per layer, and per kind of work.

    python benchmarks/profile_style.py                    # 512 px, markdown tables on stdout
    python benchmarks/profile_style.py --size 256 --reps 5
    python benchmarks/profile_style.py --sample           # also a py-spy sample of the whole step

One step is what ``configs/style.yaml`` runs per L-BFGS evaluation: VGG19 (random frozen
weights, the real ones cost the same) forward to relu5_1 and one backward to the image
with gradients injected at relu1_1, 2_1, 3_1, 4_1, 4_2 and 5_1 (benchmarks/workloads.py).

1. **Per layer**: the step is run layer by layer, each layer's forward and backward timed
   on its own (median of ``--reps`` steps after a warm-up), with the algorithm each conv
   chose and its rate in GFLOP/s (arithmetic done directly, 2 per multiply-add, so a
   Winograd layer can pass the GEMM rate).  "inject" rows are the additions of the style
   and content gradients into the flowing gradient.
2. **Roofline**: the machine's sgemm rate, one thread and all threads, on the shapes of
   Winograd's batched GEMM (tiles x C @ C x O) and a large square GEMM.
3. **Kinds of work** (``--sample``): py-spy (``pip install py-spy``) samples the whole
   step, all threads, native frames included; each sample is charged to the innermost
   line of xnn's code on its stack, and the lines are grouped: GEMM, Winograd transforms,
   tile gathering and scattering, im2col copies, padding, element-wise layers.
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from workloads import _style_grad_shapes  # noqa: E402

import xnn  # noqa: E402
from xnn.layers import Conv2d, layout  # noqa: E402
from xnn.models import vgg19  # noqa: E402


def build(size, seed=0):
    dev = xnn.device("cpu")
    rng = numpy.random.default_rng(seed)
    vgg = vgg19(weights=None, include_top=False, device=dev)
    vgg.truncate("relu5_1")
    x = rng.standard_normal((1, 3, size, size), dtype=numpy.float32)
    grads = {k: rng.standard_normal((1, h, w, c), dtype=numpy.float32).transpose(0, 3, 1, 2)
             for k, (c, h, w) in _style_grad_shapes(size).items()}
    return vgg, x, grads


def timed_step(vgg, x, grads):
    """One step layer by layer: {(layer, "fwd"|"bwd"|"inject"): seconds}."""
    net, times = vgg.net, {}
    for name in net.names:
        t = time.perf_counter()
        x = net.layers[name].forward(x)
        times[(name, "fwd")] = time.perf_counter() - t
    g = None
    for name in reversed(net.names):
        if name in grads:
            t = time.perf_counter()
            g = grads[name] if g is None else layout.add(numpy, g, grads[name])
            times[(name, "inject")] = time.perf_counter() - t
        if g is None:
            continue
        t = time.perf_counter()
        g = net.layers[name].backward(g)
        times[(name, "bwd")] = time.perf_counter() - t
    return times


def per_layer(size, reps):
    vgg, x, grads = build(size)
    timed_step(vgg, x, grads)                         # warm-up: caches, page faults
    runs = [timed_step(vgg, x, grads) for _ in range(reps)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    h, rows, total = size, [], sum(med.values())
    for name in vgg.net.names:
        layer = vgg.net.layers[name]
        if name.startswith("pool"):
            h //= 2
        for kind in ("fwd", "bwd", "inject"):
            if (name, kind) not in med:
                continue
            t = med[(name, kind)]
            flops = algo = ""
            if isinstance(layer, Conv2d) and kind != "inject":
                algo = layer.last_algorithms.get("fwd" if kind == "fwd" else "dx", "")
                f = 2 * h * h * layer.in_channels * layer.out_channels * 9
                flops = f"{f / t / 1e9:.0f}"
            rows.append((name, kind, h, algo, t, flops))
    return rows, total


def gemm_rates():
    """GFLOP/s of float32 GEMMs: the shapes of Winograd's batched multiply, and a square one."""
    from threadpoolctl import threadpool_limits
    out = []
    shapes = [("Winograd batched, 64 ch", 36, 2048, 64, 64), ("Winograd batched, 256 ch", 36, 1024, 256, 256),
              ("Winograd batched, 512 ch", 36, 512, 512, 512), ("square 2048", 1, 2048, 2048, 2048)]
    rng = numpy.random.default_rng(0)
    for threads in (1, None):
        with threadpool_limits(limits=threads, user_api="blas"):
            for label, b, m, k, n in shapes:
                a = rng.standard_normal((b, m, k), dtype=numpy.float32)
                w = rng.standard_normal((b, k, n), dtype=numpy.float32)
                numpy.matmul(a, w)
                ts = []
                for _ in range(5):
                    t = time.perf_counter()
                    numpy.matmul(a, w)
                    ts.append(time.perf_counter() - t)
                out.append((label, "1" if threads else str(os.cpu_count()), 2 * b * m * k * n / min(ts) / 1e9))
    return out


#: (substring of an xnn source line, category) for the sampled profile; first match wins
CATEGORIES = [
    ("xp.matmul(cols, wm", "GEMM (im2col)"), ("xp.matmul(v, u)", "GEMM (Winograd batched)"),
    ("(bb @ d)", "Winograd input transform"), ("(aa @ mm", "Winograd output transform"),
    ("ascontiguousarray(tiles)", "Winograd tile gather (copy)"), ("target[...] = y", "Winograd scatter (copy)"),
    ("xp.add(y[", "Winograd scatter (copy)"), ("transpose(2, 3, 0, 4, 1, 5)", "Winograd scatter (copy)"),
    ("im2col(", "im2col copy"), ("gg @ wm", "weight transforms"), ("flipped_weights", "weight transforms"),
    ("ascontiguousarray(wm", "weight transforms"), ("out[", "padding"), ("xp.pad(", "padding"),
]


def sampled(size, reps, rate=250):
    """py-spy samples of ``reps`` steps (after the build and a warm-up): {category: share}."""
    with tempfile.TemporaryDirectory() as tmp:
        script, raw = pathlib.Path(tmp) / "step.py", pathlib.Path(tmp) / "raw.txt"
        script.write_text(
            "import sys, time; sys.path[:0] = [%r, %r]\n" % (str(HERE.parent), str(HERE)) +
            "from profile_style import build\n"
            "from xnn.backends.numpy_backend import retain_freed_memory; retain_freed_memory()\n"
            f"vgg, x, grads = build({size})\n"
            "vgg.features(x, list(grads)); vgg.backward(inject=grads)\n"
            "print('ready', flush=True); time.sleep(0.5)\n"
            f"for _ in range({reps}):\n"
            "    vgg.features(x, list(grads)); vgg.backward(inject=grads)\n")
        child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()                   # built and warm: sample from here to its end
        subprocess.run(["py-spy", "record", "--native", "-r", str(rate), "-f", "raw", "-o", str(raw),
                        "--pid", str(child.pid)], check=True, capture_output=True)
        child.wait()
        counts = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            counts[categorise(stack)] += int(n)
    busy = {k: v for k, v in counts.items() if k != "idle"}
    total = sum(busy.values())
    return {k: v / total for k, v in sorted(busy.items(), key=lambda kv: -kv[1])}


#: frames of a thread that waits (for work, for a lock, for the other worker)
IDLE = ("_queue_SimpleQueue_get", "Condition.wait", "Future.result", "PyThread_acquire_lock", "time.sleep")


def categorise(stack: str) -> str:
    if any(mark in stack for mark in IDLE):
        return "idle"
    ours = [f for f in stack.split(";") if "xnn/" in f]
    if not ours:
        return "outside xnn (interpreter, start-up)"
    inner = ours[-1]
    path, _, lineno = inner.rpartition("(")[2].rstrip(")").rpartition(":")
    if path.endswith("numpy_kernels.py"):
        name = inner.split(" (")[0]
        return f"Winograd {'input' if 'input' in name else 'output'} transform (compiled)"
    try:
        src = (HERE.parent / path[path.index("xnn/"):]).read_text().splitlines()[int(lineno) - 1]
    except (ValueError, OSError, IndexError):
        src = ""
    for needle, cat in CATEGORIES:
        if needle in src:
            return cat
    fn = inner.split(" (")[0]
    module = path.rsplit("/", 1)[-1]
    if module in ("activation.py", "pool.py", "layout.py", "model.py"):
        return f"element-wise ({module[:-3]})"
    return f"other: {fn} ({module}:{lineno})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sample", action="store_true", help="also sample the step with py-spy")
    args = ap.parse_args(argv)
    from xnn.backends.numpy_backend import retain_freed_memory
    retain_freed_memory()                   # as run.py does: freed arrays reused, no page faults
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy "
          f"{numpy.__version__}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    rows, total = per_layer(args.size, args.reps)
    print(f"### One style step at {args.size} px, layer by layer (median of {args.reps}): {total:.3f} s\n")
    print("| layer | pass | side | algorithm | ms | share | GFLOP/s (direct) |\n|---|---|---|---|---|---|---|")
    for name, kind, h, algo, t, flops in rows:
        print(f"| {name} | {kind} | {h} | {algo} | {t * 1e3:.1f} | {100 * t / total:.1f} % | {flops} |")
    print("\n| group | ms | share |\n|---|---|---|")
    by_kind = collections.defaultdict(float)
    for name, kind, _, _, t, _ in rows:
        key = name.rstrip("_0123456789") + " " + kind if kind != "inject" else "inject"
        by_kind[key] += t
    for k, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {t * 1e3:.0f} | {100 * t / total:.1f} % |")
    print("\n### sgemm roofline\n\n| shape | threads | GFLOP/s |\n|---|---|---|")
    for label, threads, rate in gemm_rates():
        print(f"| {label} | {threads} | {rate:.0f} |")
    if args.sample:
        shares = sampled(args.size, args.reps)
        print("\n### Kinds of work in the step (py-spy samples, all threads, idle waits left out)\n")
        print("| work | share of busy samples |\n|---|---|")
        for k, v in shares.items():
            if v < 0.005:
                continue
            print(f"| {k} | {100 * v:.1f} % |")


if __name__ == "__main__":
    main()
