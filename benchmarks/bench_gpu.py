"""Every version of our CUDA kernels vs cuDNN (PyTorch) on the IGC shapes; launches per training step.

    python benchmarks/bench_gpu.py [--batch N] [--loop 20] [--repeat 5] [--dtype float32] [--roofline]
    python benchmarks/bench_gpu.py --count-launches [--batch 64]   # no GPU needed (CuPy stand-in)
    python benchmarks/bench_gpu.py --standin --batch 2             # the whole benchmark on the stand-in

For each IGC conv of SHAPES (benchmarks/kernel_report.py's list, the shapes its roofline model
uses: primary 3x3 group conv with L groups, then the secondary 1x1 conv with S = M = C/L groups
between the two permutations; batch N from the list unless --batch) and each kernel version of
each op (kernels/versions.py; version 0 of the permutation, a shape rule, runs one of them) it
prints the milliseconds of one call and the ratio ours / cuDNN (below 1: ours is faster), for
  - primary:   forward, backward-data, backward-weight vs cuDNN's grouped conv;
  - secondary: the fused kernels vs cuDNN's 1x1 group conv plus the two permutation copies;
  - permutation vs PyTorch's copy of the transposed view; BatchNorm+ReLU forward/backward vs
    PyTorch's batch_norm + relu; SGD over resnet_igc-20's parameters vs torch.optim.SGD (foreach).
Timing: `--loop` launches back to back between one pair of CUDA events (one call per event pair
would measure the ~20-40 us of Python launch overhead on these small CIFAR shapes, not the kernel),
median of `--repeat` such loops; beside it the CPU (Python) time to issue one call, measured on
the same loops (when it exceeds the GPU time, the op is launch-bound). cuDNN runs NCHW and
channels_last, both are recorded, and the faster counts. Every result is first checked against a
float64 reference (igc_np/ops/reference.py; norm-relative error). --json FILE is rewritten after
every row (a run killed by a time limit keeps what it measured); a row that fails (wrong result,
refused launch) is recorded with its error and the next row runs; the exit status is then 1.
--roofline then sets each primary conv timing beside kernel_report.roofline's model of the same
launch and its roofline (needs ptxas, cuobjdump and nvdisasm).

--count-launches runs one resnet_igc-20 L24M2 training step on tests/fake_cupy.py's CuPy stand-in
(our kernels in the CPU emulator) and prints "launches/step N, host syncs/step M".
--train STEPS trains resnet_igc-20 L24M2 on random CIFAR-format data (uint8 images, 10 classes) and
prints images/s, with the explicit device->host copies (.get, .item, .tolist, asnumpy) seen by a
profile hook; float()/int()/bool() of a device array are invisible to it (C slots): the stand-in's
--count-launches counts those.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kernel_report  # noqa: E402
from igc_np.kernels import fused_ops, ops, versions  # noqa: E402
from igc_np.ops import reference  # noqa: E402

SHAPES = kernel_report.SHAPES  # (name, N, C, H=W, L): one list for the benchmark and the model
PRIMARY_OPS = {"primary fwd": "conv2d_forward", "primary bwd-data": "conv2d_backward_data",
               "primary bwd-weight": "conv2d_backward_weight"}
NORM_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# ---- the GPU, or the stand-in ----------------------------------------------------------------------
class _Patch:
    """The two monkeypatch methods fake_cupy.install uses, outside pytest (for the whole process)."""

    def setitem(self, d, key, value):
        d[key] = value

    def setattr(self, obj, name, value):
        setattr(obj, name, value)


def install_standin():
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_cupy
    fake_cupy.install(_Patch())
    return fake_cupy


def gpu_or_exit():
    from igc_np import backend
    if not backend.cuda_available():
        sys.exit(f"bench_gpu.py needs a usable CUDA GPU: {backend.cuda_unavailable_reason()} "
                 "(--count-launches and --standin run without one)")
    return backend.cupy_module()


def event_timer(cupy, fn, loop, repeat):
    """(GPU ms, CPU us) of one fn() call, medians over `repeat` loops of `loop` calls.

    GPU: the CUDA events around the loop / loop (launches back to back, so the kernel's time,
    unless issuing a call takes longer than running it). CPU: the host (Python) time to issue
    one call, measured on the same loop before waiting for the GPU; when it is above the GPU
    time, the op is launch-bound and the GPU figure is that time, not the kernel's."""
    return _timer(lambda: cupy.cuda.Event(), lambda a, b: cupy.cuda.get_elapsed_time(a, b), fn, loop, repeat)


def _timer(event, elapsed_ms, fn, loop, repeat):
    fn()
    fn()  # warm-up: compile, allocator
    gpu, cpu = [], []
    for _ in range(repeat):
        start, stop = event(), event()
        start.record()
        t = time.perf_counter()
        for _ in range(loop):
            fn()
        cpu.append((time.perf_counter() - t) / loop * 1e6)
        stop.record()
        stop.synchronize()
        gpu.append(elapsed_ms(start, stop) / loop)
    return float(np.median(gpu)), float(np.median(cpu))


# ---- cuDNN through PyTorch --------------------------------------------------------------------------
class TorchCudnn:
    """cuDNN's grouped conv and its two backward passes, and PyTorch's permutation copy, BN, SGD."""
    name = "cuDNN (PyTorch)"

    def __init__(self, torch):
        self.torch = torch
        torch.backends.cudnn.benchmark = True    # let cuDNN pick its fastest algorithm per shape
        torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
        torch.backends.cuda.matmul.allow_tf32 = False
        self.version = f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"

    def tensor(self, a, channels_last=False):
        t = self.torch.as_tensor(np.ascontiguousarray(a), device="cuda")
        return t.contiguous(memory_format=self.torch.channels_last) if channels_last and t.ndim == 4 else t

    def conv(self, x, W, stride, padding, groups):
        return self.torch.nn.functional.conv2d(x, W, None, stride, padding, 1, groups)

    def conv_backward(self, gy, x, W, stride, padding, groups, which):
        mask = [which == "data", which == "weight", False]
        gx, gW, _ = self.torch.ops.aten.convolution_backward(
            gy, x, W, None, list(stride), list(padding), [1, 1], False, [0, 0], groups, mask)
        return gx if which == "data" else gW

    def permute(self, x, b):
        N, C, H, W = x.shape
        return x.reshape(N, b, C // b, H, W).transpose(1, 2).reshape(N, C, H, W)  # channels_last: no view

    def timer(self, fn, loop, repeat):
        """(GPU ms, CPU us) of one call, as event_timer."""
        return _timer(lambda: self.torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b),
                      fn, loop, repeat)


def find_cudnn():
    """TorchCudnn, or None with the reason (said loudly by the caller)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed (pip install torch): no cuDNN reference"
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} sees no CUDA device: no cuDNN reference"
    if not torch.backends.cudnn.is_available():
        return None, f"PyTorch {torch.__version__} has no cuDNN: no cuDNN reference"
    return TorchCudnn(torch), None


# ---- one IGC conv case ------------------------------------------------------------------------------
def norm_error(ours, ref64):
    ours = np.asarray(ours, dtype=np.float64)
    return float(np.linalg.norm((ours - ref64).ravel()) / max(np.linalg.norm(ref64.ravel()), 1e-30))


def case_ops(cupy, N, C, HW, L, M, dtype):
    """[(op, version, our fn, float64 reference)] for one case, and the float64 inputs."""
    rng = np.random.default_rng(0)
    S = M
    h = {"x": rng.standard_normal((N, C, HW, HW)),
         "W": rng.standard_normal((C, C // L, 3, 3)) * np.sqrt(2 / (9 * C // L)),
         "W2": rng.standard_normal((C, C // S, 1, 1)) * np.sqrt(2 / (C // S)),
         "gy": rng.standard_normal((N, C, HW, HW)),
         "gamma": rng.random(C) + 0.5, "beta": rng.standard_normal(C)}
    d = {k: cupy.asarray(v.astype(dtype)) for k, v in h.items()}
    h = {k: v.astype(dtype).astype(np.float64) for k, v in h.items()}  # the rounded inputs, in float64
    st, pad = (1, 1), (1, 1)
    rows = []
    conv_ref = {}  # the float64 references, computed once per case when first checked

    def ref(key, fn):
        def get():
            if key not in conv_ref:
                conv_ref[key] = fn()
            return conv_ref[key]
        return get
    primary = ref("primary", lambda: (reference.conv2d(h["x"], h["W"], st, pad, L),)
                  + reference.conv2d_backward(h["x"], h["W"], h["gy"], st, pad, L))
    for v in versions.kernels("conv2d_forward"):
        rows += [
            ("primary fwd", v, lambda v=v: ops.conv2d_forward(d["x"], d["W"], st, pad, L, "cuda", version=v),
             lambda: primary()[0]),
            ("primary bwd-data", v, lambda v=v: ops.conv2d_backward_data(d["gy"], d["W"], d["x"].shape, st, pad, L,
                                                                         "cuda", version=v),
             lambda: primary()[1]),
            ("primary bwd-weight", v, lambda v=v: ops.conv2d_backward_weight(d["x"], d["gy"], d["W"].shape, st, pad,
                                                                             L, "cuda", version=v),
             lambda: primary()[2])]
    xp_ = reference.permute_channels(h["x"], L)

    def secondary_ref():
        gv = reference.permute_channels_backward(h["gy"], S)
        gxp, gW = reference.conv2d_backward(xp_, h["W2"], gv, groups=S)
        return (reference.permute_channels(reference.conv2d(xp_, h["W2"], groups=S), S),
                reference.permute_channels_backward(gxp, L), gW)
    secondary = ref("secondary", secondary_ref)
    for v in versions.kernels("interleaved_secondary"):
        rows += [
            ("secondary fwd", v, lambda v=v: ops.interleaved_secondary_forward(d["x"], d["W2"], L, S, "cuda", v),
             lambda: secondary()[0]),
            ("secondary bwd-data", v,
             lambda v=v: ops.interleaved_secondary_backward_data(d["gy"], d["W2"], L, S, "cuda", v),
             lambda: secondary()[1]),
            ("secondary bwd-weight", v,
             lambda v=v: ops.interleaved_secondary_backward_weight(d["x"], d["gy"], d["W2"].shape, L, S, "cuda", v),
             lambda: secondary()[2])]
    for v in versions.kernels("permute_channels"):
        rows.append(("permutation", v, lambda v=v: ops.permute_channels(d["x"], L, "cuda", version=v),
                     lambda: xp_))
    bn_ref = _bn_reference(h)
    for v in versions.kernels("batch_norm"):
        def fwd(v=v):
            return fused_ops.batch_norm_forward(d["x"], d["gamma"], d["beta"], None, None, True, 0.9, 2e-5, "cuda",
                                                relu=True, version=v)
        y, mean, stat = fwd()
        rows.append(("bn+relu fwd", v, lambda fwd=fwd: fwd()[0], lambda: bn_ref[0]))
        rows.append(("bn+relu bwd", v, lambda v=v, y=y, mean=mean, stat=stat: fused_ops.batch_norm_backward(
            d["gy"], y, d["x"], mean, stat, d["gamma"], True, 2e-5, "cuda", relu=True, version=v)[0],
            lambda: bn_ref[1]))
    return rows, h


def _bn_reference(h):
    """float64 (y, gx) of relu(batch_norm(x)) with batch statistics, for the gradient gy."""
    x, gamma, beta, gy = h["x"], h["gamma"], h["beta"], h["gy"]
    ch = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    xhat = (x - ch(mean)) / np.sqrt(ch(var) + 2e-5)
    z = xhat * ch(gamma) + ch(beta)
    g = gy * (z > 0)
    m = x.size // x.shape[1]
    gx = (g - ch(g.sum(axis=(0, 2, 3))) / m - xhat * ch((g * xhat).sum(axis=(0, 2, 3))) / m) \
        * ch(gamma / np.sqrt(var + 2e-5))
    return np.maximum(z, 0), gx


def reference_fns(ref, h, C, L, S, dtype):
    """{op: [fn for NCHW, fn for channels_last]} of the reference framework."""
    torch = ref.torch
    fns = {}
    for cl in (False, True):
        t = {k: ref.tensor(v.astype(dtype), channels_last=cl) for k, v in h.items()}
        st, pad = (1, 1), (1, 1)
        C_S = C // S
        xperm, gperm = ref.permute(t["x"], L), ref.permute(t["gy"], C_S)
        xr = t["x"].detach().clone().requires_grad_(True)
        yr = torch.relu(torch.nn.functional.batch_norm(xr, None, None, t["gamma"], t["beta"], True, 0.1, 2e-5))
        for op, fn in {
            "primary fwd": lambda t=t: ref.conv(t["x"], t["W"], st, pad, L),
            "primary bwd-data": lambda t=t: ref.conv_backward(t["gy"], t["x"], t["W"], st, pad, L, "data"),
            "primary bwd-weight": lambda t=t: ref.conv_backward(t["gy"], t["x"], t["W"], st, pad, L, "weight"),
            # permute(L) -> 1x1 conv with S groups -> permute(S), and the chain's gradients
            "secondary fwd": lambda t=t: ref.permute(ref.conv(ref.permute(t["x"], L), t["W2"], (1, 1), (0, 0), S), S),
            "secondary bwd-data": lambda t=t, xp=xperm, gp=gperm: ref.permute(ref.conv_backward(
                gp, xp, t["W2"], (1, 1), (0, 0), S, "data"), C // L),
            "secondary bwd-weight": lambda t=t, xp=xperm, gp=gperm: ref.conv_backward(
                gp, xp, t["W2"], (1, 1), (0, 0), S, "weight"),
            "permutation": lambda t=t: ref.permute(t["x"], L).contiguous(),
            "bn+relu fwd": lambda t=t: torch.relu(torch.nn.functional.batch_norm(
                t["x"], None, None, t["gamma"], t["beta"], True, 0.1, 2e-5)),
            "bn+relu bwd": lambda t=t, xr=xr, yr=yr: torch.autograd.grad(yr, xr, t["gy"], retain_graph=True)[0],
        }.items():
            fns.setdefault(op, []).append(fn)
    return fns


def bench_case(cupy, ref, name, N, C, HW, L, M, dtype, loop, repeat, results, save=lambda: None):
    """Time every (op, version) of one IGC conv case, appending a dict per row to `results` and
    calling save() after each: a row that fails (wrong result, refused launch) is recorded with
    its error and the next one runs."""
    try:
        rows, h = case_ops(cupy, N, C, HW, L, M, dtype)
    except Exception as e:  # e.g. a BatchNorm launch refused while the case is set up
        print(f"\n{name}: FAILED to set up: {type(e).__name__}: {e}")
        results.append(dict(case=name, batch=N, op="setup", error=f"{type(e).__name__}: {e}"))
        save()
        return
    theirs = reference_fns(ref, h, C, L, M, dtype) if ref is not None else {}
    print(f"\n{name}: N={N} C={C} {HW}x{HW} L={L} M={M} ({np.dtype(dtype).name})")
    print(f"  {'op':<22}{'version':>8}{'ours ms':>10}{'cuDNN ms':>10}{'ratio':>8}{'ours CPU us':>12}"
          f"{'cuDNN CPU us':>13}{'rel err':>10}  cuDNN layout")
    dims = kernel_report.dims_of(N, C, HW, HW, C, groups=L)  # the primary conv's, as the model has it
    ref_t = {}
    for op, version, fn, ref64 in rows:
        row = dict(case=name, batch=N, op=op, version=version, dims=list(dims) if op in PRIMARY_OPS else None)
        try:
            err = norm_error(cupy.asnumpy(fn()), ref64())
            row["rel_err"] = err
            if not err <= 10 * NORM_TOL[np.dtype(dtype)]:
                raise AssertionError(f"relative error {err:.3g} against the float64 reference")
            t_ours, cpu_ours = event_timer(cupy, fn, loop, repeat)
            if op in theirs and op not in ref_t:  # NCHW and channels_last; the faster counts
                layouts = [ref.timer(f, loop, repeat) for f in theirs[op]]
                best = min(range(len(layouts)), key=lambda i: layouts[i][0])
                ref_t[op] = layouts[best] + (("NCHW", "channels_last")[best], layouts)
        except Exception as e:  # recorded; the other rows still run
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"  {op:<22}{version:>8}  FAILED: {row['error']}")
            results.append(row)
            save()
            continue
        t_ref, cpu_ref, layout, layouts = ref_t.get(op, (None, None, None, None))
        cells = (f"{t_ref:>10.3f}{t_ours / t_ref:>8.2f}" if t_ref else f"{'-':>10}{'-':>8}")
        print(f"  {op:<22}{version:>8}{t_ours:>10.3f}{cells}{cpu_ours:>12.1f}"
              f"{cpu_ref if cpu_ref is not None else float('nan'):>13.1f}{err:>10.1e}  {layout or '-'}")
        row.update(ours_ms=t_ours, ours_cpu_us=cpu_ours, ref_ms=t_ref, ref_cpu_us=cpu_ref, ref_layout=layout,
                   ref_nchw_ms=layouts[0][0] if layouts else None,
                   ref_channels_last_ms=layouts[1][0] if layouts else None)
        results.append(row)
        save()


def bench_sgd(cupy, ref, dtype, loop, repeat, results):
    """One SGD step over resnet_igc-20 L24M2's parameters: each version vs torch.optim.SGD."""
    import igc_np as ig
    net = ig.nets.get_network("resnet_igc", 20, primary_partition=24, secondary_partition=2, rng=0)
    shapes = [p.shape for p in net.parameters()]
    rng = np.random.default_rng(1)
    ws = [cupy.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]
    gs = [cupy.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]
    vs = [cupy.zeros(s, dtype) for s in shapes]
    print(f"\nSGD step, resnet_igc-20 L24M2: {len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes)} weights")
    t_ref = None
    if ref is not None:
        torch = ref.torch
        params = [torch.nn.Parameter(ref.tensor(rng.standard_normal(s).astype(dtype))) for s in shapes]
        for p in params:
            p.grad = torch.ones_like(p)
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, foreach=True)
        t_ref, cpu_ref = ref.timer(opt.step, loop, repeat)
    for v in versions.kernels("sgd"):
        try:
            t, cpu = event_timer(cupy, lambda v=v: fused_ops.sgd_step(ws, gs, vs, 0.1, 0.9, True, 1e-4, "cuda", v),
                                 loop, repeat)
        except Exception as e:
            print(f"  {'sgd step':<22}{v:>8}  FAILED: {type(e).__name__}: {e}")
            results.append(dict(case="resnet_igc-20 L24M2", op="sgd step", version=v,
                                error=f"{type(e).__name__}: {e}"))
            continue
        cells = f"{t_ref:>10.3f}{t / t_ref:>8.2f}" if t_ref else f"{'-':>10}{'-':>8}"
        print(f"  {'sgd step':<22}{v:>8}{t:>10.3f}{cells}{cpu:>12.1f}")
        results.append(dict(case="resnet_igc-20 L24M2", op="sgd step", version=v, ours_ms=t, ours_cpu_us=cpu,
                            ref_ms=t_ref, ref_cpu_us=cpu_ref if t_ref else None))


# ---- launches per training step ------------------------------------------------------------------------
def count_launches(batch, size=32, fake=None):
    """Launches and host syncs of one resnet_igc-20 L24M2 SGD step on the stand-in."""
    fake = fake or install_standin()
    import igc_np as ig
    from igc_np import functional as F
    net = ig.nets.get_network("resnet_igc", 20, primary_partition=24, secondary_partition=2, rng=0).to("cuda")
    opt = ig.optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    x = ig.Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32), device="cuda")
    labels = ig.Tensor(rng.integers(0, 10, batch), device="cuda")
    fake.reset_counts()
    t = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(net(x), labels).backward()
    opt.step()
    counts = fake.counts()
    print(f"launches/step {counts['launches']}, host syncs/step {counts['syncs']}   "
          f"(resnet_igc-20 L24M2, batch {batch}, {size}x{size}, one SGD step on the CuPy stand-in: "
          f"{counts['kernels']} of our kernels + {counts['array_ops']} array ops; "
          f"{time.perf_counter() - t:.0f} s in the emulator)")
    for what, site in fake.sync_sites:
        print(f"  sync: {what} at {site}")
    return counts


def train(steps, batch, size=32, warmup=10):
    """SGD steps of resnet_igc-20 L24M2 on random CIFAR-format data; prints and returns images/s."""
    import igc_np as ig
    from igc_np import backend
    from igc_np import functional as F
    cupy = backend.cupy_module()
    net = ig.nets.get_network("resnet_igc", 20, primary_partition=24, secondary_partition=2, rng=0).to("cuda")
    opt = ig.optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8 * batch, 3, size, size), dtype=np.uint8)  # CIFAR's format
    labels = rng.integers(0, 10, 8 * batch)
    mean, std = np.float32(120.7), np.float32(64.2)
    transfers = []

    def hook(frame, event, arg):  # explicit device->host copies inside a step
        if event == "c_call" and getattr(arg, "__name__", "") in ("get", "item", "tolist", "asnumpy") \
                and type(getattr(arg, "__self__", None)).__module__.startswith("cupy"):
            transfers.append(arg.__name__)

    def step(i):
        j = (i % 8) * batch
        x = ig.Tensor((images[j:j + batch].astype(np.float32) - mean) / std, device="cuda")  # host -> device
        y = ig.Tensor(labels[j:j + batch], device="cuda")
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    for i in range(warmup):  # compiles every kernel
        step(i)
    stream_sync = cupy.cuda.Stream.null.synchronize if hasattr(cupy.cuda, "Stream") else (lambda: None)
    stream_sync()
    sys.setprofile(hook)
    t = time.perf_counter()
    try:
        for i in range(steps):
            loss = step(i)
        last = float(loss.data)  # the one sync, after the timed steps were issued
        stream_sync()
    finally:
        sys.setprofile(None)
    dt = time.perf_counter() - t
    print(f"train: resnet_igc-20 L24M2, batch {batch}, {size}x{size}, {steps} steps: {steps * batch / dt:.0f} images/s "
          f"({1e3 * dt / steps:.1f} ms/step), explicit device->host copies inside the steps: "
          f"{len(transfers)} ({', '.join(sorted(set(transfers))) or 'none'}), last loss {last:.3f}")
    return dict(network="resnet_igc-20 L24M2", batch=batch, size=size, steps=steps, images_per_s=steps * batch / dt,
                ms_per_step=1e3 * dt / steps, host_copies_in_steps=len(transfers), last_loss=last)


def roofline(results, dtype):
    """Each primary conv timing of `results` beside kernel_report.roofline's model of the same op,
    version and shape, and its roofline time: measured / roofline is the number the model predicts."""
    from igc_np.kernels import sass
    missing = sass.tools_missing("ptxas", "cuobjdump", "nvdisasm")
    if missing:
        print(f"\n--roofline: skipped, {missing}")
        return
    gpu = kernel_report.H100
    print(f"\nPrimary conv: measured vs kernel_report.py's model ({gpu['name']}; {np.dtype(dtype).name})")
    print(f"  {'case':<30}{'op':<20}{'version':>8} {'ours us':>10} {'model us':>10} {'roof us':>10} {'x roof':>8}")
    for r in results:
        if r.get("dims") is None or "ours_ms" not in r:
            continue
        m = kernel_report.roofline(PRIMARY_OPS[r["op"]], r["version"], tuple(r["dims"]), dtype, gpu)
        ours = r["ours_ms"] * 1e3
        r.update(model_us=m["model_s"] * 1e6, roofline_us=m["roofline_s"] * 1e6)
        print(f"  {r['case']:<30}{r['op']:<20}{r['version']:>8} {ours:>10.2f} {r['model_us']:>10.2f}"
              f" {r['roofline_us']:>10.2f} {ours / r['roofline_us']:>8.3g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None,
                        help="batch of every case (default: each shape's N in kernel_report.SHAPES; "
                             "--train/--count-launches: 64)")
    parser.add_argument("--loop", type=int, default=20, help="launches between one pair of CUDA events")
    parser.add_argument("--repeat", type=int, default=5, help="timed loops; the median is printed")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--count-launches", action="store_true",
                        help="count the launches and host syncs of one training step (CuPy stand-in, no GPU)")
    parser.add_argument("--standin", action="store_true",
                        help="run on tests/fake_cupy.py's CPU stand-in (checks the script; times mean nothing)")
    parser.add_argument("--roofline", action="store_true",
                        help="also model each primary conv timing (benchmarks/kernel_report.py's roofline)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--cases", type=int, default=None, help="benchmark only the first CASES shapes")
    parser.add_argument("--train", type=int, metavar="STEPS", help="train STEPS steps instead (images/s)")
    parser.add_argument("--size", type=int, default=32, help="--train/--count-launches image size")
    parser.add_argument("--warmup", type=int, default=10, help="--train: untimed steps first")
    args = parser.parse_args(argv)
    if args.count_launches:
        counts = count_launches(args.batch or 64, args.size)
        if args.json:
            write_json(args.json, dict(batch=args.batch or 64, size=args.size, **counts))
        return counts
    if args.standin:
        install_standin()
    cupy = gpu_or_exit()
    if args.train:
        figures = train(args.train, args.batch or 64, args.size, args.warmup)
        if args.json:
            write_json(args.json, figures)
        return figures
    ref, why = find_cudnn() if not args.standin else (None, "the stand-in has no cuDNN")
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"GPU: {gpu}; reference: {ref.name + ' ' + ref.version if ref else 'NONE'}")
    if ref is None:
        banner = f"!!! NO cuDNN REFERENCE: {why}. Only our timings are printed. !!!"
        print(banner)
        print(banner, file=sys.stderr)
    dtype = np.dtype(args.dtype).type
    results = []

    def save(done=False):  # after every row: a run killed by a timeout keeps what it measured
        if args.json:
            write_json(args.json, dict(gpu=gpu, reference=ref.version if ref else None, batch=args.batch,
                                       dtype=args.dtype, loop=args.loop, repeat=args.repeat, complete=done,
                                       results=results))
    save()
    for name, N, C, HW, L in SHAPES[:args.cases]:
        bench_case(cupy, ref, name, args.batch or N, C, HW, L, C // L, dtype, args.loop, args.repeat, results, save)
    bench_sgd(cupy, ref, dtype, args.loop, args.repeat, results)
    save()
    if args.roofline:
        roofline(results, dtype)
    save(done=True)
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"\n{len(failed)} rows FAILED: " + "; ".join(f"{r['case']} {r['op']} v{r.get('version')}"
                                                           for r in failed))
    return results


def write_json(path, data):
    """Write `data` as JSON through a temporary file and a rename: never half a file."""
    import json
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


if __name__ == "__main__":
    out = main()
    sys.exit(1 if isinstance(out, list) and any("error" in r for r in out) else 0)
