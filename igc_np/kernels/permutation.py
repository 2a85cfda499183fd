"""Launcher of permutation.cu: IGC's channel permutation (Reorder), versions 1 and 2 and the
shape rule 0 that picks one.

    permute_channels(x (N,C,H,W), b, device, version=None) -> y (N,C,H,W)

Input channel i*(C/b) + j goes to output channel j*b + i; the inverse is b' = C/b. ``device`` and
arrays as in kernels/conv.py. ``permute_plan`` is each version's launch geometry.
"""
from . import versions
from .launch import MAX_BLOCKS, THREADS, Launch, check_and_run, elementwise_plan, i32, output, prepare
from .loader import get_module

PERMUTE_ROWS_MIN_HW = 32  # version 0: rows of fewer pixels leave most threads of a v2 block idle

versions.register("permute_channels", {
    0: f"the shape rule: version 2 when H*W >= {PERMUTE_ROWS_MIN_HW}, else version 1",
    1: "permutation.cu: one thread per element, 3 divisions each",
    2: "permutation.cu: one block per (n, channel) row, the source row found once, coalesced copy"},
    default=0)


def permute_version(version, H, W):
    """The kernel (1 or 2) that version `version` of permute_channels runs on H x W images."""
    if version == 0:
        return 2 if H * W >= PERMUTE_ROWS_MIN_HW else 1
    return version


def permute_plan(version, N, C, H, W):
    """The launch of permute_channels kernel `version` (1 or 2) on x (N, C, H, W)."""
    if version == 1:
        return elementwise_plan("permutation.cu", "permute_channels", N * C * H * W)
    # one block per row of H*W pixels; a block no wider than the row (whole warps)
    threads = min(THREADS, 32 * ((H * W + 31) // 32))
    return Launch("permutation.cu", "permute_channels_rows", (), (min(N * C, MAX_BLOCKS),), (threads,))


def permute_channels(x, b, device, version=None):
    """y (N,C,H,W): input channel i*(C/b) + j goes to output channel j*b + i (inverse: b' = C/b)."""
    op = "permute_channels"
    xp, (x,) = prepare(op, device, x=x)
    N, C, H, W = x.shape
    b = int(b)
    if b < 1 or C % b:
        raise ValueError(f"{op}: b={b} must divide the channel count C={C} (x shape {tuple(x.shape)})")
    version = permute_version(versions.resolve(op, version), H, W)
    y = output(xp, x.shape, x.dtype, device)
    args = (x, y, i32(N), i32(C), i32(H * W), i32(b))
    module = get_module("permutation.cu", x.dtype, device)
    where = f"{op} v{version} (x shape {tuple(x.shape)}, b={b})"
    check_and_run(module, permute_plan(version, N, C, H, W), args, where, x.dtype.itemsize)
    return y
