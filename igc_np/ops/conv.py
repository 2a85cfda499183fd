"""Grouped 2-D convolution: the primary (k x k, L groups) and secondary (1 x 1, S groups) convs of IGC.

Public layout is NCHW: x (N, C_in, H, W), W (C_out, C_in/G, kh, kw), y (N, C_out, Ho, Wo).

On the CPU the arithmetic runs in a channel-first, batch-last memory layout (C, H, W, N):

* every group of channels is a contiguous block, so a grouped conv is ONE batched matmul
  ``(G, C_out/G, C_in/G*kh*kw) @ (G, C_in/G*kh*kw, Ho*Wo*N)`` with long contiguous rows;
* the im2col copies move whole rows of W*N (stride 1) or N (stride 2) floats at a time;
* the result of that matmul *is* y in (C, Ho, Wo, N) memory: no transpose after it.

The arrays handed back are NCHW *views* of that memory (``y_chwn.transpose(3, 0, 1, 2)``), so the
layout is invisible to users: shapes, indexing and every NumPy op see NCHW. Elementwise ops
(BatchNorm, ReLU, the residual add) keep the memory order of their inputs, so the next conv finds
its input already (C, H, W, N)-contiguous and copies nothing.

On 'cuda' and 'emu' the same Function calls our CUDA kernels (igc_np/kernels/group_conv.cu) on
NCHW-contiguous arrays; the NumPy functions below are the specification they are tested against.
"""
import numpy as np

from ..autograd import Function
from . import parallel


def pair(value, op, name):
    """An int or a pair of ints -> a pair of non-negative ints (clear error otherwise)."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        a, b = value
        a, b = int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    return a, b


def output_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def check_conv_args(x_shape, W_shape, stride, padding, groups, op="conv2d"):
    """Validate shapes of a grouped conv; return (Ho, Wo). Errors name the op and the shapes."""
    if len(x_shape) != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(W_shape) != 4:
        raise ValueError(f"{op}: weight must be 4-D (C_out, C_in/groups, kh, kw), got shape {tuple(W_shape)}")
    N, C, H, W = x_shape
    Co, Cg, kh, kw = W_shape
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if C % groups:
        raise ValueError(f"{op}: input channels C_in={C} (input shape {tuple(x_shape)}) are not "
                         f"divisible by groups={groups}")
    if Co % groups:
        raise ValueError(f"{op}: output channels C_out={Co} (weight shape {tuple(W_shape)}) are not "
                         f"divisible by groups={groups}")
    if Cg != C // groups:
        raise ValueError(f"{op}: weight shape {tuple(W_shape)} expects C_in/groups={Cg}, but input "
                         f"shape {tuple(x_shape)} with groups={groups} gives {C // groups}")
    (sh, sw), (ph, pw) = stride, padding
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{op}: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {kh}x{kw} does not fit input {H}x{W} with padding {padding}")
    return Ho, Wo


# ---- the NumPy implementation (specification of the kernels) -----------------------------------
def to_chwn(a):
    """(N, C, H, W) array -> (C, H, W, N) C-contiguous array (a free view when it already is)."""
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0))


def from_chwn(a):
    """(C, H, W, N) array -> the (N, C, H, W) view of the same memory."""
    return a.transpose(3, 0, 1, 2)


# Size of the im2col block built at a time (a range of groups x a range of output rows): small
# enough to stay in cache between the copy that writes it and the matmul that reads it, large
# enough that per-call overhead does not dominate. Measured on 2 cores, IGC-L24M2 forward at
# 32x32: one whole im2col 47 ms; tiles of 256 KiB 54 ms, 1 MiB 15 ms, 2 MiB 13 ms, 8 MiB 22 ms.
TILE_BYTES = 2 << 20


def pad_chwn(xc, top, bottom, left, right):
    """Zero-pad (negative: crop) the H and W axes of a (C, H, W, N) array."""
    C, H, W, N = xc.shape
    if top == bottom == left == right == 0:
        return xc
    out = np.empty((C, H + top + bottom, W + left + right, N), xc.dtype)
    src = xc[:, max(0, -top):H - max(0, -bottom), max(0, -left):W - max(0, -right)]
    t, l = max(0, top), max(0, left)
    h, w = src.shape[1], src.shape[2]

    def fill(c0, c1):  # zero only the border, copy the interior: one pass over memory
        o = out[c0:c1]
        o[:, :t], o[:, t + h:], o[:, t:t + h, :l], o[:, t:t + h, l + w:] = 0, 0, 0, 0
        o[:, t:t + h, l:l + w] = src[c0:c1]
    parallel.over_range(C, fill)
    return out


def _tiles(G, Cg, kh, kw, Ho, Wo, N, itemsize):
    """Split (groups, output rows) into tiles (g0, g1, h0, h1) whose im2col block is ~TILE_BYTES."""
    row = Cg * kh * kw * Wo * N * itemsize  # im2col bytes of one group and one output row
    groups = max(1, min(G, TILE_BYTES // row))
    rows = max(1, min(Ho, TILE_BYTES // (groups * row)))
    return [(g0, min(g0 + groups, G), h0, min(h0 + rows, Ho))
            for g0 in range(0, G, groups) for h0 in range(0, Ho, rows)]


def _im2col_tile(xp_, kh, kw, stride, c0, c1, h0, h1, Wo):
    """cols (c1-c0, kh, kw, h1-h0, Wo, N): cols[c, i, j, h, w] = xp_[c0+c, s*(h0+h)+i, s*w+j].

    One copy from a strided view of the padded input: the view's axes (c, i, j, h, w, n) step
    through memory by (C, H, W, s*H, s*W, N) strides, so no index arrays and one NumPy call.
    """
    N = xp_.shape[3]
    (sh, sw), (stC, stH, stW, stN) = stride, xp_.strides
    window = np.lib.stride_tricks.as_strided(
        xp_[c0:c1, sh * h0:], shape=(c1 - c0, kh, kw, h1 - h0, Wo, N),
        strides=(stC, stH, stW, sh * stH, sw * stW, stN), writeable=False)
    cols = np.empty(window.shape, xp_.dtype)
    np.copyto(cols, window)
    return cols


def _tiled(xp_, G, kh, kw, stride, Ho, Wo, visit):
    """Call visit(t, g0, g1, h0, h1, cols) for every tile, threads taking tiles in turn.

    cols is the tile's im2col matrix, shaped (g1-g0, C_in/G * kh*kw, (h1-h0)*Wo*N) with rows
    ordered (c, i, j) as in the weight; t is the thread index, for thread-private accumulators.
    """
    C, _, _, N = xp_.shape
    Cg = C // G
    tiles = _tiles(G, Cg, kh, kw, Ho, Wo, N, xp_.itemsize)
    n_threads = min(parallel.THREADS, len(tiles))

    def work(t):
        for g0, g1, h0, h1 in tiles[t::n_threads]:
            cols = _im2col_tile(xp_, kh, kw, stride, g0 * Cg, g1 * Cg, h0, h1, Wo)
            visit(t, g0, g1, h0, h1, cols.reshape(g1 - g0, Cg * kh * kw, -1))
    parallel.run([lambda t=t: work(t) for t in range(n_threads)])
    return n_threads


def _conv_valid(xp_, W, groups, stride, Ho, Wo):
    """Unpadded grouped conv of a padded (C_in, Hp, Wp, N) input -> y (C_out, Ho, Wo, N)."""
    C, _, _, N = xp_.shape
    Co, Cg, kh, kw = W.shape
    Wm = W.reshape(groups, Co // groups, Cg * kh * kw)
    if (kh, kw) == (1, 1) and stride == (1, 1):  # a 1x1 conv needs no im2col: x is its own matrix
        y = parallel.matmul(Wm, xp_.reshape(groups, Cg, Ho * Wo * N))
        return y.reshape(Co, Ho, Wo, N)
    y = np.empty((Co, Ho, Wo, N), xp_.dtype)
    y_rows = y.reshape(groups, Co // groups, Ho, Wo * N)

    def visit(t, g0, g1, h0, h1, cols):
        np.matmul(Wm[g0:g1], cols, out=y_rows[g0:g1, :, h0:h1].reshape(g1 - g0, Co // groups, -1))
    _tiled(xp_, groups, kh, kw, stride, Ho, Wo, visit)
    return y


def _forward_chwn(xc, W, stride, padding, groups):
    """x (C_in, H, W, N) -> (y (C_out, Ho, Wo, N), padded x saved for the weight gradient)."""
    C, H, Wd, N = xc.shape
    Co, Cg, kh, kw = W.shape
    (ph, pw) = padding
    Ho, Wo = output_size(H, kh, stride[0], ph), output_size(Wd, kw, stride[1], pw)
    xp_ = pad_chwn(xc, ph, ph, pw, pw)
    return _conv_valid(xp_, W, groups, stride, Ho, Wo), xp_


def _backward_data_chwn(gyc, W, x_shape_chwn, stride, padding, groups):
    """gx (C_in, H, W, N) from gy (C_out, Ho, Wo, N): the adjoint of the conv.

    Stride 1: a *forward* conv (a gather, so tiles split over threads without write conflicts) of
    gy padded by k-1-p with the weight transposed within each group and flipped in space.
    Stride > 1: that form would convolve a gy dilated with zeros (4x the work at stride 2), so
    instead gcols = W^T gy and col2im scatter-adds it back, threads owning disjoint input channels.
    """
    if stride != (1, 1):
        return _backward_data_scatter(gyc, W, x_shape_chwn, stride, padding, groups)
    Co, Ho, Wo, N = gyc.shape
    _, Cg, kh, kw = W.shape
    C, H, Wd, _ = x_shape_chwn
    ph, pw = padding
    Wt = W.reshape(groups, Co // groups, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    Wt = np.ascontiguousarray(Wt).reshape(C, Co // groups, kh, kw)
    gyp = pad_chwn(gyc, kh - 1 - ph, H - Ho + ph, kw - 1 - pw, Wd - Wo + pw)
    return _conv_valid(gyp, Wt, groups, (1, 1), H, Wd)


def _backward_data_scatter(gyc, W, x_shape_chwn, stride, padding, groups):
    """gcols = W^T gy per group, then col2im: every tap adds its slice back into the padded gx.

    Work is tiled over input channels (a group's channels in slabs of ~TILE_BYTES of gcols); tiles
    own disjoint channels of gx, so threads never add into the same memory.
    """
    Co, Ho, Wo, N = gyc.shape
    _, Cg, kh, kw = W.shape
    C, H, Wd, _ = x_shape_chwn
    (sh, sw), (ph, pw) = stride, padding
    Cog = Co // groups
    WmT = W.reshape(groups, Cog, Cg * kh * kw).transpose(0, 2, 1)  # (G, Cg*kh*kw, Cog)
    gy_mat = gyc.reshape(groups, Cog, Ho * Wo * N)
    # the padded gx must hold every tap's window, also where (H + 2p - k) is not a stride multiple
    Hp, Wp = max(H + 2 * ph, sh * (Ho - 1) + kh), max(Wd + 2 * pw, sw * (Wo - 1) + kw)
    gxp = np.zeros((C, Hp, Wp, N), gyc.dtype)
    per = max(1, min(Cg, TILE_BYTES // (kh * kw * Ho * Wo * N * gyc.itemsize)))
    tiles = [(g, c0, min(c0 + per, Cg)) for g in range(groups) for c0 in range(0, Cg, per)]
    n_threads = min(parallel.THREADS, len(tiles))

    def work(t):
        for g, c0, c1 in tiles[t::n_threads]:
            gcols = np.matmul(WmT[g, c0 * kh * kw:c1 * kh * kw], gy_mat[g])
            gcols = gcols.reshape(c1 - c0, kh, kw, Ho, Wo, N)
            dst = gxp[g * Cg + c0:g * Cg + c1]
            for i in range(kh):
                for j in range(kw):
                    dst[:, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += gcols[:, i, j]
    parallel.run([lambda t=t: work(t) for t in range(n_threads)])
    return np.ascontiguousarray(gxp[:, ph:ph + H, pw:pw + Wd])


def _backward_weight_chwn(xp_, gyc, W_shape, stride, groups):
    """gW[g] = gy[g] @ cols[g]^T, summed over row chunks (and threads) of the padded input."""
    Co, Cg, kh, kw = W_shape
    _, Ho, Wo, N = gyc.shape
    gy_rows = gyc.reshape(groups, Co // groups, Ho, Wo * N)
    if (kh, kw) == (1, 1) and stride == (1, 1):
        return parallel.matmul_reduce(gy_rows.reshape(groups, Co // groups, -1),
                                      xp_.reshape(groups, Cg, -1).transpose(0, 2, 1)).reshape(W_shape)
    partial = [np.zeros((groups, Co // groups, Cg * kh * kw), gyc.dtype) for _ in range(parallel.THREADS)]

    def visit(t, g0, g1, h0, h1, cols):
        partial[t][g0:g1] += np.matmul(gy_rows[g0:g1, :, h0:h1].reshape(g1 - g0, Co // groups, -1),
                                       cols.transpose(0, 2, 1))
    n = _tiled(xp_, groups, kh, kw, stride, Ho, Wo, visit)
    return sum(partial[1:n], partial[0]).reshape(W_shape)


def conv2d_forward_numpy(x, W, stride=(1, 1), padding=(0, 0), groups=1):
    """y[n, o] = sum_{c in group(o), i, j} W[o, c', i, j] * x_pad[n, c, s*h + i, s*w + j].  NCHW in/out."""
    check_conv_args(x.shape, W.shape, stride, padding, groups)
    y, _ = _forward_chwn(to_chwn(x), W, stride, padding, groups)
    return from_chwn(y)


def conv2d_backward_data_numpy(gy, W, x_shape, stride=(1, 1), padding=(0, 0), groups=1):
    """gx = d(sum gy * conv(x, W)) / dx, shape x_shape (N, C_in, H, W)."""
    N, C, H, Wd = x_shape
    return from_chwn(_backward_data_chwn(to_chwn(gy), W, (C, H, Wd, N), stride, padding, groups))


def conv2d_backward_weight_numpy(x, gy, W_shape, stride=(1, 1), padding=(0, 0), groups=1):
    """gW = d(sum gy * conv(x, W)) / dW, shape W_shape (C_out, C_in/G, kh, kw)."""
    ph, pw = padding
    xp_ = pad_chwn(to_chwn(x), ph, ph, pw, pw)
    return _backward_weight_chwn(xp_, to_chwn(gy), W_shape, stride, groups)


# ---- the differentiable op ---------------------------------------------------------------------
class Conv2d(Function):
    """Grouped 2-D convolution without bias (every conv of the IGC networks has none)."""

    def __init__(self, stride, padding, groups):
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, xp, x, W):
        self.x_shape, self.W_shape = x.shape, W.shape
        if self.device == "cpu":
            y, self.x_padded = _forward_chwn(to_chwn(x), W, self.stride, self.padding, self.groups)
            self.W = W
            return from_chwn(y)
        from ..kernels import ops as kernel_ops
        self.x, self.W = x, W
        return kernel_ops.conv2d_forward(x, W, self.stride, self.padding, self.groups, self.device)

    def backward(self, xp, gy):
        need_gx = self.needs_input_grad[0]  # False for the stem conv, whose input is the data
        if self.device == "cpu":
            gyc = to_chwn(gy)
            N, C, H, Wd = self.x_shape
            gx = (from_chwn(_backward_data_chwn(gyc, self.W, (C, H, Wd, N), self.stride, self.padding,
                                                self.groups)) if need_gx else None)
            gW = _backward_weight_chwn(self.x_padded, gyc, self.W_shape, self.stride, self.groups)
            return gx, gW
        from ..kernels import ops as kernel_ops
        args = self.stride, self.padding, self.groups, self.device
        gx = kernel_ops.conv2d_backward_data(gy, self.W, self.x_shape, *args) if need_gx else None
        gW = kernel_ops.conv2d_backward_weight(self.x, gy, self.W_shape, *args)
        return gx, gW


def conv2d(x, W, b=None, stride=1, padding=0, groups=1):
    """Grouped 2-D convolution. x (N, C_in, H, W), W (C_out, C_in/groups, kh, kw), b (C_out,) or None.

    stride and padding are ints or (h, w) pairs. Raises ValueError naming the shapes when they
    do not fit (e.g. C_in not divisible by groups).
    """
    stride, padding = pair(stride, "conv2d", "stride"), pair(padding, "conv2d", "padding")
    if x.dtype != W.dtype:
        raise ValueError(f"conv2d: input dtype {x.dtype} != weight dtype {W.dtype}")
    if x.dtype.kind != "f":
        raise ValueError(f"conv2d: input and weight must be floating point, got dtype {x.dtype}")
    check_conv_args(x.shape, W.shape, stride, padding, groups)
    y = Conv2d(stride, padding, int(groups)).apply(x, W)
    if b is not None:
        if b.shape != (W.shape[0],):
            raise ValueError(f"conv2d: bias shape {b.shape} != (C_out,) = ({W.shape[0]},)")
        y = y + b.reshape(1, -1, 1, 1)
    return y
