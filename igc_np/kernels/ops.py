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

permute_channels and the interleaved_secondary_* launchers take ``version=None`` (the version of
kernels/ladder.py's switch) or a version name ("v1", "v2"; "auto" for the permutation).

with Ho = (H + 2*ph - kh) // sh + 1 (Wo likewise). Invalid shapes raise ValueError naming the
op, the argument and the shapes.
"""
import numpy as np

from . import ladder
from .loader import get_module

THREADS = 256          # threads per block of the one-thread-per-element kernels
MAX_BLOCKS = 1 << 20   # the kernels loop (grid-stride) over whatever a grid this size leaves
REDUCE_MAX_THREADS = 256
# Kernels index with int and step by gridDim.x * blockDim.x (at most 2^28); 2^30 elements keep
# idx + step below 2^31.
INT_MAX = 2**30

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
        if a.size > INT_MAX:
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
    if N * C_out * Ho * Wo > INT_MAX:
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


# ---- grouped convolution ---------------------------------------------------------------------

def conv2d_forward(x, W, stride, padding, groups, device):
    """y = grouped conv of x (N,C_in,H,W) with W (C_out,C_in/G,kh,kw), no bias."""
    op = "conv2d_forward"
    xp, (x, W) = _prepare(op, device, x=x, W=W)
    y_shape, dims = _conv_geometry(op, x.shape, W.shape, stride, padding, groups)
    y = xp.empty(y_shape, dtype=x.dtype)
    fn = get_module("group_conv.cu", x.dtype, device).get_function(op)
    _elementwise_launch(fn, y.size, (x, W, y) + dims)
    return y


def _check_gy(op, gy, y_shape, x_shape, W_shape):
    if tuple(gy.shape) != y_shape:
        raise ValueError(f"{op}: gy shape {tuple(gy.shape)} must be the output shape {y_shape} of "
                         f"x shape {tuple(x_shape)} and W shape {tuple(W_shape)}")


def conv2d_backward_data(gy, W, x_shape, stride, padding, groups, device):
    """gx (x_shape) = gradient of the conv's input, from gy (N,C_out,Ho,Wo) and W."""
    op = "conv2d_backward_data"
    xp, (gy, W) = _prepare(op, device, gy=gy, W=W)
    x_shape = _shape4(op, "x_shape", x_shape)
    y_shape, dims = _conv_geometry(op, x_shape, W.shape, stride, padding, groups)
    _check_gy(op, gy, y_shape, x_shape, W.shape)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    fn = get_module("group_conv.cu", gy.dtype, device).get_function(op)
    _elementwise_launch(fn, gx.size, (gy, W, gx) + dims)
    return gx


def conv2d_backward_weight(x, gy, W_shape, stride, padding, groups, device):
    """gW (W_shape) = gradient of the conv's weight, from x (N,C_in,H,W) and gy (N,C_out,Ho,Wo)."""
    op = "conv2d_backward_weight"
    xp, (x, gy) = _prepare(op, device, x=x, gy=gy)
    W_shape = _shape4(op, "W_shape", W_shape)
    y_shape, dims = _conv_geometry(op, x.shape, W_shape, stride, padding, groups)
    _check_gy(op, gy, y_shape, x.shape, W_shape)
    gW = xp.empty(W_shape, dtype=x.dtype)
    fn = get_module("group_conv.cu", x.dtype, device).get_function(op)
    N, _, Ho, Wo = y_shape
    _reduce_launch(fn, gW.size, N * Ho * Wo, x.dtype.itemsize, (x, gy, gW) + dims)
    return gW


# ---- channel permutation ---------------------------------------------------------------------

PERMUTE_ROWS_MIN_HW = 32  # "auto": rows of fewer pixels leave most threads of a v2 block idle


def _version(op, version):
    version = ladder.selected(op) if version is None else version
    if version not in ladder.versions(op):
        raise ValueError(f"{op}: version must be one of {ladder.versions(op)}, got {version!r}")
    return version


def permute_channels(x, b, device, version=None):
    """y (N,C,H,W): input channel i*(C/b) + j goes to output channel j*b + i (inverse: b' = C/b)."""
    op = "permute_channels"
    xp, (x,) = _prepare(op, device, x=x)
    N, C, H, W = x.shape
    b = int(b)
    if b < 1 or C % b:
        raise ValueError(f"{op}: b={b} must divide the channel count C={C} (x shape {tuple(x.shape)})")
    version = _version(op, version)
    if version == "auto":
        version = "v2" if H * W >= PERMUTE_ROWS_MIN_HW else "v1"
    y = xp.empty_like(x)
    args = (x, y, i32(N), i32(C), i32(H * W), i32(b))
    module = get_module("permutation.cu", x.dtype, device)
    if version == "v1":
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
    version = _version("interleaved_secondary", version)
    out = xp.empty_like(a)
    module = get_module("interleaved_secondary.cu", a.dtype, device)
    args = (a, W2, out, i32(N), i32(C), i32(H * W), i32(L), i32(S))
    if version == "v1":
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
    version = _version("interleaved_secondary", version)
    gW2 = xp.empty(W2_shape, dtype=x.dtype)
    module = get_module("interleaved_secondary.cu", x.dtype, device)
    dims = (i32(N), i32(C), i32(H * W), i32(L), i32(S))
    if version == "v1":
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
