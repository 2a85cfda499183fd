"""Where a CPU training step of igc_np spends its time, and how close its convs get to the BLAS peak.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_cpu.py               # resnet-20
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_cpu.py resnet_igc 20 24 2

1. The BLAS peak: GFLOP/s of a 2048^3 float32 matmul on 1 thread and on igc_np's threads.
2. The share of a training step (batch 64) of each op, forward and backward (wall time of the op,
   threads included; "other" is the autograd bookkeeping and the optimizer).
3. Every conv of the network grouped by shape: its GFLOP/s forward, backward-data and
   backward-weight (2 * multiply-adds / wall time), next to the peak.

The op times are the medians over the measured steps; on a loaded machine they move together, so
read the shares and GFLOP/s against the peak measured in the same run.
"""
import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import igc_np as ig  # noqa: E402
from igc_np import functional as F  # noqa: E402
from igc_np.autograd import Function  # noqa: E402
from igc_np.ops import conv as conv_op, cpu_conv, parallel  # noqa: E402

BATCH = 64


def sgemm_peak(threads, n=2048, repeats=5):
    """GFLOP/s of an n^3 float32 matmul with BLAS on `threads` threads."""
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Recorder:
    """Wraps every Function's forward/backward and the conv engine's entry points with timers."""

    depth = 0  # ops running now: an op made of others (ops/fused.py) is timed once, as itself

    def __init__(self):
        self.ops = collections.defaultdict(float)  # "Op.forward" -> seconds in this step
        self.convs = collections.defaultdict(float)  # ((shape key), "fwd"/"data"/"weight") -> seconds
        self.flops = {}
        self.calls = collections.Counter()  # (shape key, part) -> calls in this step

    def install(self):
        # every op's forward and backward, whatever its tier, goes through these two (autograd.py)
        self._wrap_op(Function, "run_forward")
        self._wrap_op(Function, "run_backward")
        self._wrap_conv("conv2d_forward", "fwd", lambda x, W, stride, padding, groups: (x.shape, W.shape, stride, groups))
        self._wrap_conv("conv2d_backward_data", "data",
                        lambda gy, W, x_shape, stride, padding, groups: (x_shape, W.shape, stride, groups))
        self._wrap_conv("conv2d_backward_weight", "weight",
                        lambda saved, gy, W_shape, stride, groups: (None, W_shape, stride, groups, gy.shape))

    def _wrap_op(self, cls, name):
        inner = cls.__dict__[name]

        def timed(fn_self, *args, **kwargs):
            if self.depth:  # inside another op (fused.py runs its parts through run_forward): counted there
                return inner(fn_self, *args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return inner(fn_self, *args, **kwargs)
            finally:
                self.ops[f"{type(fn_self).__name__}.{name.replace('run_', '')}"] += time.perf_counter() - t0
                self.depth -= 1
        setattr(cls, name, timed)

    def _wrap_conv(self, name, part, describe):
        inner = getattr(cpu_conv, name)

        def timed(*args):
            t0 = time.perf_counter()
            out = inner(*args)
            dt = time.perf_counter() - t0
            info = describe(*args)
            W_shape, stride, groups = info[1], info[2], info[3]
            Co, Cg, kh, kw = W_shape
            if part == "weight":
                N, _, Ho, Wo = info[4]
            else:
                y = out[0] if part == "fwd" else args[0]  # backward data: gy has the output shape
                N, _, Ho, Wo = y.shape
            key = (Cg * groups, Co, f"{kh}x{kw}/{stride[0]}", groups, Ho)
            self.convs[key, part] += dt
            self.calls[key, part] += 1
            self.flops[key] = 2 * Co * Cg * kh * kw * Ho * Wo * N
            return out
        setattr(cpu_conv, name, timed)
        assert conv_op.cpu_conv is cpu_conv  # the op calls the engine through the module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("network", nargs="?", default="resnet", choices=ig.nets.CIFAR_NETWORKS)
    parser.add_argument("depth", nargs="?", type=int, default=20)
    parser.add_argument("L", nargs="?", type=int, default=16, help="primary partitions (C = L*M)")
    parser.add_argument("M", nargs="?", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    peak1, peak = sgemm_peak(1), sgemm_peak(parallel.THREADS)
    print(f"sgemm 2048^3 peak: {peak1:.0f} GFLOP/s on 1 thread, {peak:.0f} on {parallel.THREADS}")

    rng = np.random.default_rng(0)
    model = ig.nets.get_network(args.network, args.depth, 10, args.L, args.M, rng=0)
    x = ig.Tensor(rng.standard_normal((BATCH, 3, 32, 32), dtype=np.float32))
    labels = rng.integers(0, 10, BATCH)
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    step()
    step()
    rec = Recorder()
    rec.install()
    per_step, ops, convs = [], collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(args.steps):
        rec.ops.clear()
        rec.convs.clear()
        rec.calls.clear()
        per_step.append(_timed(step))
        for k, v in rec.ops.items():
            ops[k].append(v)
        for k, v in rec.convs.items():
            convs[k].append(v)
    total = statistics.median(per_step)
    print(f"\n{model.name} ({ig.nets.count_params(model):,} parameters), batch {BATCH}: training step "
          f"{1e3 * total:.0f} ms ({BATCH / total:.0f} images/s), median of {args.steps}")
    print(f"\n{'op':34s}{'ms/step':>9s}{'share':>8s}")
    med = {k: statistics.median(v) for k, v in ops.items()}
    for k, v in sorted(med.items(), key=lambda kv: -kv[1]):
        if v > 1e-4:
            print(f"{k:34s}{1e3 * v:9.1f}{100 * v / total:7.1f}%")
    print(f"{'other (autograd, optimizer)':34s}{1e3 * (total - sum(med.values())):9.1f}"
          f"{100 * (total - sum(med.values())) / total:7.1f}%")

    print(f"\nconvs by shape (C_in -> C_out, kernel/stride, groups, output HxW): GFLOP/s, "
          f"peak {peak:.0f} on {parallel.THREADS} threads")
    print(f"{'conv':38s}{'count':>6s}{'fwd':>7s}{'data':>7s}{'weight':>8s}{'ms/step':>9s}")
    layers = sorted({k for k, _ in convs}, key=lambda k: -rec.flops[k])
    conv_total = 0.0
    for key in layers:
        Ci, Co, kind, groups, Ho = key
        times = {part: statistics.median(convs[key, part]) for part in ("fwd", "data", "weight")
                 if (key, part) in convs}
        count = rec.calls[key, "fwd"]  # layers of this shape: their calls are timed together
        rates = [f"{rec.calls[key, p] * rec.flops[key] / times[p] / 1e9:7.0f}" if p in times else f"{'-':>7s}"
                 for p in ("fwd", "data", "weight")]
        conv_total += sum(times.values())
        print(f"{Ci:4d} -> {Co:<4d} {kind:6s} g={groups:<3d} {Ho:3d}x{Ho:<3d}      {count:6d}"
              f"{rates[0]}{rates[1]}{rates[2]:>8s}{1e3 * sum(times.values()):9.1f}")
    print(f"convs in all: {1e3 * conv_total:.0f} ms/step, {100 * conv_total / total:.0f}% of the step")


if __name__ == "__main__":
    main()
