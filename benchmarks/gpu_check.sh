#!/usr/bin/env bash
# The one prepared GPU run (about 4 minutes on an H200 with CuPy and PyTorch, no network):
#   1. the GPU tests only: every `dev` test's [gpu] case, the GPU budget tests, slow ones included;
#   2. a 30-iteration 512 px style transfer on the GPU (one image to look at, packed as a tarball);
#   3. which conv algorithm "autotune" would pick per VGG19 layer at 512 px (informs the GPU rule);
#   4. the GPU benchmark table, xnn/CuPy against PyTorch CUDA at the same precision.
# Weights and data come from XNN_HOME (default .carry, made by `python3 benchmarks/make_gpu_carry.py`:
# float16 VGG19 conv weights and AdaIN weights, mnist/; 59 MiB, under the device tool's 64 MiB).
# Outputs: at most 8 files in $OUT (default ./gpu_out): env.txt, tests.log, style512.tar.gz,
# autotune.txt, bench.log, bench_gpu.json, benchmarks_gpu.md, status.txt.  A failing step does not
# stop the later ones; exit codes and times are in status.txt.
#   device tool: run(command="OUT=$OUT bash benchmarks/gpu_check.sh", carry=[".carry"], timeout_s=300)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export XNN_HOME=${XNN_HOME:-.carry}
export XNN_STRICT_DEVICE=1            # no silent CPU fallback: a broken GPU path fails loudly
PY=${PYTHON:-python3}
STATUS="$OUT/status.txt"
: > "$STATUS"

step() {  # step NAME LOG TIMEOUT_S CMD...: run with a time limit, append to $OUT/LOG, record rc and time
    local name=$1 log=$2 limit=$3
    shift 3
    local t0=$SECONDS
    echo "== $name: $*" >> "$OUT/$log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$STATUS"
}

{
    echo "date: $(date -u)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    $PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" 2>&1
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
    $PY -c "import xnn; print(xnn.device('gpu', strict=True))" 2>&1
    ls -la "$XNN_HOME" "$XNN_HOME/weights" 2>&1
} > "$OUT/env.txt" 2>&1

step tests tests.log 80 $PY -m pytest -q -p no:cacheprovider -m "slow or not slow" -k "gpu" -rs
VGG=vgg19-imagenet-notop
[ -f "$XNN_HOME/weights/vgg19_notop_f16.npz" ] && VGG="$XNN_HOME/weights/vgg19_notop_f16.npz"
step style512 tests.log 45 $PY run.py configs/style.yaml --device gpu --set image_size=512 \
    --set num_iterations=30 --set weights="$VGG" --out "$OUT/style512"
tar -czf "$OUT/style512.tar.gz" -C "$OUT" style512 2>/dev/null && rm -rf "$OUT/style512"
step autotune autotune.txt 25 $PY - "$VGG" <<'PY'
import sys, numpy, xnn
from xnn.models import vgg19
dev = xnn.device("gpu", strict=True)
vgg = vgg19(weights=sys.argv[1], device=dev, include_top=False)
for layer in vgg.net.layers.values():
    if hasattr(layer, "algorithm"):
        layer.algorithm = "autotune"
x = dev.asarray(numpy.random.default_rng(0).uniform(-100, 100, (1, 3, 512, 512)).astype(numpy.float32))
vgg.features(x, ["relu5_1"])
print("layer     autotune  auto-rule")
for name, layer in vgg.net.layers.items():
    if hasattr(layer, "algorithm") and "fwd" in layer.last_algorithms:
        layer.algorithm = "auto"
        vgg.features(x, [name])
        rule = layer.last_algorithms["fwd"]
        layer.algorithm = "autotune"
        vgg.features(x, [name])
        print(f"{name:9s} {layer.last_algorithms['fwd']:9s} {rule}")
PY
step bench bench.log 90 $PY benchmarks/bench.py --device gpu --quick --budget 10 --json "$OUT/bench_gpu.json" \
    --doc "$OUT/benchmarks_gpu.md"
cat "$STATUS"
