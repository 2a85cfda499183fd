#!/usr/bin/env bash
# The one-shot GPU check of igc_np, for a machine with CuPy already installed and no network
# (the one we expect: one H200, Python 3.12, cupy-cuda13x 14.2, PyTorch cu130, compute-sanitizer;
# one command of at most 10 minutes; at most 8 result files come back from $OUT):
#   probe      CuPy imports and a kernel compiles and runs; versions, device, tools (nothing is
#              installed when this works; without any CuPy, the `cuda13`/`cuda` extra is installed
#              from the wheels in $WHEELS when that folder exists, never from the network)
#   gpu_tests  the GPU test suite, HYPOTHESIS_PROFILE=ci; a skip not known to be expected fails
#   memcheck_cifar, memcheck_imagenet, racecheck_cifar, racecheck_imagenet
#              compute-sanitizer on one forward + backward of every kernel version
#              (benchmarks/sanitize_kernels.py) at a CIFAR and an ImageNet IGC layer
#   bench      every kernel version against PyTorch's cuDNN (NCHW and channels_last) on the CIFAR
#              and ImageNet IGC layers, GPU and CPU (Python) time per call (benchmarks/bench_gpu.py)
#   train      $TRAIN_STEPS steps of resnet_igc-20 L24M2: images/s, host copies inside the steps
#   launches   launches and host syncs of one training step (the CuPy stand-in; needs g++)
#   nccl       a 2-process NCCL all-reduce (benchmarks/bench_dist.py --nccl), when 2 GPUs are seen
# Every stage has its own time limit, cut to what is left of $BUDGET_S (default 450 s) so that
# the whole run ends in time. After every stage $OUT/gpu_check.json is rewritten with every
# figure so far (a killed run keeps what it measured); $OUT/gpu_check.log has all the output,
# $OUT/bench.json the benchmark rows (rewritten after each row). Three files in all.
#
#   OUT=results bash benchmarks/gpu_check.sh             # on the GPU machine, repository root
#   OUT=results bash benchmarks/gpu_check.sh --dry-run   # anywhere: the CuPy stand-in, tiny sizes
#
# Exit status: 1 when a stage failed or ran out of time (the later stages still run).
set -u -o pipefail

cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d)"  # per-stage files, merged into gpu_check.json; not sent back
trap 'rm -rf "$WORK"' EXIT
WHEELS="${WHEELS:-wheels}"
TRAIN_STEPS="${TRAIN_STEPS:-300}"
BUDGET_S="${BUDGET_S:-450}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT_DIR/gpu_check.log"
JSON="$OUT_DIR/gpu_check.json"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
START=$SECONDS
FAILED=()

record() {  # merge every stage's file of $WORK into $JSON (atomically)
    "$PY" - "$WORK" "$JSON" "$OUT_DIR/bench.json" "$DRY" <<'EOF'
import json, os, sys
work, out, bench, dry = sys.argv[1:5]
data = {"dry_run": dry == "1", "stages": []}
path = os.path.join(work, "stages.tsv")
if os.path.exists(path):
    for line in open(path):
        name, status, seconds, limit = line.rstrip("\n").split("\t")
        data["stages"].append(dict(name=name, status=status, seconds=int(seconds), limit_s=int(limit)))
for name in sorted(os.listdir(work)):
    if name.endswith(".json"):
        try:
            data[name[:-5]] = json.load(open(os.path.join(work, name)))
        except ValueError as e:
            data[name[:-5]] = {"unreadable": str(e)}
if os.path.exists(bench):
    try:
        data["bench"] = json.load(open(bench))
    except ValueError as e:
        data["bench"] = {"unreadable": str(e)}
with open(out + ".tmp", "w") as f:
    json.dump(data, f, indent=1)
os.replace(out + ".tmp", out)
EOF
}

stage() {  # stage NAME LIMIT_S COMMAND...: run under `timeout`, log the status, rewrite the JSON
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET_S - (SECONDS - START) - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    echo
    if [ "$limit" -lt 10 ]; then
        echo "=== $name: SKIPPED, the time budget of $BUDGET_S s is spent"
        printf '%s\tskipped (no time left)\t0\t0\n' "$name" >> "$WORK/stages.tsv"
        FAILED+=("$name")
        record
        return
    fi
    echo "=== $name (limit ${limit} s): $*"
    local t0=$SECONDS status
    timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@"  # bash -c: the functions below too
    local rc=$?
    if [ "$rc" = 0 ]; then
        status=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status="timeout"
    else
        status="failed (exit $rc)"
    fi
    echo "=== $name: $status ($((SECONDS - t0)) s)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$limit" >> "$WORK/stages.tsv"
    [ "$status" = ok ] || FAILED+=("$name")
    record
}

skip() {  # skip NAME REASON: a stage that cannot run here (said in the JSON, not a failure)
    echo
    echo "=== $1: skipped, $2"
    printf '%s\tskipped (%s)\t0\t0\n' "$1" "$2" >> "$WORK/stages.tsv"
    record
}

probe() {  # device, versions and tools as JSON; exit 1 when device 'cuda' does not work
    "$PY" - "$WORK/probe.json" "$DRY" <<'EOF'
import json, os, shutil, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
info = {"python": sys.version.split()[0]}
if dry:
    sys.path.insert(0, "benchmarks")
    import bench_gpu
    bench_gpu.install_standin()
import igc_np
from igc_np import backend
from igc_np.kernels import nvrtc
ok = igc_np.cuda_available()
info["cuda_works"], info["why_not"] = ok, backend.cuda_unavailable_reason()
lib = nvrtc.load()
info["nvrtc"] = lib._igc_path if lib else nvrtc.why_not()
for tool in ("compute-sanitizer", "nvidia-smi", "g++", "ptxas", "mpiexec"):
    info[tool] = shutil.which(tool)
if ok:
    cp = backend.cupy_module()
    info["cupy"] = getattr(cp, "__version__", "stand-in")
    dev = cp.cuda.Device().id
    p = cp.cuda.runtime.getDeviceProperties(dev)
    name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
    info["device"] = name
    for key in ("major", "minor", "multiProcessorCount", "totalGlobalMem", "clockRate", "sharedMemPerBlockOptin"):
        if key in p:
            info[key] = p[key]
    rt = cp.cuda.runtime
    info["gpus"] = rt.getDeviceCount() if hasattr(rt, "getDeviceCount") else 1
    for key, fn in (("cuda_runtime", "runtimeGetVersion"), ("cuda_driver", "driverGetVersion")):
        if hasattr(rt, fn):
            info[key] = getattr(rt, fn)()
    try:
        from cupy.cuda import nccl
        info["nccl"] = nccl.get_version() if getattr(nccl, "available", True) else None
    except Exception as e:
        info["nccl"] = f"unavailable: {type(e).__name__}: {e}"
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.cuda.is_available()
except Exception as e:
    info["torch"] = f"unavailable: {type(e).__name__}: {e}"
json.dump(info, open(out, "w"), indent=1)
print(json.dumps(info, indent=1))
sys.exit(0 if ok else f"device 'cuda' does not work: {info['why_not']}")
EOF
}

install_if_no_cupy() {  # only when no CuPy imports at all: never a second CuPy over the first
    if "$PY" -c "import cupy" 2> /dev/null; then
        return 0
    fi
    if [ ! -d "$WHEELS" ]; then
        echo "no CuPy and no wheel folder $WHEELS (this machine has no network): nothing to install"
        return 1
    fi
    local extra=cuda
    nvidia-smi 2> /dev/null | grep -q "CUDA Version: 1[3-9]" && extra=cuda13
    echo "no CuPy: installing .[$extra] from $WHEELS"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" -e ".[$extra]"
}

gpu_tests() {
    local gpus
    gpus=$("$PY" -c "import json; print(json.load(open('$WORK/probe.json')).get('gpus', 0))" 2> /dev/null || echo 0)
    HYPOTHESIS_PROFILE=ci "$PY" -m pytest -q -rs -p no:cacheprovider \
        tests/test_kernels_cuda.py tests/test_kernels_cuda_fused.py tests/test_devices.py \
        tests/test_kernels_nvrtc.py tests/test_nvrtc_discovery.py \
        --deselect tests/test_nvrtc_discovery.py::test_the_cuda13_wheel_layout_is_found_with_its_builtins \
        "tests/test_distributed.py::test_nccl_on_real_gpus_equals_the_micro_batch_twin" \
        | tee "$WORK/gpu_tests.txt"
    local rc=${PIPESTATUS[0]}
    # expected skips: test_devices' CPU-only check, the 2-GPU NCCL test on one GPU, ptxas absent
    # (the CUDA 13 venv test is left out: it needs the network, and CuPy's own wheels test it here)
    local expected="a GPU is present|ptxas"
    [ "$gpus" -lt 2 ] && expected="$expected|at least 2 GPUs"
    local unexpected
    unexpected=$(grep "^SKIPPED" "$WORK/gpu_tests.txt" | grep -Ev "$expected")
    "$PY" - "$WORK/gpu_tests.txt" "$WORK/gpu_tests.json" "$unexpected" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
summary = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
json.dump({"summary": summary[-1] if summary else None,
           "failed": re.findall(r"^FAILED (\S+)", text, re.M),
           "skipped": re.findall(r"^SKIPPED (.*)", text, re.M),
           "unexpected_skips": [l for l in sys.argv[3].splitlines() if l]}, open(sys.argv[2], "w"), indent=1)
EOF
    if [ -n "$unexpected" ]; then
        echo "GPU tests were skipped on a GPU machine:"
        echo "$unexpected"
        return 1
    fi
    return "$rc"
}

sanitize() {  # sanitize TOOL SHAPE: compute-sanitizer on the kernel driver; a summary JSON
    local tool="$1" shape="$2" rc
    if [ "$DRY" = 1 ]; then  # the emulator's sanitizer mode stands in for compute-sanitizer
        # every version at the CIFAR shape; the default ones at the ImageNet shape (the emulator's
        # sanitizer is slow there; CI's sweep runs the defaults at every layer shape)
        local which=all; [ "$shape" = imagenet ] && which=defaults
        IGC_NP_EMU_SANITIZE=1 "$PY" benchmarks/sanitize_kernels.py --standin --shape "$shape" \
            --versions "$which" | tee "$WORK/san.txt"
        rc=${PIPESTATUS[0]}
    else
        compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
            "$PY" benchmarks/sanitize_kernels.py --shape "$shape" | tee "$WORK/san.txt"
        rc=${PIPESTATUS[0]}
    fi
    "$PY" - "$WORK/san.txt" "$WORK/${tool}_${shape}.json" "$rc" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
runs = re.findall(r"^run (.*)$", text, re.M)
json.dump({"exit": int(sys.argv[3]), "kernels_run": len(runs), "last_run": runs[-1] if runs else None,
           "failed": re.findall(r"^FAILED (.*)$", text, re.M)[:40],
           "sanitizer": re.findall(r"^========= (?:ERROR SUMMARY.*|Invalid.*|Race.*|.*hazard.*|Error.*)$",
                                   text, re.M)[:40]},
          open(sys.argv[2], "w"), indent=1)
EOF
    return "$rc"
}

nccl_allreduce() {
    "$PY" benchmarks/bench_dist.py --nccl --json "$WORK/nccl.json"
}

export WORK PY DRY OUT_DIR WHEELS
export -f probe install_if_no_cupy gpu_tests sanitize nccl_allreduce

if [ "$DRY" = 1 ]; then
    echo "dry run on the CPU stand-in (tests/fake_cupy.py): nothing installed, tiny sizes; times mean nothing"
    stage probe 60 probe
    stage gpu_tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_standin.py -k "not trainer_and_evaluator"
    stage memcheck_cifar 90 sanitize memcheck cifar
    stage memcheck_imagenet 90 sanitize memcheck imagenet
    skip racecheck_cifar "the emulator's sanitizer mode checks races in memcheck_cifar's run"
    skip racecheck_imagenet "the emulator's sanitizer mode checks races in memcheck_imagenet's run"
    stage bench 120 "$PY" benchmarks/bench_gpu.py --standin --json "$OUT_DIR/bench.json" --batch 1 --cases 1 --loop 1 --repeat 1
    stage train 60 "$PY" benchmarks/bench_gpu.py --standin --train 2 --batch 2 --size 8 --warmup 1 --json "$WORK/train.json"
    stage launches 90 "$PY" benchmarks/bench_gpu.py --count-launches --batch 2 --size 8 --json "$WORK/launches.json"
    skip nccl "the stand-in has no second GPU"
else
    stage install 60 install_if_no_cupy
    stage probe 60 probe
    stage gpu_tests 100 gpu_tests
    if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck; do
            for shape in cifar imagenet; do
                stage "${tool}_${shape}" 30 sanitize "$tool" "$shape"
            done
        done
    else
        skip sanitizers "compute-sanitizer is not on PATH"
        FAILED+=(sanitizers)
    fi
    stage bench 120 "$PY" benchmarks/bench_gpu.py --json "$OUT_DIR/bench.json" --batch 64 --loop 20 --repeat 5 --roofline
    stage train 50 "$PY" benchmarks/bench_gpu.py --train "$TRAIN_STEPS" --batch 64 --json "$WORK/train.json"
    if [ "$("$PY" -c "import json; print(json.load(open('$WORK/probe.json')).get('gpus', 0))" 2> /dev/null || echo 0)" -ge 2 ]; then
        stage nccl 30 nccl_allreduce
    else
        skip nccl "fewer than 2 GPUs"
    fi
    if command -v g++ > /dev/null; then  # the stand-in runs our kernels with g++
        stage launches 40 "$PY" benchmarks/bench_gpu.py --count-launches --batch 8 --size 8 --json "$WORK/launches.json"
    else
        skip launches "no g++ here (run bench_gpu.py --count-launches on any machine)"
    fi
fi

echo
echo "results in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')($((SECONDS - START)) s)"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED stages: ${FAILED[*]}"
    exit 1
fi
echo "all stages passed"
