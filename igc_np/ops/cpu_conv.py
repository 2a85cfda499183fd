"""The CPU engine of the grouped 2-D convolution: im2col tiles and batched matmuls on threads.

ops/conv.py holds the differentiable op (shape checks, dispatch, the maths); this file is HOW the
CPU computes it fast. The readable definition it is tested against is ops/reference.py (conv2d,
conv2d_backward).

Layout (see ops/layout.py): every array here lies in channel-first, batch-last memory
(C, H, W, N). A group of channels is then one contiguous block, so a grouped conv is ONE batched
matmul ``(G, C_out/G, C_in/G*kh*kw) @ (G, C_in/G*kh*kw, Ho*Wo*N)`` whose result *is* y in
(C_out, Ho, Wo, N) memory, and the im2col copies move whole rows of W*N (stride 1) or N (stride 2)
floats at a time.

Legend (names used throughout):

    N              batch size
    C, C_in, Co    input channels, output channels (C_out)
    G, groups      number of groups (L for the primary conv, S for a secondary 1x1 conv)
    Cg, Cog        channels per group: C_in/G (input), C_out/G (output)
    H, Wi          input height and width (Wi, not W: W is the weight)
    Ho, Wo         output height and width,  Ho = (H + 2*ph - kh) // sh + 1
    kh, kw         kernel height and width;  (i, j) a kernel tap
    sh, sw / ph, pw  stride and zero padding along H and W
    W              weight (C_out, C_in/G, kh, kw);  Wm its (G, Cog, Cg*kh*kw) matrix form
    x_pad          the zero-padded input, (C_in, H + 2*ph, Wi + 2*pw, N)
    cols           an im2col block: rows (c, i, j) as in the weight, columns (h, w, n)
    gy, gx, gW     gradients of the output, input and weight
    tile           (g0, g1, h0, h1): a range of groups x a range of output rows, ~TILE_BYTES of cols
    t              a thread index (0 .. threads-1; the tile visitor gets it)

Entry points (what ops/conv.py calls; NCHW-shaped arrays in and out, (C, H, W, N) memory inside):

    conv2d_forward(x, W, stride, padding, groups)            -> (y, x_pad)
    conv2d_backward_data(gy, W, x_shape, stride, padding, groups) -> gx
    conv2d_backward_weight(x_pad, gy, W_shape, stride, groups) -> gW

x_pad is the second result of conv2d_forward, kept by the op for the weight gradient.
"""
import numpy as np

from . import parallel
from .checks import output_size
from .layout import from_chwn, to_chwn

# Size of the im2col block built at a time (a range of groups x a range of output rows): small
# enough to stay in cache between the copy that writes it and the matmul that reads it, large
# enough that per-call overhead does not dominate. Measured on 2 cores, IGC-L24M2 forward at
# 32x32: one whole im2col 47 ms; tiles of 256 KiB 54 ms, 1 MiB 15 ms, 2 MiB 13 ms, 8 MiB 22 ms.
TILE_BYTES = 2 << 20


def pad_chwn(xc, top, bottom, left, right):
    """Zero-pad (negative: crop) the H and W axes of a (C, H, W, N) array."""
    C, H, Wi, N = xc.shape
    if top == bottom == left == right == 0:
        return xc
    out = np.empty((C, H + top + bottom, Wi + left + right, N), xc.dtype)
    src = xc[:, max(0, -top):H - max(0, -bottom), max(0, -left):Wi - max(0, -right)]
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


def _im2col_tile(x_pad, kh, kw, stride, c0, c1, h0, h1, Wo):
    """cols (c1-c0, kh, kw, h1-h0, Wo, N): cols[c, i, j, h, w] = x_pad[c0+c, s*(h0+h)+i, s*w+j].

    One copy from a strided view of the padded input: the view's axes (c, i, j, h, w, n) step
    through memory by (C, H, W, s*H, s*W, N) strides, so no index arrays and one NumPy call.
    """
    N = x_pad.shape[3]
    (sh, sw), (stC, stH, stW, stN) = stride, x_pad.strides
    window = np.lib.stride_tricks.as_strided(
        x_pad[c0:c1, sh * h0:], shape=(c1 - c0, kh, kw, h1 - h0, Wo, N),
        strides=(stC, stH, stW, sh * stH, sw * stW, stN), writeable=False)
    cols = np.empty(window.shape, x_pad.dtype)
    np.copyto(cols, window)
    return cols


def _tiled(x_pad, G, kh, kw, stride, Ho, Wo, visit):
    """Call visit(t, g0, g1, h0, h1, cols) for every tile, each thread taking the next tile.

    cols is the tile's im2col matrix, shaped (g1-g0, C_in/G * kh*kw, (h1-h0)*Wo*N) with rows
    ordered (c, i, j) as in the weight; t is the thread index (0 .. threads-1).
    """
    C, _, _, N = x_pad.shape
    Cg = C // G
    tiles = _tiles(G, Cg, kh, kw, Ho, Wo, N, x_pad.itemsize)

    def work(t, tile):
        g0, g1, h0, h1 = tile
        cols = _im2col_tile(x_pad, kh, kw, stride, g0 * Cg, g1 * Cg, h0, h1, Wo)
        visit(t, g0, g1, h0, h1, cols.reshape(g1 - g0, Cg * kh * kw, -1))
    return parallel.for_each(tiles, work)


def _conv_valid(x_pad, W, groups, stride, Ho, Wo):
    """Unpadded grouped conv of a padded (C_in, Hp, Wp, N) input -> y (C_out, Ho, Wo, N)."""
    C, _, _, N = x_pad.shape
    Co, Cg, kh, kw = W.shape
    Wm = W.reshape(groups, Co // groups, Cg * kh * kw)
    if (kh, kw) == (1, 1) and stride == (1, 1):  # a 1x1 conv needs no im2col: x is its own matrix
        y = parallel.matmul(Wm, x_pad.reshape(groups, Cg, Ho * Wo * N))
        return y.reshape(Co, Ho, Wo, N)
    y = np.empty((Co, Ho, Wo, N), x_pad.dtype)
    y_rows = y.reshape(groups, Co // groups, Ho, Wo * N)

    def visit(t, g0, g1, h0, h1, cols):
        np.matmul(Wm[g0:g1], cols, out=y_rows[g0:g1, :, h0:h1].reshape(g1 - g0, Co // groups, -1))
    _tiled(x_pad, groups, kh, kw, stride, Ho, Wo, visit)
    return y


def _forward_chwn(xc, W, stride, padding, groups):
    """x (C_in, H, W, N) -> (y (C_out, Ho, Wo, N), padded x saved for the weight gradient)."""
    C, H, Wi, N = xc.shape
    Co, Cg, kh, kw = W.shape
    (ph, pw) = padding
    Ho, Wo = output_size(H, kh, stride[0], ph), output_size(Wi, kw, stride[1], pw)
    x_pad = pad_chwn(xc, ph, ph, pw, pw)
    return _conv_valid(x_pad, W, groups, stride, Ho, Wo), x_pad


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
    C, H, Wi, _ = x_shape_chwn
    ph, pw = padding
    Wt = W.reshape(groups, Co // groups, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    Wt = np.ascontiguousarray(Wt).reshape(C, Co // groups, kh, kw)
    gyp = pad_chwn(gyc, kh - 1 - ph, H - Ho + ph, kw - 1 - pw, Wi - Wo + pw)
    return _conv_valid(gyp, Wt, groups, (1, 1), H, Wi)


def _backward_data_scatter(gyc, W, x_shape_chwn, stride, padding, groups):
    """gcols = W^T gy per group, then col2im: every tap adds its slice back into the padded gx.

    Work is tiled over input channels (a group's channels in slabs of ~TILE_BYTES of gcols); tiles
    own disjoint channels of gx, so threads never add into the same memory.
    """
    Co, Ho, Wo, N = gyc.shape
    _, Cg, kh, kw = W.shape
    C, H, Wi, _ = x_shape_chwn
    (sh, sw), (ph, pw) = stride, padding
    Cog = Co // groups
    WmT = W.reshape(groups, Cog, Cg * kh * kw).transpose(0, 2, 1)  # (G, Cg*kh*kw, Cog)
    gy_mat = gyc.reshape(groups, Cog, Ho * Wo * N)
    # the padded gx must hold every tap's window, also where (H + 2p - k) is not a stride multiple
    Hp, Wp = max(H + 2 * ph, sh * (Ho - 1) + kh), max(Wi + 2 * pw, sw * (Wo - 1) + kw)
    gxp = np.zeros((C, Hp, Wp, N), gyc.dtype)
    per = max(1, min(Cg, TILE_BYTES // (kh * kw * Ho * Wo * N * gyc.itemsize)))
    tiles = [(g, c0, min(c0 + per, Cg)) for g in range(groups) for c0 in range(0, Cg, per)]

    def work(t, tile):
        g, c0, c1 = tile
        gcols = np.matmul(WmT[g, c0 * kh * kw:c1 * kh * kw], gy_mat[g])
        gcols = gcols.reshape(c1 - c0, kh, kw, Ho, Wo, N)
        dst = gxp[g * Cg + c0:g * Cg + c1]
        for i in range(kh):
            for j in range(kw):
                dst[:, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += gcols[:, i, j]
    parallel.for_each(tiles, work)
    return np.ascontiguousarray(gxp[:, ph:ph + H, pw:pw + Wi])


def _backward_weight_chwn(x_pad, gyc, W_shape, stride, groups):
    """gW[g] = gy[g] @ cols[g]^T, summed over the row tiles of the padded input in tile order."""
    Co, Cg, kh, kw = W_shape
    _, Ho, Wo, N = gyc.shape
    gy_rows = gyc.reshape(groups, Co // groups, Ho, Wo * N)
    if (kh, kw) == (1, 1) and stride == (1, 1):
        return parallel.matmul_reduce(gy_rows.reshape(groups, Co // groups, -1),
                                      x_pad.reshape(groups, Cg, -1).transpose(0, 2, 1)).reshape(W_shape)
    products = {}  # (g0, h0) -> (g0, g1, the tile's product): summed in tile order below

    def visit(t, g0, g1, h0, h1, cols):
        products[g0, h0] = g0, g1, np.matmul(gy_rows[g0:g1, :, h0:h1].reshape(g1 - g0, Co // groups, -1),
                                             cols.transpose(0, 2, 1))
    _tiled(x_pad, groups, kh, kw, stride, Ho, Wo, visit)
    # in tile order, whatever thread made each product: the same bits for every thread count
    gW = np.zeros((groups, Co // groups, Cg * kh * kw), gyc.dtype)
    for key in sorted(products):
        g0, g1, p = products[key]
        gW[g0:g1] += p
    return gW.reshape(W_shape)


# ---- entry points (NCHW-shaped arrays; the (C, H, W, N) memory stays inside) --------------------
def conv2d_forward(x, W, stride, padding, groups):
    """x (N, C_in, H, Wi) -> (y (N, C_out, Ho, Wo) view of (C, H, W, N) memory, x_pad for backward)."""
    y, x_pad = _forward_chwn(to_chwn(x), W, stride, padding, groups)
    return from_chwn(y), x_pad


def conv2d_backward_data(gy, W, x_shape, stride, padding, groups):
    """gx (x_shape = (N, C_in, H, Wi)) from gy (N, C_out, Ho, Wo): the adjoint of the conv."""
    N, C, H, Wi = x_shape
    return from_chwn(_backward_data_chwn(to_chwn(gy), W, (C, H, Wi, N), stride, padding, groups))


def conv2d_backward_weight(x_pad, gy, W_shape, stride, groups):
    """gW (W_shape) from the padded input x_pad (C_in, Hp, Wp, N) and gy (N, C_out, Ho, Wo)."""
    return _backward_weight_chwn(x_pad, to_chwn(gy), W_shape, stride, groups)
