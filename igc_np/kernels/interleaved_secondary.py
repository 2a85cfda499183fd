"""Launchers of interleaved_secondary.cu: the secondary half of an IGC conv, fused,
    y = permute(conv1x1_groups_S(permute(x, L), W2), S)
(versions 1 and 2 of the op "interleaved_secondary"; its three launchers share the version).

    interleaved_secondary_forward(x (N,C,H,W), W2 (C,C/S,1,1), L, S, device)    -> y (N,C,H,W)
    interleaved_secondary_backward_data(gy, W2, L, S, device)                  -> gx (N,C,H,W)
    interleaved_secondary_backward_weight(x, gy, W2_shape, L, S, device)       -> gW2 (W2_shape)

``device`` and arrays as in kernels/conv.py. ``interleaved_plan`` is each version's launch
geometry; the tile sizes (IS_TR, IS_TK, IS_THREADS, IS_TT and the instantiated tile heights) are
read from the .cu.
"""
from . import versions
from .launch import (MAX_BLOCKS, Launch, cdiv, check, elementwise_plan, i32, output, prepare, reduce_plan, run,
                     shape4)
from .loader import defines, get_module, instantiations

versions.register("interleaved_secondary", {
    1: "interleaved_secondary.cu: one thread per output; backward-weight one block per weight element",
    2: "interleaved_secondary.cu: tiled grouped GEMM; two-pass deterministic backward-weight"}, default=2)


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
    xp, (a, W2) = prepare(op, device, **{name: a, "W2": W2})
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
            plans = [reduce_plan(file, op, C * K, N * H * W, itemsize)]
        else:
            chunk_len, n_chunks = weight_chunks(N * H * W)
            tiles = n_chunks * S * ((K + TILE - 1) // TILE) ** 2
            plans = [Launch(file, op + "_partial", (), (min(tiles, MAX_BLOCKS),), (TILE_THREADS,)),
                     elementwise_plan(file, op + "_sum", C * K)]
    elif version == 1:
        plans = [elementwise_plan(file, op, N * C * H * W)]
    else:
        TR = tile_rows(K, H * W)
        tiles = N * S * cdiv(K, TR) * cdiv(H * W, TILE_THREADS * 4 // TR)
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
        return (K / (cdiv(K, TR) * TR)) * (K / (cdiv(K, TK) * TK)) * (HW / (cdiv(HW, TP) * TP))
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
    xp, (x, gy) = prepare(op, device, x=x, gy=gy)
    if x.shape != gy.shape:
        raise ValueError(f"{op}: gy shape {tuple(gy.shape)} must equal x shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    text = f"x shape {tuple(x.shape)}"
    L, S = _check_LS(op, C, L, S, text)
    W2_shape = shape4(op, "W2_shape", W2_shape)
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
