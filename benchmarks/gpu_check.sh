#!/usr/bin/env bash
# The GPU check of igc_np, for a fresh NVIDIA machine with only a driver (H100/H200; < 5 minutes):
#   1. installs the `cuda` and `test` extras (CuPy with NVRTC and the CUDA headers) and, if it can,
#      PyTorch (the cuDNN reference); from the wheels in $WHEELS (default ./wheels) when that folder
#      exists - the machine may have no internet - else from the package index;
#   2. checks that device "cuda" works (a kernel compiles and runs) and runs the whole GPU test suite;
#   3. runs benchmarks/bench_gpu.py: every version of every kernel against cuDNN on kernel_report.py's
#      SHAPES (batch 64), each primary conv timing beside its roofline model (--roofline);
#   4. trains resnet_igc-20 L24M2 on random CIFAR-format data for $TRAIN_STEPS steps (images/s) and
#      counts the launches and host syncs of one step on the CuPy stand-in.
# Everything is printed and, when $OUT is set, written under $OUT (one log per stage, bench.json).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: every stage on the CPU stand-in, tiny sizes
#
# Exit status: non-zero when a stage fails (the later stages still run); the summary names them.
set -u -o pipefail

cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
WHEELS="${WHEELS:-wheels}"
TRAIN_STEPS="${TRAIN_STEPS:-300}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()

stage() {  # stage NAME COMMAND...: run, tee to $OUT_DIR/NAME.log, remember a failure
    local name="$1"
    shift
    echo
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@" 2>&1 | tee "$OUT_DIR/$name.log"; then
        echo "=== $name: ok ($((SECONDS - t0)) s)"
    else
        echo "=== $name: FAILED ($((SECONDS - t0)) s)"
        FAILED+=("$name")
    fi
}

install() {
    local src=()
    if [ -d "$WHEELS" ]; then
        src=(--no-index --find-links "$WHEELS")
        echo "installing from $WHEELS: $(ls "$WHEELS" | wc -l) files"
    fi
    "$PY" -m pip install -q "${src[@]}" -e ".[cuda,test]" || return 1
    # the cuDNN reference: PyTorch, when a wheel is there (bench_gpu.py says loudly if it is not)
    "$PY" -m pip install -q "${src[@]}" torch || echo "!!! PyTorch not installable: bench_gpu.py runs without cuDNN"
    "$PY" -c "import cupy; print('CuPy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
}

probe() {
    "$PY" - <<'EOF'
import sys
import igc_np
from igc_np import backend
if not igc_np.cuda_available():
    sys.exit(f"device 'cuda' is unusable: {backend.cuda_unavailable_reason()}")
cp = backend.cupy_module()
p = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
print("device 'cuda' works:", p["name"].decode() if isinstance(p["name"], bytes) else p["name"])
EOF
}

gpu_tests() {
    # -rs lists every skip with its reason: on this machine nothing GPU-related may skip
    HYPOTHESIS_PROFILE=ci "$PY" -m pytest -q -rs -p no:cacheprovider \
        tests/test_kernels_cuda.py tests/test_kernels_cuda_fused.py tests/test_devices.py tests/test_kernels_nvrtc.py \
        | tee "$OUT_DIR/gpu_tests.txt"
    local rc=${PIPESTATUS[0]}
    # (test_devices' "a GPU is present" skip is the one expected here)
    if grep "^SKIPPED" "$OUT_DIR/gpu_tests.txt" | grep -qv "a GPU is present"; then
        echo "GPU tests were skipped on a GPU machine (see the SKIPPED lines)"
        return 1
    fi
    return "$rc"
}

standin_tests() {  # the dry run's stand-in for gpu_tests: the kernels' emulator and stand-in tests
    "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels_fused.py tests/test_kernels_nvrtc.py \
        tests/test_cuda_standin.py -k "not trainer_and_evaluator"
}

BENCH=(benchmarks/bench_gpu.py --json "$OUT_DIR/bench.json")
if [ "$DRY" = 1 ]; then
    echo "dry run on the CPU stand-in (tests/fake_cupy.py): no pip, tiny sizes; times mean nothing"
    stage standin_tests standin_tests
    stage bench "$PY" "${BENCH[@]}" --standin --batch 1 --cases 1 --loop 1 --repeat 1
    stage train "$PY" benchmarks/bench_gpu.py --standin --train 2 --batch 2 --size 8 --warmup 1
    stage launches "$PY" benchmarks/bench_gpu.py --count-launches --batch 2 --size 8
else
    stage install install
    stage probe probe
    stage gpu_tests gpu_tests
    stage bench "$PY" "${BENCH[@]}" --batch 64 --loop 20 --repeat 5 --roofline
    stage train "$PY" benchmarks/bench_gpu.py --train "$TRAIN_STEPS" --batch 64
    if command -v g++ > /dev/null; then  # the stand-in runs our kernels with g++
        stage launches "$PY" benchmarks/bench_gpu.py --count-launches --batch 8 --size 8
    else
        echo "no g++ here: launches/host syncs per step not counted (run --count-launches on any machine)"
    fi
fi

echo
echo "logs in $OUT_DIR"
grep -h "images/s\|launches/step" "$OUT_DIR"/train.log "$OUT_DIR"/launches.log 2>/dev/null
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED stages: ${FAILED[*]}"
    exit 1
fi
echo "all stages passed"
