#!/usr/bin/env python3
"""xnn benchmark suite: the same workloads in xnn and (where installed) PyTorch, same machine, same run.

    python benchmarks/bench.py                      # CPU, every workload, writes docs/benchmarks.md
    python benchmarks/bench.py --device gpu         # the GPU (CuPy vs PyTorch CUDA)
    python benchmarks/bench.py --only conv_256x56,vgg19_224 --rounds 5 --no-write
    python benchmarks/bench.py --quick --no-write   # 5 rounds of 1 run each: a quick look

Interleaved A/B rounds.  For each workload, one xnn and one PyTorch worker process are
started (peak memory is each process's own) and build the workload side by side; then each
warms up (``--warmup`` runs, in turn), and ``--rounds`` rounds follow: in each round one
side runs ``--repeats`` timed runs, then the other (the order alternates from round to round,
with a short pause between so that neither side's spinning threads overlap the other's
timing).  The round's ratio is xnn's median over PyTorch's median; the table gives the
median ratio over the rounds and its min-max (< 1 means xnn is faster), the median times,
the achieved GFLOP/s, the peak memory (CPU: growth of the worker's peak resident set from
just before the workload is built; GPU: peak bytes allocated in live arrays during one
steady-state step, ``torch.cuda.max_memory_allocated()`` and the same quantity read from
CuPy's memory pool) and the 1-minute load average when the workload started.

A target counts as met when the largest round ratio is at or under it, as not met when the
smallest is over it, and as not decided in between.

PyTorch gets its best settings: channels_last model and input (``--torch-layout nchw`` for
the other), ``torch.set_num_threads`` = the cores this process may use, eval mode and
``torch.inference_mode()`` for inference, warm-up runs; on CUDA ``cudnn.benchmark = True``
and TF32 off for convolutions and matmuls unless xnn uses TF32 too (``XNN_TF32=1``).
Both sides' workers keep freed memory for reuse as ``run.py`` does
(``xnn.backends.numpy_backend.retain_freed_memory``; ``XNN_RETAIN_MEMORY=0`` turns it off for
both): it speeds PyTorch up more than xnn (MNIST CNN step 0.27 against 0.38 s, 512x512 fast
style image 0.31 against 0.51 s; xnn's 0.58 / 0.57 and 0.27 / 0.32 s).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

ORDER = ["conv_256x56", "mlp_epoch", "cnn_train", "vgg19_224", "style_256", "style_512", "adain_512",
         "fast_style_512", "train_step_256"]
#: The targets (xnn / PyTorch time; peak memory of xnn's style_512 step), from the acceleration issue
#: (22); mlp_epoch keeps the earlier one.  The stretch goal for style_512 is 0.6.
RATIO_TARGETS = {"conv_256x56": 1.0, "mlp_epoch": 0.7, "cnn_train": 1.0, "vgg19_224": 0.7, "style_256": 0.8,
                 "style_512": 0.8, "adain_512": 0.7, "fast_style_512": 0.8, "train_step_256": 1.0}
PEAK_TARGETS_MB = {"style_512": 1500}
#: --budget stops a workload's rounds early, but never before this many
MIN_ROUNDS = 3
FRAMEWORKS = ("xnn", "torch")
LABEL = {"xnn": "xnn", "torch": "PyTorch"}


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


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _xnn_tf32():
    return os.environ.get("XNN_TF32") == "1" or os.environ.get("CUPY_TF32") == "1"


def _loadavg():
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# ------------------------------------------------------------------ worker process
def _cupy_peak_mb(cupy, step):
    """Peak bytes in use in CuPy's default pool during one step: the pool's used bytes at
    the start, then sampled after every allocation (the only time the count can rise)."""
    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    high = [pool.used_bytes()]

    def alloc(size):
        mem = pool.malloc(size)
        used = pool.used_bytes()
        if used > high[0]:
            high[0] = used
        return mem
    cupy.cuda.set_allocator(alloc)
    try:
        step()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return high[0] / 2**20, pool.total_bytes() / 2**20


def worker(name, framework, device_name, layout):
    """Build one workload, then serve commands on stdin: "run N" (N timed steps), "peak", "quit".
    Replies are JSON lines on the original stdout; anything the libraries print goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    # both sides as run.py runs: glibc's malloc keeps freed memory for the next large array instead of
    # mapping it afresh (XNN_RETAIN_MEMORY=0 turns it off for both); PyTorch gains more from it than xnn
    from xnn.backends.numpy_backend import retain_freed_memory
    retained = retain_freed_memory()
    import numpy
    import workloads
    rng = numpy.random.default_rng(0)
    info = {"retain_memory": retained}
    if framework == "xnn":
        import xnn
        dev = xnn.device(device_name, strict=True)
        gpu = dev.name == "gpu"
        base = _rss_mb()
        step, flops, units = workloads.XNN[name](dev, rng)
        if gpu:
            import cupy
            info["tf32"] = bool(getattr(dev, "tf32", False))
    else:
        import torch
        torch.set_num_threads(_cores())
        gpu = device_name == "gpu"
        device = torch.device("cuda" if gpu else "cpu")
        if gpu:
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = _xnn_tf32()
            torch.backends.cuda.matmul.allow_tf32 = _xnn_tf32()
            info.update(cudnn=torch.backends.cudnn.version(), tf32=_xnn_tf32())
        info.update(threads=torch.get_num_threads(), layout=layout)
        base = _rss_mb()
        step = workloads.TORCH[name](torch, device, rng, layout)
        flops = units = None
    send({"ready": True, "flops": flops, "units": units, "info": info})
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "run":
            times = []
            for _ in range(int(arg[0])):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            send({"times": times})
        elif cmd == "peak":
            if not gpu:
                send({"peak_mb": _rss_mb() - base})
            elif framework == "xnn":
                peak, pool_total = _cupy_peak_mb(cupy, step)
                send({"peak_mb": peak, "pool_total_mb": pool_total})
            else:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                step()
                send({"peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                      "reserved_mb": torch.cuda.max_memory_reserved() / 2**20})
        elif cmd == "quit":
            break
    return 0


class Worker:
    """One (workload, framework) worker process and its line protocol."""

    def __init__(self, name, framework, device, layout, env):
        self.err = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, __file__, "--worker", name, framework, device, layout]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, env=env, bufsize=1)

    def ask(self, cmd=None):
        if cmd is not None:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            self.err.seek(0)
            last = (self.err.read().strip().splitlines() or [f"exit code {self.p.returncode}"])[-1]
            raise RuntimeError(last[:200])
        return json.loads(line)

    def close(self):
        try:
            if self.p.poll() is None:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
                self.p.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()
        self.err.close()


def run_workload(name, fws, args, env):
    """Interleaved rounds of one workload; returns {fw: result} (+ "ratios")."""
    out = {fw: {} for fw in fws}
    workers = {}
    for fw in fws:     # both build at once (untimed)
        workers[fw] = Worker(name, fw, args.device, args.torch_layout, env)
    live = []
    for fw in fws:
        try:
            ready = workers[fw].ask()
            out[fw].update(info=ready["info"])
            if fw == "xnn":
                out[fw].update(flops=ready["flops"], units=ready["units"])
            live.append(fw)
        except RuntimeError as e:
            out[fw]["error"] = str(e)
    settle = 0.3 if args.device == "cpu" else 0.05
    rounds = {fw: [] for fw in live}

    def run(fw, n):
        time.sleep(settle)
        try:
            return workers[fw].ask(f"run {n}")["times"]
        except RuntimeError as e:
            out[fw]["error"] = str(e)
            live.remove(fw)
            return None
    repeats = args.repeats
    try:
        t0 = time.perf_counter()
        for fw in list(live):
            run(fw, args.warmup)
        # a slow workload or a loaded machine: one run per side per round when the rounds at
        # the warm-up's pace would not fit in the budget
        if args.warmup and (time.perf_counter() - t0) / args.warmup * repeats * MIN_ROUNDS > args.budget:
            repeats = 1
        t0 = time.perf_counter()
        for r in range(args.rounds):
            for fw in (list(live) if r % 2 == 0 else list(reversed(live))):
                times = run(fw, repeats)
                if times is not None:
                    rounds[fw].append(times)
            if r + 1 >= MIN_ROUNDS and time.perf_counter() - t0 > args.budget:
                break       # a slow workload (or a loaded machine): fewer rounds, said in the table
        for fw in list(live):
            try:
                out[fw].update(workers[fw].ask("peak"))
            except RuntimeError as e:
                out[fw]["error"] = str(e)
    finally:
        for w in workers.values():
            w.close()
    for fw in fws:
        if rounds.get(fw) and "error" not in out[fw]:
            med = [statistics.median(t) for t in rounds[fw]]
            out[fw].update(rounds=rounds[fw], round_medians=med, median_s=statistics.median(med))
    out["rounds"] = f"{min((len(v) for v in rounds.values()), default=0)} x {repeats}"
    if all("round_medians" in out[fw] for fw in FRAMEWORKS if fw in fws) and len(fws) == 2:
        ratios = [a / b for a, b in zip(out["xnn"]["round_medians"], out["torch"]["round_medians"])]
        out["ratios"] = ratios
    return out


# ------------------------------------------------------------------ report
def machine_info(device):
    import numpy
    import scipy
    info = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "platform": platform.platform(), "cores": _cores()}
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
    try:
        from xnn.backends.numpy_backend import NumpyDevice
        from importlib.metadata import version as _version
        info["numba"] = _version("numba") + (" (compiled kernels on)" if NumpyDevice().compiled_kernels
                                             else " (compiled Winograd transforms off)")
    except Exception:  # noqa: BLE001
        info["numba"] = "not installed (generic Winograd transforms)"
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XNN_BLAS_THREADS", "XNN_RETAIN_MEMORY", "XNN_NUMBA"):
        info[var] = os.environ.get(var, "(unset)")
    try:
        from importlib.metadata import version
        info["torch"] = version("torch")
    except Exception:  # noqa: BLE001
        info["torch"] = "not installed"
    if device == "gpu":
        info["TF32"] = "on (XNN_TF32=1), both sides" if _xnn_tf32() else "off, both sides"
        try:
            import cupy
            info["cupy"] = cupy.__version__
            info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception as e:  # noqa: BLE001
            info["cupy"] = f"unusable ({type(e).__name__})"
    return info


def _ratio_stats(r):
    ratios = r.get("ratios")
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def verdict(lo, hi, target):
    return "met" if hi <= target else ("**not met**" if lo > target else "not decided")


def table(results, device):
    mem = "peak alloc MB" if device == "gpu" else "peak MB"
    lines = [f"| workload | unit | xnn (s) | PyTorch (s) | xnn / PyTorch | min–max over rounds | xnn GFLOP/s | "
             f"PyTorch GFLOP/s | xnn {mem} | PyTorch {mem} | rounds x runs | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        x, t = r.get("xnn", {}), r.get("torch", {})

        def cell(d, key, fmt):
            if "error" in d:
                return "error"
            v = d.get(key)
            return fmt.format(v) if v is not None else "–"
        st = _ratio_stats(r)
        ratio, spread = (f"**{st[0]:.2f}**", f"{st[1]:.2f}–{st[2]:.2f}") if st else ("–", "–")
        flops = x.get("flops")
        gx = f"{flops / x['median_s'] / 1e9:.0f}" if flops and "median_s" in x else "–"
        gt = f"{flops / t['median_s'] / 1e9:.0f}" if flops and "median_s" in t else "–"
        lines.append(f"| {name} | {x.get('units', '–')} | {cell(x, 'median_s', '{:.4f}')} | "
                     f"{cell(t, 'median_s', '{:.4f}')} | {ratio} | {spread} | {gx} | {gt} | "
                     f"{cell(x, 'peak_mb', '{:.0f}')} | {cell(t, 'peak_mb', '{:.0f}')} | {r.get('rounds', '–')} | "
                     f"{r.get('load', '–')} |")
        for fw, d in (("xnn", x), ("PyTorch", t)):
            if "error" in d:
                lines.append(f"|  ↳ {fw} error: {d['error']} |||||||||||")
    return "\n".join(lines)


def target_table(results):
    lines = ["| target | median (min–max) | status |", "|---|---|---|"]
    for name, target in RATIO_TARGETS.items():
        st = _ratio_stats(results.get(name, {}))
        if st:
            lines.append(f"| {name} <= {target} | {st[0]:.2f} ({st[1]:.2f}–{st[2]:.2f}) | "
                         f"{verdict(st[1], st[2], target)} |")
    for name, target in PEAK_TARGETS_MB.items():
        peak = results.get(name, {}).get("xnn", {}).get("peak_mb")
        if peak is not None:
            lines.append(f"| {name} xnn peak <= {target} MB | {peak:.0f} MB | "
                         f"{'met' if peak <= target else '**not met**'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def settings_line(args, results):
    torch_info = next((r["torch"]["info"] for r in results.values() if r.get("torch", {}).get("info")), {})
    parts = [f"Up to {args.rounds} interleaved rounds (order alternating) of {args.repeats} timed run(s) per "
             f"side, after {args.warmup} warm-up run(s) per side; a workload whose rounds pass {args.budget:.0f} s "
             f"gets fewer rounds (at least {MIN_ROUNDS}), one whose warm-up says they would gets 1 run per "
             f"round (the rounds x runs column); times are medians of the per-round medians, the ratio is "
             f"the median of the per-round ratios"]
    xnn_info = next((r["xnn"]["info"] for r in results.values() if r.get("xnn", {}).get("info")), {})
    retained = xnn_info.get("retain_memory", torch_info.get("retain_memory"))
    if retained is not None:
        parts.append("both sides keep freed memory for reuse (glibc malloc, as run.py)" if retained
                     else "freed memory handed back to the system (glibc's default)")
    if torch_info:
        parts.append(f"PyTorch: {torch_info.get('threads')} threads, {torch_info.get('layout')}")
        if "cudnn" in torch_info:
            parts.append(f"cudnn {torch_info['cudnn']}, cudnn.benchmark on, TF32 "
                         f"{'on' if torch_info.get('tf32') else 'off'}")
    return "; ".join(parts) + "."


def command_line(argv):
    env = []
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var not in os.environ:
            env.append(f"-u {var}")
    prefix = f"env {' '.join(env)} " if env else ""
    return prefix + "python benchmarks/bench.py " + " ".join(shlex.quote(a) for a in argv)


def write_doc(path, device, info, results, args, argv, load_end, elapsed):
    path = pathlib.Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- bench:{device}:begin -->", f"<!-- bench:{device}:end -->"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    targets = target_table(results)
    block = [begin, f"### {device.upper()} — measured {stamp} by `{command_line(argv).strip()}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             f"Load average (1, 5, 15 min): {info.get('load average at start')} at the start, "
             f"{load_end} at the end; the run took {elapsed / 60:.1f} min.", "",
             settings_line(args, results), "", table(results, device)]
    if targets:
        block += ["", "Targets (met: every round at or under the target; not met: every round over it; "
                      "otherwise not decided):", "", targets]
    block.append(end)
    block = "\n".join(block)
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(args, info, results, argv, load_end, elapsed):
    pathlib.Path(args.json).write_text(json.dumps(
        {"machine": info, "load average at end": load_end, "seconds": elapsed, "command": command_line(argv),
         "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup, "budget_s": args.budget,
         "results": results}, indent=2))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--only", help="comma-separated workloads: " + ", ".join(ORDER))
    ap.add_argument("--rounds", type=int, help="interleaved A/B rounds (default 7 on the CPU, 5 on the GPU)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side per round (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs per side (default 1)")
    ap.add_argument("--budget", type=float, default=100,
                    help="seconds of timed rounds per workload after which no new round starts "
                         f"(at least {MIN_ROUNDS} rounds are run; default 100)")
    ap.add_argument("--quick", action="store_true", help="5 rounds of 1 timed run each")
    ap.add_argument("--torch-layout", choices=("channels_last", "nchw"), default="channels_last")
    ap.add_argument("--no-torch", action="store_true", help="time xnn only")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    ap.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    if args.quick:
        args.rounds, args.repeats = args.rounds or 5, 1
    args.rounds = args.rounds or (7 if args.device == "cpu" else 5)
    names = args.only.split(",") if args.only else ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        ap.error(f"unknown workload {unknown[0]!r}; choose from {', '.join(ORDER)}")
    import importlib.util

    import workloads
    have_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: timing xnn only (pip install 'xnn[bench]' for the comparison)")
    info = machine_info(args.device)
    info["load average at start"] = _loadavg()
    print("machine:", json.dumps(info), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    results = {}
    t_start = time.perf_counter()
    for name in names:
        fws = ["xnn"] + (["torch"] if have_torch and name in workloads.TORCH else [])
        load = _loadavg().split()[0]
        results[name] = run_workload(name, fws, args, env)
        results[name]["load"] = load
        x, t = results[name]["xnn"], results[name].get("torch", {})
        line = f"{name:12s} load {load:>5s}  xnn {x.get('median_s', float('nan')):8.4f} s"
        st = _ratio_stats(results[name])
        if st:
            line += f"   torch {t['median_s']:8.4f} s   ratio {st[0]:.2f} ({st[1]:.2f}-{st[2]:.2f})"
        for d in (x, t):
            if "error" in d:
                line += f"   error: {d['error']}"
        print(line, flush=True)
        if args.json:   # after every workload, so that an interrupted run keeps what it measured
            write_json(args, info, results, argv, _loadavg(), time.perf_counter() - t_start)
    elapsed = time.perf_counter() - t_start
    load_end = _loadavg()
    print(f"\nload average at the end: {load_end}; {elapsed / 60:.1f} min\n")
    print(table(results, args.device))
    targets = target_table(results)
    if targets:
        print("\n" + targets)
    if args.json:
        write_json(args, info, results, argv, load_end, elapsed)
    if not args.no_write:
        write_doc(args.doc, args.device, info, results, args, argv, load_end, elapsed)
        print(f"\nwrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
