"""Launchers of the primary (grouped) conv ladder: group_conv.cu (v1), group_conv_v2.cu (v2),
group_conv_v3.cu (v3), with each version's launch geometry (``plan``) beside them.

``device`` is "cuda" (cupy arrays in and out, kernels run by CuPy) or "emu" (numpy arrays in and
out, the same kernels run by the CPU emulator). Arrays are float32 or float64, NCHW; inputs are
made C-contiguous here. ``stride`` and ``padding`` are (int, int) pairs. Shapes:

    conv2d_forward(x (N,C_in,H,W), W (C_out,C_in/G,kh,kw), stride, padding, groups) -> y (N,C_out,Ho,Wo)
    conv2d_backward_data(gy, W, x_shape, stride, padding, groups)          -> gx (x_shape)
    conv2d_backward_weight(x, gy, W_shape, stride, padding, groups)        -> gW (W_shape)

with Ho = (H + 2*ph - kh) // sh + 1 (Wo likewise). Every launcher takes ``version=None`` (the
version kernels/versions.py selects: use_version, $IGC_NP_KERNELS, the default, 3) or 1, 2, 3.
Invalid shapes raise ValueError naming the op, the argument and the shapes.

``plan(op, version, dims, itemsize)`` is the geometry of each version: its launches (grid, block,
shared memory, the kernel's extra ints) from the shapes alone, checked against a GPU's limits
(kernels/launch.py) and cached by shape. The v3 tile constants (IGC_RW, IGC_CQ, IGC_TH, IGC_TW,
IGC_GP) and block limits (__launch_bounds__) are read from group_conv_v3.cu, never restated here.
benchmarks/kernel_report.py models these plans without a GPU.
"""
import functools

import numpy as np

from . import versions
from .launch import (BANKS, MAX_BLOCKS, MAX_INDEXED_ELEMENTS, THREADS, Launch, cdiv, check, conflict_ways,
                     device_of, elementwise_plan, i32, output, prepare, reduce_plan, run, shape4, thread_limit,
                     xp_of)
from .loader import defines, get_module


def _pair(op, name, v, minimum):
    try:
        a, b = (int(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {(a, b)}")
    return a, b



def _conv_geometry(op, x_shape, W_shape, stride, padding, groups):
    """Validate a grouped conv's shapes; return the int32 argument tail shared by its kernels."""
    N, C_in, H, W = x_shape
    C_out, Cg_in, KH, KW = W_shape
    sh, sw = _pair(op, "stride", stride, 1)
    ph, pw = _pair(op, "padding", padding, 0)
    G = int(groups)
    if G < 1 or C_in % G or C_out % G:
        raise ValueError(f"{op}: groups={groups} must divide C_in={C_in} (x shape {x_shape}) "
                         f"and C_out={C_out} (W shape {W_shape})")
    if Cg_in != C_in // G:
        raise ValueError(f"{op}: W shape {W_shape} needs W.shape[1] = C_in/groups = {C_in // G} "
                         f"for x shape {x_shape}, groups={G}")
    Ho, Wo = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {KH}x{KW} is larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
                         f"(x shape {x_shape}, padding {(ph, pw)})")
    if N * C_out * Ho * Wo > MAX_INDEXED_ELEMENTS:
        raise ValueError(f"{op}: output of {N * C_out * Ho * Wo} elements exceeds the kernels' int indexing")
    dims = (N, C_in, H, W, C_out, KH, KW, sh, sw, ph, pw, G, Ho, Wo)
    return (N, C_out, Ho, Wo), tuple(i32(d) for d in dims)


# ---- grouped convolution: the primary conv ladder (group_conv.cu v1, group_conv_v2.cu, group_conv_v3.cu)

versions.register("conv2d_forward", {
    1: "group_conv.cu: one thread per output, flat index split by division",
    2: "group_conv_v2.cu: compile-time KH, KW, SH, SW and a 3-D grid",
    3: "group_conv_v3.cu: shared-memory input tile, 2 channels x 4 pixels per thread"}, default=3)
versions.register("conv2d_backward_data", {
    1: "group_conv.cu: one thread per input element, gathers",
    2: "group_conv_v2.cu: compile-time KH, KW, SH, SW and a 3-D grid",
    3: "group_conv_v3.cu: shared-memory gy tile, 2 channels x 4 pixels per thread"}, default=3)
versions.register("conv2d_backward_weight", {
    1: "group_conv.cu: one block per weight, tree reduction in shared memory",
    2: "group_conv_v2.cu: one block per weight, compile-time shapes, 3-D grid, padding cut from the bounds",
    3: "group_conv_v3.cu: per-tile x and gy in shared memory, a slice of weights in registers, two passes"},
    default=3)

# (KH, KW, SH, SW) with a compiled kernel in v2 and v3 (their "// instantiate" line); any other
# shape runs the generic instantiation (0, 0, 0, 0), which reads them at run time.
SPECIALIZED = {(1, 1, 1, 1), (3, 3, 1, 1), (3, 3, 2, 2), (7, 7, 2, 2)}
# The tile constants, stated once in group_conv_v3.cu (its #defines and __launch_bounds__):
_V3 = defines("group_conv_v3.cu")
RW, CQ, TH, TW = _V3["IGC_RW"], _V3["IGC_CQ"], _V3["IGC_TH"], _V3["IGC_TW"]
GP = _V3["IGC_GP"]                # backward-weight: words between two gy planes (TH*TW + 1)
V3_THREADS = thread_limit("group_conv_v3.cu", "conv2d_forward_v3")  # forward / backward-data block size (at most)
V3_SMEM = 24 * 1024               # their staging budget: a chunk of channels fits in 24 KiB
V3_WEIGHT_THREADS = thread_limit("group_conv_v3.cu", "conv2d_backward_weight_v3")  # pass-1 block size
V3_WEIGHT_SMEM = 48 * 1024        # the default dynamic shared memory limit of a block
V3_TARGET_BLOCKS = 528            # backward-weight: enough blocks for 4 per SM of a 132-SM GPU


def _targs(dims):
    """The compile-time (KH, KW, SH, SW) of v2/v3 for this conv's dims, or the generic (0, 0, 0, 0)."""
    t = tuple(int(d) for d in (dims[5], dims[6], dims[7], dims[8]))
    return t if t in SPECIALIZED else (0, 0, 0, 0)


def _pow2_at_least(n, cap):
    p = 1
    while p < min(n, cap):
        p *= 2
    return p


def _grid_2d_over(rows, cols, threads=256):
    """A 2-D block (bx, by) over a rows x cols image: bx a power of two <= 32 covering cols if it
    can, by a power of two, bx * by <= threads."""
    bx = _pow2_at_least(cols, 32)
    by = _pow2_at_least(rows, threads // bx)
    return bx, by


def _tile_block(rows, cols, channels, limit=None):
    """v3 block (tx, ty, tz): tx * RW columns, ty rows, tz * CQ channels, tx * ty * tz at most
    `limit` threads (the kernels' __launch_bounds__, V3_THREADS).
    Up to 4 channel pairs come first: every staged input element then feeds 8 channels' sums
    (fewer rows means more halo rows per output row, a smaller cost for 3x3 kernels). ty is any
    count up to what the limit leaves (not a power of two: 56 rows at 14 x 8 threads are 7 row
    tiles of 8, where a power of two, 16, made 224 threads, over the limit): the one that pads
    the fewest rows, then the fewest row tiles."""
    limit = V3_THREADS if limit is None else int(limit)
    tz = min(cdiv(channels, CQ), 4)
    tx = min(cdiv(cols, RW), 16)  # not a power of two: 56 columns are 14 threads, no idle ones
    ty_max = max(1, min(rows, limit // (tx * tz)))
    ty = min(range(1, ty_max + 1), key=lambda t: (cdiv(rows, t) * t, cdiv(rows, t)))
    tz = max(1, min(cdiv(channels, CQ), limit // (tx * ty)))
    return tx, ty, tz


def tile_read_addresses(block, pitch, step_h=1, step_w=1):
    """Element offsets that the first warp of a v3 forward/backward-data block reads from its
    staged tile in the hot loop: thread (x, y, z) reads row y*step_h, column x*step_w (z only
    changes the channels, a broadcast)."""
    tx, ty, tz = block
    out = []
    for t in range(min(32, tx * ty * tz)):
        x, y = t % tx, (t // tx) % ty
        out.append(y * step_h * pitch + x * step_w)
    return out


def tile_pitch(row, block, step_h, step_w, itemsize):
    """The row pitch (elements, >= row) of a v3 staged tile: the smallest whose warp reads take
    the fewest shared-memory passes (CIFAR stage 1's 34-float rows made 4-way bank conflicts)."""
    return min(range(row, row + BANKS),
               key=lambda p: (conflict_ways(tile_read_addresses(block, p, step_h, step_w), itemsize), p))


def weight_gy_addresses(GB, COB, CIB, KH, JB, threads, pitch):
    """Element offsets that the first warp of a v3 backward-weight block reads from the staged gy
    planes at one pixel (q = 0): thread t owns slot t % n_slots (see the kernel), whose output
    channel pair cq of group gb is plane gb*COBP + cq*CQ; lane t // n_slots reads row lane."""
    n_cq = cdiv(COB, CQ)
    n_slots = GB * n_cq * CIB * KH * JB
    out = []
    for t in range(min(32, threads)):
        slot, lane = t % n_slots, t // n_slots
        s3 = slot // (JB * KH) // CIB
        gb, cq = s3 // n_cq, s3 % n_cq
        out.append((gb * n_cq * CQ + cq * CQ) * pitch + min(lane, TH - 1) * TW)
    return out


def _chunk(per_channel, count, itemsize, op):
    """How many channels of `per_channel` elements fit the V3_SMEM staging budget (>= 1)."""
    if per_channel * itemsize > 48 * 1024:
        raise ValueError(f"{op}: a v3 tile needs {per_channel * itemsize} bytes of shared memory per "
                         "channel, more than 48 KiB; use version 2 (igc_np.kernels.use_version)")
    return max(1, min(count, V3_SMEM // (per_channel * itemsize)))


def weight_slices(Cg_in, Cg_out, G, KH, KW, SH, SW, specialized, itemsize, threads=V3_WEIGHT_THREADS):
    """The channel slice of a v3 backward-weight block: (GB groups, COB output and CIB input
    channels per group, shared memory in bytes). A thread owns CQ output channels x KWB taps
    of one (c, i) (KWB = KW for a specialized 1x1 or 3x3 kernel, else 1); n_slots = GB * ceil(COB/CQ)
    * CIB * KH * (KW/KWB) must fit in `threads`, and up to TH threads (lanes) share a slot. Small
    groups (IGC's M = 2) take several groups per block; large ones split the group's channels.
    Among the slices that fit (tiles in V3_WEIGHT_SMEM bytes) the one that keeps the most threads
    busy on real channels (n_slots * lanes * the fraction of the chunks that is not padding) wins,
    then the one with the most weights."""
    KWB = KW if specialized and KW <= 3 else 1
    JB = KW // KWB
    PRH, PRW = (TH - 1) * SH + KH, (TW - 1) * SW + KW  # the x tile of an output tile
    if cdiv(Cg_out, CQ) * Cg_in * KH * JB <= threads:   # whole groups
        candidates = [(GB, Cg_out, Cg_in) for GB in range(1, G + 1)]
    else:                                                # a part of one group
        candidates = [(1, COB, min(Cg_in, threads // (cdiv(COB, CQ) * KH * JB)))
                      for COB in range(1, Cg_out + 1) if cdiv(COB, CQ) * KH * JB <= threads]
    best = None
    for GB, COB, CIB in candidates:
        slots = GB * cdiv(COB, CQ) * CIB * KH * JB
        # the tiles (or the lanes' sums), then the int offsets of the slice's channel planes
        smem = (max(GB * cdiv(COB, CQ) * CQ * GP + GB * CIB * PRH * PRW, threads * CQ * KWB) * itemsize
                + 4 * GB * (CIB + cdiv(COB, CQ) * CQ))
        if slots > threads or smem > V3_WEIGHT_SMEM:
            continue
        # threads that work, times the part of their work that is not padding: a last chunk of
        # groups or channels that is partly empty still runs its slots on zeros
        useful = (G / (cdiv(G, GB) * GB)) * (Cg_out / (cdiv(Cg_out, COB) * COB)) * (Cg_in / (cdiv(Cg_in, CIB) * CIB))
        score = (slots * min(TH, threads // slots) * useful, GB * COB * CIB)
        if best is None or score > best[0]:
            best = (score, (GB, COB, CIB, smem))
    if best is None:
        raise ValueError(f"conv2d_backward_weight: no v3 channel slice of a {KH}x{KW} kernel with "
                         f"Cg_in={Cg_in}, Cg_out={Cg_out} fits {V3_WEIGHT_SMEM} bytes of shared memory; "
                         "use version 2 (igc_np.kernels.use_version)")
    return best[1]


@functools.lru_cache(maxsize=4096)
def plan(op, version, dims, itemsize):
    """The launches of `op` ("conv2d_forward", ...) version 1, 2 or 3 for a conv with the int
    argument tail `dims` = (N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo), each checked
    against a GPU's limits (launch.check: LaunchPlanError naming the shapes). A pure function of
    the shapes, cached: the planner's Python (18-72 us for v3 backward-weight, more with the
    checks) runs once per layer shape. (numpy ints hash as Python ints: the launchers' int32 dims
    hit the same entries.)"""
    dims = tuple(int(d) for d in dims)
    launches = _plan_unchecked(str(op), int(version), dims, int(itemsize))
    where = _where(op, version, dims)
    return tuple(check(L, itemsize, where) for L in launches)


def _where(op, version, dims):
    N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    return (f"{op} v{version} (x shape {(N, C_in, H, W)}, W shape {(C_out, C_in // G, KH, KW)}, "
            f"stride {(SH, SW)}, padding {(PH, PW)}, groups {G})")


def _v3_tile_plan(op, dims, itemsize):
    """The one launch of v3 forward or backward-data: block, row pitch of the staged tile, the
    channels staged per pass, shared memory."""
    N, C_in, H, Wd, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    Cg_in, Cg_out = C_in // G, C_out // G
    forward = op == "conv2d_forward"
    rows, cols, owned, summed = (Ho, Wo, Cg_out, Cg_in) if forward else (H, Wd, Cg_in, Cg_out)
    tx, ty, tz = _tile_block(rows, cols, owned)
    if forward:  # the input patch of the output tile; a thread steps SH rows, SW columns
        PRH, PRW, step_h, step_w = (ty - 1) * SH + KH, (tx * RW - 1) * SW + KW, SH, SW
    else:        # the gy patch of the gx tile; a thread steps about 1/SH rows (see the kernel)
        PRH, PRW, step_h, step_w = (ty + KH - 2) // SH + 2, (tx * RW + KW - 2) // SW + 2, 1, 1
    XP = tile_pitch(PRW, (tx, ty, tz), step_h, step_w, itemsize)
    CC = _chunk(PRH * XP + tz * CQ * KH * KW, summed, itemsize, op)
    kernel = "conv2d_forward_v3" if forward else "conv2d_backward_data_v3"
    return [Launch("group_conv_v3.cu", kernel, _targs(dims),
                   (N * G * cdiv(owned, tz * CQ), cdiv(rows, ty), cdiv(cols, tx * RW)), (tx, ty, tz),
                   (CC * PRH * XP + tz * CQ * CC * KH * KW) * itemsize, (CC, XP))]


def _plan_unchecked(op, version, dims, itemsize):
    N, C_in, H, Wd, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    Cg_in, Cg_out = C_in // G, C_out // G
    targs = _targs(dims)
    if op not in CONV_OPS:
        raise ValueError(f"plan: op must be one of {', '.join(CONV_OPS)}, got {op!r}")
    if version == 3 and op != "conv2d_backward_weight":
        return _v3_tile_plan(op, dims, itemsize)
    if op == "conv2d_forward":
        if version == 1:
            return [elementwise_plan("group_conv.cu", op, N * C_out * Ho * Wo)]
        bx, by = _grid_2d_over(Ho, Wo)
        return [Launch("group_conv_v2.cu", "conv2d_forward_v2", targs, (N * C_out, cdiv(Ho, by), cdiv(Wo, bx)),
                       (bx, by))]
    if op == "conv2d_backward_data":
        if version == 1:
            return [elementwise_plan("group_conv.cu", op, N * C_in * H * Wd)]
        bx, by = _grid_2d_over(H, Wd)
        return [Launch("group_conv_v2.cu", "conv2d_backward_data_v2", targs,
                       (N * C_in, cdiv(H, by), cdiv(Wd, bx)), (bx, by))]
    n_weights = C_out * Cg_in * KH * KW
    if version == 1:
        return [reduce_plan("group_conv.cu", op, n_weights, N * Ho * Wo, itemsize)]
    if version == 2:
        bx, by = _grid_2d_over(Ho, Wo)
        return [Launch("group_conv_v2.cu", "conv2d_backward_weight_v2", targs, (C_out, Cg_in, KH * KW), (bx, by),
                       bx * by * itemsize)]
    GB, COB, CIB, smem = weight_slices(Cg_in, Cg_out, G, KH, KW, SH, SW, targs != (0, 0, 0, 0), itemsize)
    slices = cdiv(G, GB) * cdiv(Cg_out, COB) * cdiv(Cg_in, CIB)
    spatial = cdiv(Ho, TH) * cdiv(Wo, TW)
    NB = cdiv(N, max(1, min(N, cdiv(V3_TARGET_BLOCKS, spatial * slices))))
    n_tiles = cdiv(N, NB) * spatial
    return [Launch("group_conv_v3.cu", "conv2d_backward_weight_v3", targs, (n_tiles, slices), (V3_WEIGHT_THREADS,),
                   smem, (GB, COB, CIB, NB), scratch=(n_tiles, n_weights)),
            Launch("group_conv_v3.cu", "conv2d_backward_weight_v3_reduce", (),
                   (min(cdiv(n_weights, THREADS), MAX_BLOCKS),), (THREADS,), 0, (n_tiles, n_weights),
                   kind="reduce")]


CONV_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def _run(op, version, a, b, out, dims):
    """Launch `op` version `version` on arrays (a, b) -> out (all on one device, one dtype)."""
    device = device_of(out)
    scratch = None
    for L in plan(op, version, dims, out.dtype.itemsize):
        module = get_module(L.file, out.dtype, device)
        extra = tuple(i32(v) for v in L.extra)
        if L.kind == "reduce":
            run(L, module, (scratch, out) + extra)
            continue
        if L.scratch:
            scratch = output(xp_of(device), L.scratch, out.dtype, device)
        run(L, module, (a, b, scratch if L.scratch else out) + dims + extra)


def _versions_of(op):
    return {v: (lambda a, b, out, dims, _v=v: _run(op, _v, a, b, out, dims)) for v in (1, 2, 3)}


# version -> launcher(in, in, out, dims); tests replace entries to see which version runs
_FORWARD = _versions_of("conv2d_forward")
_BACKWARD_DATA = _versions_of("conv2d_backward_data")
_BACKWARD_WEIGHT = _versions_of("conv2d_backward_weight")


def conv2d_forward(x, W, stride, padding, groups, device, version=None):
    """y = grouped conv of x (N,C_in,H,W) with W (C_out,C_in/G,kh,kw), no bias. `version` (1, 2, 3)
    overrides versions.selected("conv2d_forward")."""
    op = "conv2d_forward"
    xp, (x, W) = prepare(op, device, x=x, W=W)
    y_shape, dims = _conv_geometry(op, x.shape, W.shape, stride, padding, groups)
    y = output(xp, y_shape, x.dtype, device)
    _FORWARD[versions.resolve(op, version)](x, W, y, dims)
    return y


def _check_gy(op, gy, y_shape, x_shape, W_shape):
    if tuple(gy.shape) != y_shape:
        raise ValueError(f"{op}: gy shape {tuple(gy.shape)} must be the output shape {y_shape} of "
                         f"x shape {tuple(x_shape)} and W shape {tuple(W_shape)}")


def conv2d_backward_data(gy, W, x_shape, stride, padding, groups, device, version=None):
    """gx (x_shape) = gradient of the conv's input, from gy (N,C_out,Ho,Wo) and W."""
    op = "conv2d_backward_data"
    xp, (gy, W) = prepare(op, device, gy=gy, W=W)
    x_shape = shape4(op, "x_shape", x_shape)
    y_shape, dims = _conv_geometry(op, x_shape, W.shape, stride, padding, groups)
    _check_gy(op, gy, y_shape, x_shape, W.shape)
    if int(np.prod(x_shape)) > MAX_INDEXED_ELEMENTS:  # gx is the one array _prepare and _conv_geometry do not see
        raise ValueError(f"{op}: gx of x shape {x_shape} has {int(np.prod(x_shape))} elements, more than "
                         f"the kernels' int indexing allows ({MAX_INDEXED_ELEMENTS})")
    gx = output(xp, x_shape, gy.dtype, device)
    _BACKWARD_DATA[versions.resolve(op, version)](gy, W, gx, dims)
    return gx


def conv2d_backward_weight(x, gy, W_shape, stride, padding, groups, device, version=None):
    """gW (W_shape) = gradient of the conv's weight, from x (N,C_in,H,W) and gy (N,C_out,Ho,Wo)."""
    op = "conv2d_backward_weight"
    xp, (x, gy) = prepare(op, device, x=x, gy=gy)
    W_shape = shape4(op, "W_shape", W_shape)
    y_shape, dims = _conv_geometry(op, x.shape, W_shape, stride, padding, groups)
    _check_gy(op, gy, y_shape, x.shape, W_shape)
    gW = output(xp, W_shape, x.dtype, device)
    _BACKWARD_WEIGHT[versions.resolve(op, version)](x, gy, gW, dims)
    return gW
