"""Launchers of batch_norm.cu: BatchNorm fused with the ReLU and the residual add that follow it
(the kernels of the BN+ReLU op, igc_np/ops/fused.py, and of BatchNorm2d on "cuda" and "emu").

``device`` is "cuda" (cupy arrays) or "emu" (numpy arrays, run by the CPU emulator), as in
kernels/conv.py. Shapes (x, residual, y, gy: (N, C, H, W); per-channel arrays: (C,)):

    batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                       relu=False, residual=None, version=None, slices=None)  -> y, mean, stat
    batch_norm_backward(gy, y, x, mean, stat, gamma, training, eps, relu=False,
                        has_residual=False, version=None, slices=None)  -> gx, ggamma, gbeta, gresidual (or None)

version: None (the one kernels/versions.py selects) or an int of op "batch_norm": 1 (one block per
channel for the reductions) or 2 (each channel split over `slices` blocks; None: chosen from the
shape by bn_slices()). ``batch_norm_plans`` is each version's launch geometry.

Training forward = 2 launches (statistics, apply), evaluation 1, backward 2. ``stat`` is the
batch's 1/sqrt(var + eps) in training mode and the running variance in evaluation mode (the
kernels compute 1/sqrt(var + eps) from it), so backward needs no extra launch in either mode.
"""
import numpy as np

from . import versions
from .launch import MAX_BLOCKS, Launch, check, elementwise_plan, i32, output, prepare, run
from .loader import defines, get_module

BN_THREADS = defines("batch_norm.cu")["BN_THREADS"]  # the per-channel reductions' block size
BN_TARGET_BLOCKS = 1024   # v2: about this many reduction blocks (several per SM of an H100)
BN_SLICE_VALUES = 2048    # v2: at least this many values per slice (block)


def bn_slices(C, m):
    """v2's blocks per channel for C channels of m values: enough blocks to fill a GPU, slices of
    at least BN_SLICE_VALUES values, at most 64 (the per-row kernels add the P partials)."""
    return max(1, min(m // BN_SLICE_VALUES, -(-BN_TARGET_BLOCKS // C), 64))


versions.register("batch_norm", {
    1: "batch_norm.cu: one block per channel for the statistics and the backward sums",
    2: "batch_norm.cu: P blocks per channel, partials combined in order by the per-row apply kernels"}, default=2)
def _bn_version(op, version, slices, C, m):
    version = versions.resolve("batch_norm", version, where=op)
    P = bn_slices(C, m) if slices is None else int(slices)
    if not 1 <= P <= m:
        raise ValueError(f"{op}: slices={slices} must lie in [1, N*H*W = {m}]")
    return version, P


def _row_threads(HW):
    return min(BN_THREADS, 32 * ((HW + 31) // 32))


def _channel_plan(kernel, blocks):
    """One block of BN_THREADS per channel (or per (channel, slice)), grid-stride beyond MAX_BLOCKS."""
    return Launch("batch_norm.cu", kernel, (), (min(blocks, MAX_BLOCKS),), (BN_THREADS,))


def _row_plan(kernel, N, C, HW):
    """One block per (n, c) row of HW values, no wider than the row (whole warps)."""
    return Launch("batch_norm.cu", kernel, (), (min(N * C, MAX_BLOCKS),), (_row_threads(HW),))


def batch_norm_plans(op, version, training, x_shape, P, itemsize):
    """The launches of batch_norm_forward / batch_norm_backward `version` on x (N, C, H, W) with P
    slices a channel (v2), checked (launch.check), in launch order."""
    N, C, H, W = (int(d) for d in x_shape)
    where = f"{op} v{version} (x shape {(N, C, H, W)}, slices={P})"
    if op == "batch_norm_forward":
        if not training:
            plans = [elementwise_plan("batch_norm.cu", "bn_apply", N * C * H * W)]
        elif version == 1:
            plans = [_channel_plan("bn_stats", C), elementwise_plan("batch_norm.cu", "bn_apply", N * C * H * W)]
        else:
            plans = [_channel_plan("bn_stats_partial", C * P), _row_plan("bn_apply_rows", N, C, H * W)]
    elif version == 1:
        plans = [_channel_plan("bn_backward_reduce", C), elementwise_plan("batch_norm.cu", "bn_backward_data", N * C * H * W)]
    else:
        plans = [_channel_plan("bn_backward_partial", C * P), _row_plan("bn_backward_data_rows", N, C, H * W)]
    return [check(L, itemsize, where) for L in plans]


def _scalar(dtype, v):
    return np.dtype(dtype).type(v)


def _check_channels(op, C, shape_text, **arrays):
    for name, a in arrays.items():
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"{op}: {name} shape {tuple(a.shape)} != (C,) = ({C},) for {shape_text}")


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, device,
                       relu=False, residual=None, version=None, slices=None):
    """y = [relu](batch_norm(x) [+ residual]); running statistics updated in place (training).
    Returns (y, mean, stat) for batch_norm_backward."""
    op = "batch_norm_forward"
    arrays = {"x": x} if residual is None else {"x": x, "residual": residual}
    xp, prepared = prepare(op, device, **arrays)
    x = prepared[0]
    res = prepared[1] if residual is not None else x  # read only when has_residual
    if residual is not None and res.shape != x.shape:
        raise ValueError(f"{op}: residual shape {tuple(res.shape)} must equal x shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    text = f"x shape {tuple(x.shape)}"
    _check_channels(op, C, text, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    dt = x.dtype
    gamma, beta = (xp.ascontiguousarray(v) for v in (gamma, beta))
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.dtype != dt:
            raise ValueError(f"{op}: {name} dtype {v.dtype} != x dtype {dt} ({text})")
    module = get_module("batch_norm.cu", dt, device)
    dims = (i32(N), i32(C), i32(H * W))
    version, P = _bn_version(op, version, slices, C, N * H * W)  # evaluation: one elementwise pass either way
    plans = batch_norm_plans(op, version, training, x.shape, P, dt.itemsize)
    if training:
        if N * H * W < 2:
            raise ValueError(f"{op}: training needs more than one value per channel ({text})")
        mean, stat = output(xp, C, dt, device), output(xp, C, dt, device)
        # the kernel updates the running statistics itself when they have x's dtype and layout
        in_kernel = running_mean is not None and all(
            v.dtype == dt and v.flags.c_contiguous for v in (running_mean, running_var))
        rm, rv = (running_mean, running_var) if in_kernel else (mean, stat)  # unused when not in_kernel
        hyper = (_scalar(dt, eps), _scalar(dt, momentum), _scalar(dt, 1 - momentum), i32(in_kernel))
        if version == 1:
            run(plans[0], module, (x, mean, stat, rm, rv) + dims + hyper)
        else:  # statistics by (channel, slice) blocks; the apply kernel combines them and writes y
            partial = output(xp, (C, P, 2), dt, device)
            run(plans[0], module, (x, partial) + dims + (i32(P),))
            y = output(xp, x.shape, dt, device)
            run(plans[1], module, (x, partial, gamma, beta, res, y, mean, stat, rm, rv) + dims + (i32(P),) + hyper
                + (i32(bool(relu)), i32(residual is not None)))
        if running_mean is not None and not in_kernel:
            # e.g. float32 buffers with float64 x (gradient checks): array ops, as the CPU path;
            # the variance is recomputed from x (1/stat^2 - eps would lose digits)
            var = ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))
            running_mean *= momentum
            running_mean += (1 - momentum) * mean
            running_var *= momentum
            running_var += (1 - momentum) * var
        if version == 2:
            return y, mean, stat
        stat_is_var = 0
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: evaluation mode (training=False) needs running_mean and running_var")
        mean, stat = (xp.ascontiguousarray(v.astype(dt, copy=False)) for v in (running_mean, running_var))
        stat_is_var = 1
    y = output(xp, x.shape, dt, device)
    run(plans[-1], module, (x, mean, stat, gamma, beta, res, y) + dims
        + (_scalar(dt, eps), i32(stat_is_var), i32(bool(relu)), i32(residual is not None)))
    return y, mean, stat


def batch_norm_backward(gy, y, x, mean, stat, gamma, training, eps, device, relu=False, has_residual=False,
                        version=None, slices=None):
    """Gradients of batch_norm_forward: (gx, ggamma, gbeta, gresidual or None). y is the forward's
    output (its ReLU mask), mean and stat what the forward returned."""
    op = "batch_norm_backward"
    xp, (gy, y, x) = prepare(op, device, gy=gy, y=y, x=x)
    if not gy.shape == y.shape == x.shape:
        raise ValueError(f"{op}: gy {tuple(gy.shape)}, y {tuple(y.shape)} and x {tuple(x.shape)} "
                         "must have one shape")
    N, C, H, W = x.shape
    dt = x.dtype
    gamma = xp.ascontiguousarray(gamma)
    _check_channels(op, C, f"x shape {tuple(x.shape)}", mean=mean, stat=stat, gamma=gamma)
    module = get_module("batch_norm.cu", dt, device)
    dims = (i32(N), i32(C), i32(H * W))
    stat_is_var = i32(not training)
    ggamma, gbeta = output(xp, C, dt, device), output(xp, C, dt, device)
    version, P = _bn_version(op, version, slices, C, N * H * W)
    plans = batch_norm_plans(op, version, training, x.shape, P, dt.itemsize)
    gx = output(xp, x.shape, dt, device)
    gres = output(xp, x.shape, dt, device) if has_residual else gx  # gx: a placeholder the kernel does not write
    flags = (i32(bool(relu)), i32(bool(training)), i32(bool(has_residual)))
    if version == 2:
        partial = output(xp, (C, P, 2), dt, device)
        run(plans[0], module,
            (gy, y, x, mean, stat, partial) + dims + (i32(P), _scalar(dt, eps), stat_is_var, i32(bool(relu))))
        run(plans[1], module, (gy, y, x, mean, stat, gamma, partial, ggamma, gbeta, gx, gres) + dims
            + (i32(P), _scalar(dt, eps), stat_is_var) + flags)
        return gx, ggamma, gbeta, (gres if has_residual else None)
    run(plans[0], module,
        (gy, y, x, mean, stat, ggamma, gbeta) + dims + (_scalar(dt, eps), stat_is_var, i32(bool(relu))))
    run(plans[1], module, (gy, y, x, mean, stat, gamma, ggamma, gbeta, gx, gres) + dims
        + (_scalar(dt, eps), stat_is_var) + flags)
    return gx, ggamma, gbeta, (gres if has_residual else None)
