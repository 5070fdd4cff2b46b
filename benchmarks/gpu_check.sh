#!/usr/bin/env bash
# One GPU check run (under 8 minutes on an H100/H200 with CuPy, PyTorch and cuDNN):
#   1. the whole test suite on the CuPy backend (tests taking `dev` run their gpu cases),
#   2. a short 512 px style transfer on the GPU, saving the image,
#   3. the benchmark suite on the GPU (xnn/CuPy vs PyTorch CUDA).
# Weights and data come from XNN_HOME (default .carry, made by `python benchmarks/make_gpu_carry.py`:
# float16 VGG19 conv weights and AdaIN weights, mnist/; 59 MiB, under the device tool's 64 MiB).  Every log goes to $OUT (default ./gpu_out); a failing step does not stop
# the later ones; exit codes are written to $OUT/status.txt.  Usage: OUT=/some/dir bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export XNN_HOME=${XNN_HOME:-.carry}
PY=${PYTHON:-python}
STATUS="$OUT/status.txt"
: > "$STATUS"

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to $OUT/NAME.log, record the exit code
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name: $*" | tee -a "$OUT/$name.log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$STATUS"
    tail -n 5 "$OUT/$name.log"
}

{
    echo "date: $(date -u)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    $PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__); print(cupy.cuda.runtime.getDeviceProperties(0)['name'])" 2>&1
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
    $PY -c "import xnn; print(xnn.device('gpu', strict=True))" 2>&1
    ls -la "$XNN_HOME" "$XNN_HOME/weights" 2>&1
} > "$OUT/env.log" 2>&1

step tests 210 env XNN_STRICT_DEVICE=1 $PY -m pytest -q -m "slow or not slow" -p no:cacheprovider -rs
# the float16 carry of benchmarks/make_gpu_carry.py when present, else the named Keras file
VGG=vgg19-imagenet-notop
[ -f "$XNN_HOME/weights/vgg19_notop_f16.npz" ] && VGG="$XNN_HOME/weights/vgg19_notop_f16.npz"
step style512 100 $PY run.py configs/style.yaml --device gpu --strict-device --set image_size=512 \
    --set num_iterations=50 --set weights="$VGG" --out "$OUT/style512"
step bench 150 $PY benchmarks/bench.py --device gpu --json "$OUT/bench_gpu.json" --doc "$OUT/benchmarks_gpu.md"
cat "$STATUS"
