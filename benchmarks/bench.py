#!/usr/bin/env python3
"""xnn benchmark suite: the same workloads in xnn and (where installed) PyTorch, same machine, same run.

    python benchmarks/bench.py                      # CPU, every workload, writes docs/benchmarks.md
    python benchmarks/bench.py --device gpu         # the GPU (CuPy vs PyTorch CUDA)
    python benchmarks/bench.py --only conv_256x56,vgg19_224 --repeats 5 --no-write

Each (workload, framework) runs in a fresh subprocess, so peak memory is its own: warm-up
runs first, then ``--repeats`` timed runs; the table shows the median, the ratio
xnn / PyTorch (< 1 means xnn is faster), the achieved GFLOP/s and the peak memory
(resident-set growth on the CPU; the allocator's peak on the GPU).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

ORDER = ["conv_256x56", "mlp_epoch", "cnn_train", "vgg19_224", "style_256", "style_512", "adain_512"]


def _rss_mb():
    """This process's peak resident set (VmHWM, reset at exec, unlike ru_maxrss)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name, framework, device_name, repeats, warmup):
    import numpy
    import workloads
    rng = numpy.random.default_rng(0)
    if framework == "xnn":
        import xnn
        dev = xnn.device(device_name, strict=True)
        base = _rss_mb()
        step, flops, units = workloads.XNN[name](dev, rng)
        if dev.name == "gpu":
            import cupy
            pool = cupy.get_default_memory_pool()
    else:
        import torch
        torch.set_num_threads(os.cpu_count())
        device = torch.device("cuda" if device_name == "gpu" else "cpu")
        base = _rss_mb()
        step = workloads.TORCH[name](torch, device, rng)
        flops = units = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = _rss_mb() - base
    if device_name == "gpu":
        if framework == "xnn":
            peak = pool.total_bytes() / 2**20
        else:
            peak = torch.cuda.max_memory_allocated() / 2**20
    return {"median_s": statistics.median(times), "times": times, "flops": flops, "units": units,
            "peak_mb": peak}


def run_one(name, framework, device, repeats, warmup, env):
    cmd = [sys.executable, __file__, "--worker", name, framework, device, str(repeats), str(warmup)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine_info(device):
    import numpy
    import scipy
    info = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "platform": platform.platform(), "cores": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info
        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            info["blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')} " \
                           f"({blas[0].get('architecture')} kernels, {blas[0].get('num_threads')} threads)"
    except ImportError:
        pass
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    try:   # other work on the machine skews every number: record it
        info["load average at start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    try:
        from importlib.metadata import version
        info["torch"] = version("torch")
    except Exception:  # noqa: BLE001
        info["torch"] = "not installed"
    if device == "gpu":
        try:
            import cupy
            info["cupy"] = cupy.__version__
            info["gpu"] = info.get("gpu") or cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception as e:  # noqa: BLE001
            info["cupy"] = f"unusable ({type(e).__name__})"
    return info


def table(results, device):
    lines = ["| workload | unit | xnn (s) | PyTorch (s) | xnn / PyTorch | xnn GFLOP/s | PyTorch GFLOP/s | "
             "xnn peak MB | PyTorch peak MB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        x, t = r.get("xnn", {}), r.get("torch", {})

        def cell(d, key, fmt):
            if "error" in d:
                return "error"
            v = d.get(key)
            return fmt.format(v) if v is not None else "–"
        ratio = (f"**{x['median_s'] / t['median_s']:.2f}**" if "median_s" in x and "median_s" in t else "–")
        flops = x.get("flops")
        gx = f"{flops / x['median_s'] / 1e9:.0f}" if flops and "median_s" in x else "–"
        gt = f"{flops / t['median_s'] / 1e9:.0f}" if flops and "median_s" in t else "–"
        lines.append(f"| {name} | {x.get('units', '–')} | {cell(x, 'median_s', '{:.4f}')} | "
                     f"{cell(t, 'median_s', '{:.4f}')} | {ratio} | {gx} | {gt} | {cell(x, 'peak_mb', '{:.0f}')} | "
                     f"{cell(t, 'peak_mb', '{:.0f}')} |")
        for fw, d in (("xnn", x), ("PyTorch", t)):
            if "error" in d:
                lines.append(f"|  ↳ {fw} error: {d['error']} |||||||||")
    return "\n".join(lines)


def write_doc(path, device, info, results, args):
    path = pathlib.Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- bench:{device}:begin -->", f"<!-- bench:{device}:end -->"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = "\n".join([
        begin, f"### {device.upper()} — measured {stamp} by `python benchmarks/bench.py --device {device}`", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        f"Median of {args.repeats} timed runs after {args.warmup} warm-up run(s); each framework in its own process.",
        "", table(results, device), end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--only", help="comma-separated workloads: " + ", ".join(ORDER))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="time xnn only")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    ap.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        name, fw, dev, repeats, warmup = args.worker
        print(json.dumps(worker(name, fw, dev, int(repeats), int(warmup))))
        return 0
    names = args.only.split(",") if args.only else ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        ap.error(f"unknown workload {unknown[0]!r}; choose from {', '.join(ORDER)}")
    import workloads
    import importlib.util
    have_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: timing xnn only (pip install 'xnn[bench]' for the comparison)")
    info = machine_info(args.device)
    print("machine:", json.dumps(info))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    results = {}
    for name in names:
        results[name] = {"xnn": run_one(name, "xnn", args.device, args.repeats, args.warmup, env)}
        if have_torch and name in workloads.TORCH:
            results[name]["torch"] = run_one(name, "torch", args.device, args.repeats, args.warmup, env)
        x, t = results[name]["xnn"], results[name].get("torch", {})
        line = f"{name:12s} xnn {x.get('median_s', float('nan')):8.4f} s"
        if "median_s" in t:
            line += f"   torch {t['median_s']:8.4f} s   ratio {x.get('median_s', float('nan')) / t['median_s']:.2f}"
        for d in (x, t):
            if "error" in d:
                line += f"   error: {d['error']}"
        print(line, flush=True)
    print()
    print(table(results, args.device))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    if not args.no_write:
        write_doc(args.doc, args.device, info, results, args)
        print(f"\nwrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
