"""One forward + backward of every version of every kernel, for `compute-sanitizer` (or the emulator's).

    compute-sanitizer --tool memcheck  python benchmarks/sanitize_kernels.py --shape cifar
    compute-sanitizer --tool racecheck python benchmarks/sanitize_kernels.py --shape imagenet
    python benchmarks/sanitize_kernels.py --standin --shape cifar   # the CuPy stand-in, no GPU

Runs the rows of ``bench_gpu.case_ops`` (primary conv forward / backward-data / backward-weight,
interleaved secondary forward / backward, permutation, BatchNorm+ReLU forward / backward, each
kernel version) once each at a batch of 1-2, on one CIFAR and one ImageNet IGC layer of
``kernel_report.SHAPES``, then one SGD step and two Adam, AdamW and AMSGrad steps per version
(the multi-tensor kernels read their arrays through a table of pointers), and checks each result against the
float64 reference tier. CuPy's memory pool is switched off: every array is its own
``cudaMalloc``, so memcheck sees an access one element past an array (inside a pool block it
would not). Each row prints ``run <op> v<N>`` before it launches and ``ok``/``FAILED`` after: in a
sanitizer's report the last ``run`` line names the kernel. Exit 1 when any row failed.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402

# (--shape, SHAPES name, batch): a CIFAR stage-1 layer and the ImageNet layer with the most
# groups (L=100 at 56x56, the widest tiles)
SHAPE_CHOICES = {"cifar": ("CIFAR IGC-L24M2 stage 1", 2), "imagenet": ("ImageNet IGC-L100M2 stage 1", 1)}
# the kernel-version op of each row (for --versions defaults)
ROW_OPS = {"primary fwd": "conv2d_forward", "primary bwd-data": "conv2d_backward_data",
           "primary bwd-weight": "conv2d_backward_weight", "secondary fwd": "interleaved_secondary",
           "secondary bwd-data": "interleaved_secondary", "secondary bwd-weight": "interleaved_secondary",
           "permutation": "permute_channels", "bn+relu fwd": "batch_norm", "bn+relu bwd": "batch_norm"}


def run(shape, dtype=np.float32, defaults_only=False):
    """Run every row once (only the default versions: defaults_only); returns the list of
    failures (op, version, message)."""
    cupy = bench_gpu.gpu_or_exit()
    if hasattr(cupy.cuda, "set_allocator"):
        cupy.cuda.set_allocator(None)  # no pool: one cudaMalloc per array, exact bounds for memcheck
    name, batch = SHAPE_CHOICES[shape]
    _, _, C, HW, L = next(s for s in bench_gpu.SHAPES if s[0] == name)
    M = C // L
    print(f"{name}: N={batch} C={C} {HW}x{HW} L={L} M={M} ({np.dtype(dtype).name})", flush=True)
    failures = []
    t0 = time.perf_counter()
    try:
        rows, _ = bench_gpu.case_ops(cupy, batch, C, HW, L, M, dtype)
    except Exception as e:  # a launch of the set-up (BatchNorm forward) refused
        print(f"FAILED setting up the case: {type(e).__name__}: {e}", flush=True)
        return [("setup", None, f"{type(e).__name__}: {e}")]
    if defaults_only:
        rows = [r for r in rows if r[1] == bench_gpu.versions.default(ROW_OPS[r[0]])]
    for op, version, fn, ref64 in rows:
        print(f"run {op} v{version}", flush=True)
        try:
            out = fn()
            cupy.cuda.runtime.deviceSynchronize() if hasattr(cupy.cuda.runtime, "deviceSynchronize") else None
            err = bench_gpu.norm_error(cupy.asnumpy(out), ref64())
            if not err <= 10 * bench_gpu.NORM_TOL[np.dtype(dtype)]:
                raise AssertionError(f"relative error {err:.3g} against the float64 reference")
        except Exception as e:  # recorded; the next kernel still runs
            failures.append((op, version, f"{type(e).__name__}: {e}"))
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        print(f"  ok (rel err {err:.1e})", flush=True)
    n_sgd = sgd(cupy, dtype, failures, defaults_only)
    n_adam = adam(cupy, dtype, failures, defaults_only)
    print(f"{len(rows) + n_sgd + n_adam} launches checked in "
          f"{time.perf_counter() - t0:.1f} s, {len(failures)} failed", flush=True)
    return failures


def sgd(cupy, dtype, failures, defaults_only=False):
    """One Nesterov SGD step per version on three tensors, against NumPy; returns the steps run."""
    from igc_np.kernels import fused_ops
    rng = np.random.default_rng(3)
    shapes = [(48, 2, 3, 3), (48,), (10, 48)]
    for v in [bench_gpu.versions.default("sgd")] if defaults_only else bench_gpu.versions.kernels("sgd"):
        print(f"run sgd step v{v}", flush=True)
        w = [rng.standard_normal(s).astype(dtype) for s in shapes]
        g = [rng.standard_normal(s).astype(dtype) for s in shapes]
        try:
            dw, dg, dv = ([cupy.asarray(a) for a in arrays] for arrays in (w, g, [np.zeros_like(a) for a in w]))
            fused_ops.sgd_step(dw, dg, dv, 0.1, 0.9, True, 1e-4, "cuda", v)
            for a, b, h in zip(dw, w, g):
                grad = h + 1e-4 * b  # first step: velocity = grad; Nesterov: grad + momentum * velocity
                expect = b - 0.1 * (grad + 0.9 * grad)
                np.testing.assert_allclose(cupy.asnumpy(a), expect, rtol=1e-5, atol=1e-6)
        except Exception as e:
            failures.append(("sgd step", v, f"{type(e).__name__}: {e}"))
            print(f"  FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        print("  ok", flush=True)
    return 1 if defaults_only else len(bench_gpu.versions.kernels("sgd"))


# (row name, weight_decay, decoupled, amsgrad): torch.optim.Adam, AdamW and AMSGrad's settings
ADAM_ROWS = [("adam", 1e-4, False, False), ("adamw", 1e-2, True, False), ("amsgrad", 1e-2, True, True)]


def adam(cupy, dtype, failures, defaults_only=False):
    """Two steps of Adam, AdamW and AMSGrad per version on three tensors, against
    igc_np.optim.adam_reference in float64; returns the steps run."""
    from igc_np.kernels.adam import adam_step
    from igc_np.optim import adam_reference
    shapes = [(48, 2, 3, 3), (48,), (10, 48)]
    n = 0
    for v in [bench_gpu.versions.default("adam")] if defaults_only else bench_gpu.versions.kernels("adam"):
        for name, wd, decoupled, amsgrad in ADAM_ROWS:
            print(f"run {name} step v{v}", flush=True)
            rng = np.random.default_rng(4)
            w = [rng.standard_normal(s) for s in shapes]  # float64: the reference
            state = [[np.zeros(s) for s in shapes] for _ in range(3)]  # m, v, v_max
            try:
                dw = [cupy.asarray(a.astype(dtype)) for a in w]
                dm, dv, dvm = ([cupy.asarray(a.astype(dtype)) for a in arrays] for arrays in state)
                for t in (1, 2):
                    g = [rng.standard_normal(s) * 10.0 ** -t for s in shapes]  # shrinking: v_max > v
                    adam_step(dw, [cupy.asarray(a.astype(dtype)) for a in g], dm, dv, t, 1e-2, (0.9, 0.999),
                              1e-8, wd, decoupled, "cuda", v, max_exp_avg_sqs=dvm if amsgrad else None)
                    n += 1
                    for i in range(len(shapes)):
                        adam_reference(w[i], g[i], state[0][i], state[1][i], t, 1e-2, (0.9, 0.999), 1e-8, wd,
                                       decoupled, v_max=state[2][i] if amsgrad else None)
                for a, b in zip(dw, w):
                    err = bench_gpu.norm_error(cupy.asnumpy(a), b)
                    if not err <= 10 * bench_gpu.NORM_TOL[np.dtype(dtype)]:
                        raise AssertionError(f"weights: relative error {err:.3g} against the float64 reference")
            except Exception as e:
                failures.append((f"{name} step", v, f"{type(e).__name__}: {e}"))
                print(f"  FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            print("  ok", flush=True)
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPE_CHOICES), required=True)
    p.add_argument("--standin", action="store_true", help="run on tests/fake_cupy.py (no GPU)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--versions", choices=["all", "defaults"], default="all",
                   help="defaults: only the version each op runs by default (the dry run's ImageNet stage: "
                        "the emulator's sanitizer is ~10x slower than the plain emulator)")
    args = p.parse_args(argv)
    if args.standin:
        bench_gpu.install_standin()
    failures = run(args.shape, np.dtype(args.dtype).type, args.versions == "defaults")
    for op, version, message in failures:
        print(f"FAILED {op} v{version}: {message[:500]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
