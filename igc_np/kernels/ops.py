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
import dataclasses

import numpy as np

from . import versions
from .loader import get_module

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


def _elementwise_launch(fn, total, args):
    """One thread per output element, grid-stride beyond MAX_BLOCKS blocks."""
    blocks = min((total + THREADS - 1) // THREADS, MAX_BLOCKS)
    fn((blocks,), (THREADS,), args)


def _reduce_launch(fn, n_outputs, terms, itemsize, args):
    """One block per output element; a power-of-two block of at most REDUCE_MAX_THREADS threads,
    no larger than the number of terms needs (minimum a warp), plus its shared memory."""
    threads = 32
    while threads < min(terms, REDUCE_MAX_THREADS):
        threads *= 2
    fn((min(n_outputs, MAX_BLOCKS),), (threads,), args, shared_mem=threads * itemsize)


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
RW, CQ, TH, TW = 4, 2, 8, 8      # group_conv_v3.cu's IGC_RW, IGC_CQ, IGC_TH, IGC_TW
V3_THREADS = 128                  # forward / backward-data block size (at most)
V3_SMEM = 24 * 1024               # their staging budget: a chunk of channels fits in 24 KiB
V3_WEIGHT_THREADS = 256           # backward-weight pass-1 block size
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


def _cdiv(a, b):
    return -(-a // b)


def _grid_2d_over(rows, cols, threads=256):
    """A 2-D block (bx, by) over a rows x cols image: bx a power of two <= 32 covering cols if it
    can, by a power of two, bx * by <= threads."""
    bx = _pow2_at_least(cols, 32)
    by = _pow2_at_least(rows, threads // bx)
    return bx, by


def _tile_block(rows, cols, channels):
    """v3 block (tx, ty, tz): tx * RW columns, ty rows (a power of two), tz * CQ channels, at most
    V3_THREADS threads.
    Up to 4 channel pairs come first: every staged input element then feeds 8 channels' sums
    (fewer rows means more halo rows per output row, a smaller cost for 3x3 kernels)."""
    tz = min(_cdiv(channels, CQ), 4)
    tx = min(_cdiv(cols, RW), 16)  # not a power of two: 56 columns are 14 threads, no idle ones
    ty = _pow2_at_least(rows, max(1, V3_THREADS // (tx * tz)))
    tz = max(1, min(_cdiv(channels, CQ), V3_THREADS // (tx * ty)))
    return tx, ty, tz


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
        smem = (max(GB * _cdiv(COB, CQ) * CQ * TH * TW + GB * CIB * PRH * PRW, threads * CQ * KWB) * itemsize
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


@dataclasses.dataclass
class Launch:
    """One kernel launch of a conv version, computed from the shapes alone (kernel_report.py
    models these without launching). Arguments: the op's (in, in, out) arrays, or for a "reduce"
    launch (scratch, out), then the 14 ints of the conv (not for "reduce"), then `extra`."""
    file: str
    kernel: str
    targs: tuple
    grid: tuple
    block: tuple
    shared: int = 0       # dynamic shared memory, bytes
    extra: tuple = ()     # ints after the conv's 14
    scratch: tuple = ()   # shape of a scratch array the launch writes (v3 backward-weight partials)
    kind: str = "conv"    # "conv" or "reduce"

    @property
    def threads(self):
        return int(np.prod(self.block))

    @property
    def blocks(self):
        return int(np.prod(self.grid))


def _elementwise_plan(file, kernel, total):
    return Launch(file, kernel, (), (min(_cdiv(total, THREADS), MAX_BLOCKS),), (THREADS,))


def plan(op, version, dims, itemsize):
    """The launches of `op` ("conv2d_forward", ...) version 1, 2 or 3 for a conv with the int
    argument tail `dims` = (N, C_in, H, W, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo)."""
    N, C_in, H, Wd, C_out, KH, KW, SH, SW, PH, PW, G, Ho, Wo = (int(d) for d in dims)
    Cg_in, Cg_out = C_in // G, C_out // G
    targs = _targs(dims)
    if op == "conv2d_forward":
        if version == 1:
            return [_elementwise_plan("group_conv.cu", op, N * C_out * Ho * Wo)]
        if version == 2:
            bx, by = _grid_2d_over(Ho, Wo)
            return [Launch("group_conv_v2.cu", "conv2d_forward_v2", targs, (N * C_out, _cdiv(Ho, by), _cdiv(Wo, bx)),
                           (bx, by))]
        tx, ty, tz = _tile_block(Ho, Wo, Cg_out)
        PRH, PRW = (ty - 1) * SH + KH, (tx * RW - 1) * SW + KW
        CIC = _chunk(PRH * PRW + tz * CQ * KH * KW, Cg_in, itemsize, op)
        return [Launch("group_conv_v3.cu", "conv2d_forward_v3", targs,
                       (N * G * _cdiv(Cg_out, tz * CQ), _cdiv(Ho, ty), _cdiv(Wo, tx * RW)), (tx, ty, tz),
                       (CIC * PRH * PRW + tz * CQ * CIC * KH * KW) * itemsize, (CIC,))]
    if op == "conv2d_backward_data":
        if version == 1:
            return [_elementwise_plan("group_conv.cu", op, N * C_in * H * Wd)]
        if version == 2:
            bx, by = _grid_2d_over(H, Wd)
            return [Launch("group_conv_v2.cu", "conv2d_backward_data_v2", targs,
                           (N * C_in, _cdiv(H, by), _cdiv(Wd, bx)), (bx, by))]
        tx, ty, tz = _tile_block(H, Wd, Cg_in)
        PRH, PRW = (ty + KH - 2) // SH + 2, (tx * RW + KW - 2) // SW + 2
        COC = _chunk(PRH * PRW + tz * CQ * KH * KW, Cg_out, itemsize, op)
        return [Launch("group_conv_v3.cu", "conv2d_backward_data_v3", targs,
                       (N * G * _cdiv(Cg_in, tz * CQ), _cdiv(H, ty), _cdiv(Wd, tx * RW)), (tx, ty, tz),
                       (COC * PRH * PRW + COC * tz * CQ * KH * KW) * itemsize, (COC,))]
    if op != "conv2d_backward_weight":
        raise ValueError(f"plan: op must be one of conv2d_forward, conv2d_backward_data, "
                         f"conv2d_backward_weight, got {op!r}")
    n_weights = C_out * Cg_in * KH * KW
    if version == 1:
        threads = _pow2_at_least(N * Ho * Wo, REDUCE_MAX_THREADS)
        return [Launch("group_conv.cu", op, (), (min(n_weights, MAX_BLOCKS),), (max(32, threads),),
                       max(32, threads) * itemsize)]
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


def _run(op, version, a, b, out, dims):
    """Launch `op` version `version` on arrays (a, b) -> out (all on one device, one dtype)."""
    device = _device(out)
    scratch = None
    for L in plan(op, version, dims, out.dtype.itemsize):
        fn = get_module(L.file, out.dtype, device).get_function(L.kernel, L.targs)
        extra = tuple(i32(v) for v in L.extra)
        if L.kind == "reduce":
            fn(L.grid, L.block, (scratch, out) + extra, shared_mem=L.shared)
            continue
        if L.scratch:
            scratch = _xp(device).empty(L.scratch, dtype=out.dtype)
        fn(L.grid, L.block, (a, b, scratch if L.scratch else out) + dims + extra, shared_mem=L.shared)


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
    y = xp.empty(y_shape, dtype=x.dtype)
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
    gx = xp.empty(x_shape, dtype=gy.dtype)
    _BACKWARD_DATA[versions.resolve(op, version)](gy, W, gx, dims)
    return gx


def conv2d_backward_weight(x, gy, W_shape, stride, padding, groups, device, version=None):
    """gW (W_shape) = gradient of the conv's weight, from x (N,C_in,H,W) and gy (N,C_out,Ho,Wo)."""
    op = "conv2d_backward_weight"
    xp, (x, gy) = _prepare(op, device, x=x, gy=gy)
    W_shape = _shape4(op, "W_shape", W_shape)
    y_shape, dims = _conv_geometry(op, x.shape, W_shape, stride, padding, groups)
    _check_gy(op, gy, y_shape, x.shape, W_shape)
    gW = xp.empty(W_shape, dtype=x.dtype)
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


def permute_channels(x, b, device, version=None):
    """y (N,C,H,W): input channel i*(C/b) + j goes to output channel j*b + i (inverse: b' = C/b)."""
    op = "permute_channels"
    xp, (x,) = _prepare(op, device, x=x)
    N, C, H, W = x.shape
    b = int(b)
    if b < 1 or C % b:
        raise ValueError(f"{op}: b={b} must divide the channel count C={C} (x shape {tuple(x.shape)})")
    version = permute_version(versions.resolve(op, version), H, W)
    y = xp.empty_like(x)
    args = (x, y, i32(N), i32(C), i32(H * W), i32(b))
    module = get_module("permutation.cu", x.dtype, device)
    if version == 1:
        _elementwise_launch(module.get_function(op), y.size, args)
    else:  # one block per row of H*W pixels; a block no wider than the row (whole warps)
        threads = min(THREADS, 32 * ((H * W + 31) // 32))
        module.get_function("permute_channels_rows")((min(N * C, MAX_BLOCKS),), (threads,), args)
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


TILE = 32            # v2 tiles: 32 output rows x 32 pixels (interleaved_secondary.cu's IS_TR, IS_TP)
TILE_THREADS = 256   # its IS_THREADS
WEIGHT_CHUNKS = 64   # v2 backward-weight: about this many partial sums per weight (pass 1's parallelism)


def _tiles(N, S, K, HW):
    return N * S * ((K + TILE - 1) // TILE) * ((HW + TILE - 1) // TILE)


def _interleaved_map(op, name, a, W2, L, S, device, version):
    """Launch `op` of interleaved_secondary.cu: a (N,C,H,W) -> out like a. Forward (a = x) and
    backward-data (a = gy, the transposed weight read in the kernel) share it."""
    xp, (a, W2) = _prepare(op, device, **{name: a, "W2": W2})
    N, C, H, W = a.shape
    text = f"{name} shape {tuple(a.shape)}"
    L, S = _check_LS(op, C, L, S, text)
    _check_W2(op, W2.shape, C, S, text)
    version = versions.resolve("interleaved_secondary", version, where=op)
    out = xp.empty_like(a)
    module = get_module("interleaved_secondary.cu", a.dtype, device)
    args = (a, W2, out, i32(N), i32(C), i32(H * W), i32(L), i32(S))
    if version == 1:
        _elementwise_launch(module.get_function(op), out.size, args)
    else:
        tiles = _tiles(N, S, C // S, H * W)
        module.get_function(op + "_tiled")((min(tiles, MAX_BLOCKS),), (TILE_THREADS,), args)
    return out


def interleaved_secondary_forward(x, W2, L, S, device, version=None):
    """y = permute(conv1x1_groups_S(permute(x, L), W2), S), x (N,C,H,W), W2 (C,C/S,1,1)."""
    return _interleaved_map("interleaved_secondary_forward", "x", x, W2, L, S, device, version)


def interleaved_secondary_backward_data(gy, W2, L, S, device, version=None):
    """gx (N,C,H,W) = gradient of interleaved_secondary_forward's x, from gy (N,C,H,W)."""
    return _interleaved_map("interleaved_secondary_backward_data", "gy", gy, W2, L, S, device, version)


def weight_chunks(terms):
    """(chunk_len, n_chunks) of the v2 backward-weight: chunks of a multiple of 32 terms (the
    kernel's IS_TT), about WEIGHT_CHUNKS of them."""
    chunk_len = 32 * max(1, -(-terms // (32 * WEIGHT_CHUNKS)))
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
    gW2 = xp.empty(W2_shape, dtype=x.dtype)
    module = get_module("interleaved_secondary.cu", x.dtype, device)
    dims = (i32(N), i32(C), i32(H * W), i32(L), i32(S))
    if version == 1:
        _reduce_launch(module.get_function(op), gW2.size, N * H * W, x.dtype.itemsize, (x, gy, gW2) + dims)
        return gW2
    chunk_len, n_chunks = weight_chunks(N * H * W)
    partial = xp.empty((n_chunks,) + W2_shape, dtype=x.dtype)  # every element is written by pass 1
    K = C // S
    tiles = n_chunks * S * ((K + TILE - 1) // TILE) ** 2
    module.get_function(op + "_partial")((min(tiles, MAX_BLOCKS),), (TILE_THREADS,),
                                         (x, gy, partial) + dims + (i32(chunk_len), i32(n_chunks)))
    _elementwise_launch(module.get_function(op + "_sum"), gW2.size,
                        (partial, gW2, i32(gW2.size), i32(n_chunks)))
    return gW2
