"""Launchers of the hand-written kernels: arrays in, arrays out.

``device`` is "cuda" (cupy arrays in and out, kernels run by CuPy) or "emu" (numpy arrays in and
out, the same kernels run by the CPU emulator). Arrays are float32 or float64, NCHW; inputs are
made C-contiguous here. ``stride`` and ``padding`` are (int, int) pairs. Shapes:

    conv2d_forward(x (N,C_in,H,W), W (C_out,C_in/G,kh,kw), stride, padding, groups) -> y (N,C_out,Ho,Wo)
    conv2d_backward_data(gy, W, x_shape, stride, padding, groups)          -> gx (x_shape)
    conv2d_backward_weight(x, gy, W_shape, stride, padding, groups)        -> gW (W_shape)
    permute_channels(x (N,C,H,W), b)                                       -> y (N,C,H,W)
    interleaved_secondary_forward(x (N,C,H,W), W2 (C,C/S,1,1), L, S)        -> y (N,C,H,W)
    interleaved_secondary_backward_data(gy, W2, L, S)                      -> gx (N,C,H,W)
    interleaved_secondary_backward_weight(x, gy, W2_shape, L, S)           -> gW2 (W2_shape)

Every launcher takes ``version=None`` (the version kernels/versions.py selects: use_version,
$IGC_NP_KERNELS, the default) or an int version of its op: 1, 2, 3 for the conv ops, 1, 2 for
"interleaved_secondary" (its three launchers), 0 (the shape rule), 1, 2 for permute_channels.

with Ho = (H + 2*ph - kh) // sh + 1 (Wo likewise). Invalid shapes raise ValueError naming the
op, the argument and the shapes.
"""
import functools

import numpy as np

from . import versions
from .launch import Launch, LaunchPlanError, check, output, run, thread_limit  # noqa: F401 (re-exported)
from .loader import defines, get_module, instantiations

THREADS = 256          # threads per block of the one-thread-per-element kernels
MAX_BLOCKS = 1 << 20   # the kernels loop (grid-stride) over whatever a grid this size leaves
REDUCE_MAX_THREADS = 256
# The most elements an array of a launch may have. The kernels index with (32-bit) int and step
# by gridDim.x * blockDim.x (at most MAX_BLOCKS * THREADS = 2^28): below 2^30 elements, idx + step
# stays below 2^31, so no index overflows.
MAX_INDEXED_ELEMENTS = 2**30

i32 = np.int32


def _xp(device):
    if isinstance(device, str) and device.split(":")[0] == "cuda":  # "cuda:1": the caller's current device
        import cupy
        return cupy
    if device == "emu":
        return np
    raise ValueError(f"device must be 'cuda' or 'emu', got {device!r}")


def _prepare(op, device, **arrays):
    """Check the arrays' kind (numpy for emu, cupy for cuda), rank 4 and common float dtype;
    return them C-contiguous, in the keyword order given."""
    xp = _xp(device)
    out, dtype = [], None
    for name, a in arrays.items():
        if not isinstance(a, xp.ndarray):
            raise TypeError(f"{op}: {name} must be a {xp.__name__}.ndarray on device {device!r}, "
                            f"got {type(a).__module__}.{type(a).__name__}")
        if a.ndim != 4:
            raise ValueError(f"{op}: {name} must be 4-D (NCHW or OIHW), got shape {tuple(a.shape)}")
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
        if dtype is not None and a.dtype != dtype:
            raise ValueError(f"{op}: {name} has dtype {a.dtype} but {next(iter(arrays))} has {dtype}")
        dtype = a.dtype
        out.append(xp.ascontiguousarray(a))
    for a in out:
        if a.size > MAX_INDEXED_ELEMENTS:
            raise ValueError(f"{op}: arrays of {a.size} elements exceed the kernels' int indexing")
    return xp, out


def _pair(op, name, v, minimum):
    try:
        a, b = (int(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {(a, b)}")
    return a, b


def _shape4(op, name, shape):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"{op}: {name} must be 4 positive ints, got {shape}")
    return shape


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


def _elementwise_plan(file, kernel, total):
    """One thread per output element, grid-stride beyond MAX_BLOCKS blocks."""
    return Launch(file, kernel, (), (max(1, min(_cdiv(total, THREADS), MAX_BLOCKS)),), (THREADS,))


def _reduce_plan(file, kernel, n_outputs, terms, itemsize):
    """One block per output element; a power-of-two block of at most REDUCE_MAX_THREADS threads,
    no larger than the number of terms needs (minimum a warp), plus its shared memory."""
    threads = 32
    while threads < min(terms, REDUCE_MAX_THREADS):
        threads *= 2
    return Launch(file, kernel, (), (max(1, min(n_outputs, MAX_BLOCKS)),), (threads,), threads * itemsize)


def _launch(module, launch, args, where, itemsize):
    """Check `launch` (launch.check: a GPU's limits, `where` names the call) and run it."""
    run(check(launch, itemsize, where), module, args)


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
BANKS = 32                        # shared-memory banks of 4-byte words (every GPU since Fermi)
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


def _cdiv(a, b):
    return -(-a // b)


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
    tz = min(_cdiv(channels, CQ), 4)
    tx = min(_cdiv(cols, RW), 16)  # not a power of two: 56 columns are 14 threads, no idle ones
    ty_max = max(1, min(rows, limit // (tx * tz)))
    ty = min(range(1, ty_max + 1), key=lambda t: (_cdiv(rows, t) * t, _cdiv(rows, t)))
    tz = max(1, min(_cdiv(channels, CQ), limit // (tx * ty)))
    return tx, ty, tz


def conflict_ways(addresses, itemsize):
    """Shared-memory passes one warp's load takes: `addresses` (element indices, one per thread of
    the warp) on BANKS banks of 4-byte words; threads reading one address share a pass. 8-byte
    elements are served a half-warp at a time (each half's passes add up)."""
    words = 1 if itemsize <= 4 else 2
    halves = [addresses] if words == 1 else [addresses[:16], addresses[16:]]
    total = 0
    for part in halves:
        banks = {}
        for a in set(part):
            for w in range(words):
                banks.setdefault((a * words + w) % BANKS, set()).add(a)
        total += max((len(v) for v in banks.values()), default=0)
    return total


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
    n_cq = _cdiv(COB, CQ)
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
    if _cdiv(Cg_out, CQ) * Cg_in * KH * JB <= threads:   # whole groups
        candidates = [(GB, Cg_out, Cg_in) for GB in range(1, G + 1)]
    else:                                                # a part of one group
        candidates = [(1, COB, min(Cg_in, threads // (_cdiv(COB, CQ) * KH * JB)))
                      for COB in range(1, Cg_out + 1) if _cdiv(COB, CQ) * KH * JB <= threads]
    best = None
    for GB, COB, CIB in candidates:
        slots = GB * _cdiv(COB, CQ) * CIB * KH * JB
        # the tiles (or the lanes' sums), then the int offsets of the slice's channel planes
        smem = (max(GB * _cdiv(COB, CQ) * CQ * GP + GB * CIB * PRH * PRW, threads * CQ * KWB) * itemsize
                + 4 * GB * (CIB + _cdiv(COB, CQ) * CQ))
        if slots > threads or smem > V3_WEIGHT_SMEM:
            continue
        # threads that work, times the part of their work that is not padding: a last chunk of
        # groups or channels that is partly empty still runs its slots on zeros
        useful = (G / (_cdiv(G, GB) * GB)) * (Cg_out / (_cdiv(Cg_out, COB) * COB)) * (Cg_in / (_cdiv(Cg_in, CIB) * CIB))
        score = (slots * min(TH, threads // slots) * useful, GB * COB * CIB)
        if best is None or score > best[0]:
            best = (score, (GB, COB, CIB, smem))
    if best is None:
        raise ValueError(f"conv2d_backward_weight: no v3 channel slice of a {KH}x{KW} kernel with "
                         f"Cg_in={Cg_in}, Cg_out={Cg_out} fits {V3_WEIGHT_SMEM} bytes of shared memory; "
                         "use version 2 (igc_np.kernels.use_version)")
    return best[1]


def plan(op, version, dims, itemsize):
    """The launches of `op` ("conv2d_forward", ...) version 1, 2 or 3 for a conv with the int
    argument tail `dims` = (N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo), each checked
    against a GPU's limits (launch.check: LaunchPlanError naming the shapes). Cached by shape:
    the planner's Python (18-72 us for v3 backward-weight) runs once per layer shape."""
    return _plan(str(op), int(version), tuple(int(d) for d in dims), int(itemsize))


def _where(op, version, dims):
    N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = dims
    return (f"{op} v{version} (x shape {(N, C_in, H, W)}, W shape {(C_out, C_in // G, KH, KW)}, "
            f"stride {(SH, SW)}, padding {(PH, PW)}, groups {G})")


@functools.lru_cache(maxsize=4096)
def _plan(op, version, dims, itemsize):
    launches = _plan_unchecked(op, version, dims, itemsize)
    where = _where(op, version, dims)
    return tuple(check(L, itemsize, where) for L in launches)


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
                   (N * G * _cdiv(owned, tz * CQ), _cdiv(rows, ty), _cdiv(cols, tx * RW)), (tx, ty, tz),
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
            return [_elementwise_plan("group_conv.cu", op, N * C_out * Ho * Wo)]
        bx, by = _grid_2d_over(Ho, Wo)
        return [Launch("group_conv_v2.cu", "conv2d_forward_v2", targs, (N * C_out, _cdiv(Ho, by), _cdiv(Wo, bx)),
                       (bx, by))]
    if op == "conv2d_backward_data":
        if version == 1:
            return [_elementwise_plan("group_conv.cu", op, N * C_in * H * Wd)]
        bx, by = _grid_2d_over(H, Wd)
        return [Launch("group_conv_v2.cu", "conv2d_backward_data_v2", targs,
                       (N * C_in, _cdiv(H, by), _cdiv(Wd, bx)), (bx, by))]
    n_weights = C_out * Cg_in * KH * KW
    if version == 1:
        return [_reduce_plan("group_conv.cu", op, n_weights, N * Ho * Wo, itemsize)]
    if version == 2:
        bx, by = _grid_2d_over(Ho, Wo)
        return [Launch("group_conv_v2.cu", "conv2d_backward_weight_v2", targs, (C_out, Cg_in, KH * KW), (bx, by),
                       bx * by * itemsize)]
    GB, COB, CIB, smem = weight_slices(Cg_in, Cg_out, G, KH, KW, SH, SW, targs != (0, 0, 0, 0), itemsize)
    slices = _cdiv(G, GB) * _cdiv(Cg_out, COB) * _cdiv(Cg_in, CIB)
    spatial = _cdiv(Ho, TH) * _cdiv(Wo, TW)
    NB = _cdiv(N, max(1, min(N, _cdiv(V3_TARGET_BLOCKS, spatial * slices))))
    n_tiles = _cdiv(N, NB) * spatial
    return [Launch("group_conv_v3.cu", "conv2d_backward_weight_v3", targs, (n_tiles, slices), (V3_WEIGHT_THREADS,),
                   smem, (GB, COB, CIB, NB), scratch=(n_tiles, n_weights)),
            Launch("group_conv_v3.cu", "conv2d_backward_weight_v3_reduce", (),
                   (min(_cdiv(n_weights, THREADS), MAX_BLOCKS),), (THREADS,), 0, (n_tiles, n_weights),
                   kind="reduce")]


CONV_OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def _run(op, version, a, b, out, dims):
    """Launch `op` version `version` on arrays (a, b) -> out (all on one device, one dtype)."""
    device = _device(out)
    scratch = None
    for L in plan(op, version, dims, out.dtype.itemsize):
        module = get_module(L.file, out.dtype, device)
        extra = tuple(i32(v) for v in L.extra)
        if L.kind == "reduce":
            run(L, module, (scratch, out) + extra)
            continue
        if L.scratch:
            scratch = output(_xp(device), L.scratch, out.dtype, device)
        run(L, module, (a, b, scratch if L.scratch else out) + dims + extra)


def _versions_of(op):
    return {v: (lambda a, b, out, dims, _v=v: _run(op, _v, a, b, out, dims)) for v in (1, 2, 3)}


# version -> launcher(in, in, out, dims); tests replace entries to see which version runs
_FORWARD = _versions_of("conv2d_forward")
_BACKWARD_DATA = _versions_of("conv2d_backward_data")
_BACKWARD_WEIGHT = _versions_of("conv2d_backward_weight")


def _device(a):
    """The launch device of an array that _prepare accepted: "emu" for numpy, else "cuda"."""
    return "emu" if isinstance(a, np.ndarray) else "cuda"


def conv2d_forward(x, W, stride, padding, groups, device, version=None):
    """y = grouped conv of x (N,C_in,H,W) with W (C_out,C_in/G,kh,kw), no bias. `version` (1, 2, 3)
    overrides versions.selected("conv2d_forward")."""
    op = "conv2d_forward"
    xp, (x, W) = _prepare(op, device, x=x, W=W)
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
    xp, (gy, W) = _prepare(op, device, gy=gy, W=W)
    x_shape = _shape4(op, "x_shape", x_shape)
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
    xp, (x, gy) = _prepare(op, device, x=x, gy=gy)
    W_shape = _shape4(op, "W_shape", W_shape)
    y_shape, dims = _conv_geometry(op, x.shape, W_shape, stride, padding, groups)
    _check_gy(op, gy, y_shape, x.shape, W_shape)
    gW = output(xp, W_shape, x.dtype, device)
    _BACKWARD_WEIGHT[versions.resolve(op, version)](x, gy, gW, dims)
    return gW


# ---- channel permutation ---------------------------------------------------------------------

PERMUTE_ROWS_MIN_HW = 32  # version 0: rows of fewer pixels leave most threads of a v2 block idle

versions.register("permute_channels", {
    0: f"the shape rule: version 2 when H*W >= {PERMUTE_ROWS_MIN_HW}, else version 1",
    1: "permutation.cu: one thread per element, 3 divisions each",
    2: "permutation.cu: one block per (n, channel) row, the source row found once, coalesced copy"},
    default=0)
versions.register("interleaved_secondary", {
    1: "interleaved_secondary.cu: one thread per output; backward-weight one block per weight element",
    2: "interleaved_secondary.cu: tiled grouped GEMM; two-pass deterministic backward-weight"}, default=2)


def permute_version(version, H, W):
    """The kernel (1 or 2) that version `version` of permute_channels runs on H x W images."""
    if version == 0:
        return 2 if H * W >= PERMUTE_ROWS_MIN_HW else 1
    return version


def permute_plan(version, N, C, H, W):
    """The launch of permute_channels kernel `version` (1 or 2) on x (N, C, H, W)."""
    if version == 1:
        return _elementwise_plan("permutation.cu", "permute_channels", N * C * H * W)
    # one block per row of H*W pixels; a block no wider than the row (whole warps)
    threads = min(THREADS, 32 * ((H * W + 31) // 32))
    return Launch("permutation.cu", "permute_channels_rows", (), (min(N * C, MAX_BLOCKS),), (threads,))


def permute_channels(x, b, device, version=None):
    """y (N,C,H,W): input channel i*(C/b) + j goes to output channel j*b + i (inverse: b' = C/b)."""
    op = "permute_channels"
    xp, (x,) = _prepare(op, device, x=x)
    N, C, H, W = x.shape
    b = int(b)
    if b < 1 or C % b:
        raise ValueError(f"{op}: b={b} must divide the channel count C={C} (x shape {tuple(x.shape)})")
    version = permute_version(versions.resolve(op, version), H, W)
    y = output(xp, x.shape, x.dtype, device)
    args = (x, y, i32(N), i32(C), i32(H * W), i32(b))
    module = get_module("permutation.cu", x.dtype, device)
    _launch(module, permute_plan(version, N, C, H, W), args, f"{op} v{version} (x shape {tuple(x.shape)}, b={b})",
            x.dtype.itemsize)
    return y


# ---- fused secondary group conv of IGC -------------------------------------------------------

def _check_LS(op, C, L, S, shape_text):
    L, S = int(L), int(S)
    if L < 1 or C % L:
        raise ValueError(f"{op}: L={L} must divide the channel count C={C} ({shape_text})")
    if S < 1 or C % S:
        raise ValueError(f"{op}: S={S} must divide the channel count C={C} ({shape_text})")
    return L, S


def _check_W2(op, W2_shape, C, S, shape_text):
    if tuple(W2_shape) != (C, C // S, 1, 1):
        raise ValueError(f"{op}: W2 shape {tuple(W2_shape)} must be (C, C/S, 1, 1) = {(C, C // S, 1, 1)} "
                         f"({shape_text}, S={S})")


_IS = defines("interleaved_secondary.cu")
TILE = _IS["IS_TR"]             # v2 tiles: 32 output rows x 32 pixels (IS_TR = IS_TP); backward-weight's
TILE_THREADS = _IS["IS_THREADS"]
TILE_ROWS = tuple(t for (t,) in instantiations("interleaved_secondary.cu")["interleaved_secondary_forward_tiled"])
WEIGHT_CHUNKS = 64   # v2 backward-weight: about this many partial sums per weight (pass 1's parallelism)


def _interleaved_map(op, name, a, W2, L, S, device, version):
    """Launch `op` of interleaved_secondary.cu: a (N,C,H,W) -> out like a. Forward (a = x) and
    backward-data (a = gy, the transposed weight read in the kernel) share it."""
    xp, (a, W2) = _prepare(op, device, **{name: a, "W2": W2})
    N, C, H, W = a.shape
    text = f"{name} shape {tuple(a.shape)}"
    L, S = _check_LS(op, C, L, S, text)
    _check_W2(op, W2.shape, C, S, text)
    version = versions.resolve("interleaved_secondary", version, where=op)
    out = output(xp, a.shape, a.dtype, device)
    module = get_module("interleaved_secondary.cu", a.dtype, device)
    args = (a, W2, out, i32(N), i32(C), i32(H * W), i32(L), i32(S))
    (launch,) = interleaved_plan(op, version, (N, C, H, W), L, S, a.dtype.itemsize)
    run(launch, module, args)
    return out


def interleaved_plan(op, version, x_shape, L, S, itemsize):
    """The launches of interleaved_secondary_{forward,backward_data,backward_weight} `version` on
    x (N, C, H, W), checked (launch.check); backward-weight v2: pass 1 then pass 2."""
    N, C, H, W = (int(d) for d in x_shape)
    file, where = "interleaved_secondary.cu", f"{op} v{version} (x shape {(N, C, H, W)}, L={L}, S={S})"
    K = C // S
    if op == "interleaved_secondary_backward_weight":
        if version == 1:
            plans = [_reduce_plan(file, op, C * K, N * H * W, itemsize)]
        else:
            chunk_len, n_chunks = weight_chunks(N * H * W)
            tiles = n_chunks * S * ((K + TILE - 1) // TILE) ** 2
            plans = [Launch(file, op + "_partial", (), (min(tiles, MAX_BLOCKS),), (TILE_THREADS,)),
                     _elementwise_plan(file, op + "_sum", C * K)]
    elif version == 1:
        plans = [_elementwise_plan(file, op, N * C * H * W)]
    else:
        TR = tile_rows(K, H * W)
        tiles = N * S * _cdiv(K, TR) * _cdiv(H * W, TILE_THREADS * 4 // TR)
        plans = [Launch(file, op + "_tiled", (TR,), (min(tiles, MAX_BLOCKS),), (TILE_THREADS,))]
    return [check(P, itemsize, where) for P in plans]


def tile_rows(K, HW):
    """The rows TR (32, 8 or 4: the kernel's instantiations) of a v2 forward/backward-data tile for
    groups of K channels on HW pixels: the one whose FMAs are most often useful (rows, reduction
    steps of TK = min(TR, 16) rows and pixels that are not padding), or the tallest within 3/4 of
    that: a tile of TR rows reads each input value for TR outputs, so small tiles re-read the
    input (through L2) K/TR times. A tile is TR rows x 1024/TR pixels. IGC-L4M32's K = 4: 32-row
    tiles did 3% useful FMAs, 4-row ones 94%."""
    def useful(TR):
        TK, TP = min(TR, _IS["IS_TK"]), TILE_THREADS * 4 // TR
        return (K / (_cdiv(K, TR) * TR)) * (K / (_cdiv(K, TK) * TK)) * (HW / (_cdiv(HW, TP) * TP))
    best = max(useful(TR) for TR in TILE_ROWS)
    return max(TR for TR in TILE_ROWS if useful(TR) >= 0.75 * best)


def interleaved_secondary_forward(x, W2, L, S, device, version=None):
    """y = permute(conv1x1_groups_S(permute(x, L), W2), S), x (N,C,H,W), W2 (C,C/S,1,1)."""
    return _interleaved_map("interleaved_secondary_forward", "x", x, W2, L, S, device, version)


def interleaved_secondary_backward_data(gy, W2, L, S, device, version=None):
    """gx (N,C,H,W) = gradient of interleaved_secondary_forward's x, from gy (N,C,H,W)."""
    return _interleaved_map("interleaved_secondary_backward_data", "gy", gy, W2, L, S, device, version)


def weight_chunks(terms):
    """(chunk_len, n_chunks) of the v2 backward-weight: chunks of a multiple of 32 terms (the
    kernel's IS_TT), about WEIGHT_CHUNKS of them."""
    tt = _IS["IS_TT"]
    chunk_len = tt * max(1, -(-terms // (tt * WEIGHT_CHUNKS)))
    return chunk_len, -(-terms // chunk_len)


def interleaved_secondary_backward_weight(x, gy, W2_shape, L, S, device, version=None):
    """gW2 (C,C/S,1,1) = gradient of interleaved_secondary_forward's W2, from x and gy (N,C,H,W)."""
    op = "interleaved_secondary_backward_weight"
    xp, (x, gy) = _prepare(op, device, x=x, gy=gy)
    if x.shape != gy.shape:
        raise ValueError(f"{op}: gy shape {tuple(gy.shape)} must equal x shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    text = f"x shape {tuple(x.shape)}"
    L, S = _check_LS(op, C, L, S, text)
    W2_shape = _shape4(op, "W2_shape", W2_shape)
    _check_W2(op, W2_shape, C, S, text)
    version = versions.resolve("interleaved_secondary", version, where=op)
    gW2 = output(xp, W2_shape, x.dtype, device)
    module = get_module("interleaved_secondary.cu", x.dtype, device)
    dims = (i32(N), i32(C), i32(H * W), i32(L), i32(S))
    plans = interleaved_plan(op, version, x.shape, L, S, x.dtype.itemsize)
    if version == 1:
        run(plans[0], module, (x, gy, gW2) + dims)
        return gW2
    chunk_len, n_chunks = weight_chunks(N * H * W)
    partial = output(xp, (n_chunks,) + W2_shape, x.dtype, device)  # every element is written by pass 1
    run(plans[0], module, (x, gy, partial) + dims + (i32(chunk_len), i32(n_chunks)))
    run(plans[1], module, (partial, gW2, i32(gW2.size), i32(n_chunks)))
    return gW2
