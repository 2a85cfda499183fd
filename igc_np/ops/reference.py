"""The reference tier: the shortest correct NumPy version of every op the IGC networks use.

Read this file first. Each op is written for reading, forward AND backward, on plain NCHW arrays,
with its shapes and its one line of maths in the docstring. It is the specification: the fast CPU
tier (ops/cpu_conv.py and the CPU paths of ops/*.py) and the CUDA kernels (igc_np/kernels, run on
'emu' or 'cuda') are tested equal to it (tests/test_reference_tier.py, tests/test_kernels_emu.py),
and ``igc_np.backend.use_reference()`` runs a whole network on it.

Notation (paper section 3): C = L*M channels, L primary partitions of M channels each; the
secondary conv has S groups (S = M in every network of the paper); P is the permutation.
A backward function returns the gradient of every input, given the forward inputs and gy.

Some ops here (linear, global average pooling, cross-entropy, the permutation index) are short
enough to be their own fast path: their Functions call them with ``xp`` = numpy or cupy.
"""
import numpy as np


def _windows(x_pad, i, j, Ho, Wo, stride):
    """The tap (i, j) of every window: x_pad[:, :, s*h + i, s*w + j] for h < Ho, w < Wo (a view)."""
    sh, sw = stride
    return x_pad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]


def _out_size(x_shape, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (x_shape[2] + 2 * ph - kh) // sh + 1, (x_shape[3] + 2 * pw - kw) // sw + 1


def _pad(x, padding, value=0):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _unpad(g_pad, padding, x_shape):
    ph, pw = padding
    return g_pad[:, :, ph:ph + x_shape[2], pw:pw + x_shape[3]]


# ---- grouped convolution ----------------------------------------------------------------------
def conv2d(x, W, stride=(1, 1), padding=(0, 0), groups=1):
    """x (N, C_in, H, W), W (C_out, C_in/G, kh, kw) -> y (N, C_out, Ho, Wo), no bias.

    y[n, g*Cog + o] = sum_{i, j} W[g*Cog + o, :, i, j] . x_pad[n, g*Cg : (g+1)*Cg, s*h + i, s*w + j]
    (group g sees only its Cg = C_in/G input channels and makes its Cog = C_out/G outputs).
    """
    Co, Cg, kh, kw = W.shape
    Ho, Wo = _out_size(x.shape, (kh, kw), stride, padding)
    x_pad = _pad(x, padding)
    Cog = Co // groups
    y = np.zeros((x.shape[0], Co, Ho, Wo), np.result_type(x, W))
    for g in range(groups):
        xg, Wg = x_pad[:, g * Cg:(g + 1) * Cg], W[g * Cog:(g + 1) * Cog]
        for i in range(kh):
            for j in range(kw):
                y[:, g * Cog:(g + 1) * Cog] += np.einsum("nchw,oc->nohw", _windows(xg, i, j, Ho, Wo, stride),
                                                         Wg[:, :, i, j])
    return y


def conv2d_backward(x, W, gy, stride=(1, 1), padding=(0, 0), groups=1):
    """(gx, gW) of conv2d for gy (N, C_out, Ho, Wo): every tap's product, transposed.

    gx_pad[window of tap (i, j)] += W[:, :, i, j]^T gy;   gW[:, :, i, j] = gy . window of tap (i, j)
    """
    Co, Cg, kh, kw = W.shape
    Ho, Wo = gy.shape[2:]
    x_pad = _pad(x, padding)
    gx_pad, gW = np.zeros_like(x_pad), np.zeros_like(W)
    Cog = Co // groups
    for g in range(groups):
        xg, gxg = x_pad[:, g * Cg:(g + 1) * Cg], gx_pad[:, g * Cg:(g + 1) * Cg]
        gyg, Wg = gy[:, g * Cog:(g + 1) * Cog], W[g * Cog:(g + 1) * Cog]
        for i in range(kh):
            for j in range(kw):
                _windows(gxg, i, j, Ho, Wo, stride)[...] += np.einsum("nohw,oc->nchw", gyg, Wg[:, :, i, j])
                gW[g * Cog:(g + 1) * Cog, :, i, j] = np.einsum("nohw,nchw->oc", gyg,
                                                               _windows(xg, i, j, Ho, Wo, stride))
    return _unpad(gx_pad, padding, x.shape), gW


# ---- the permutation P (Reorder in the authors' code) ---------------------------------------
def permutation_index(C, b, xp=np):
    """perm (C,) with permute_channels(x, b)[:, k] = x[:, perm[k]]:   perm[j*b + i] = i*(C/b) + j.

    The ONE statement of IGC's permutation in igc_np. The channels form a (b, C/b) grid, row i
    holding channels i*(C/b) .. i*(C/b) + C/b - 1; P reads the grid column by column. With b = L
    (rows = primary partitions) output channels m*L .. m*L + L-1, secondary partition m, hold
    member m of every primary partition. Its inverse is permutation_index(C, C // b).
    """
    return xp.arange(C).reshape(b, C // b).T.reshape(C)


def permute_channels(x, b):
    """x (N, C, H, W) -> y (N, C, H, W), y[:, j*b + i] = x[:, i*(C/b) + j]."""
    return x[:, permutation_index(x.shape[1], b)]


def permute_channels_backward(gy, b):
    """gx of permute_channels: the inverse permutation, permute_channels(gy, C/b)."""
    return permute_channels(gy, gy.shape[1] // b)


# ---- the interleaved secondary conv: P -> 1x1 group conv (S = M groups) -> P^T -----------------
def interleaved_secondary(x, W_d, L):
    """x (N, C, H, W), W_d (C, L, 1, 1) with C = L*M -> y = P^T W_d P x, (N, C, H, W).

    P = permute_channels(., L) gathers member m of every primary partition into secondary
    partition m; W_d mixes each partition (a 1x1 conv with M groups of L channels); P^T =
    permute_channels(., M) puts the channels back in primary order.
    """
    M = x.shape[1] // L
    return permute_channels(conv2d(permute_channels(x, L), W_d, groups=M), M)


def interleaved_secondary_backward(x, W_d, gy, L):
    """(gx, gW_d) of interleaved_secondary: the chain rule through P^T, the 1x1 conv and P."""
    M = x.shape[1] // L
    gz = permute_channels_backward(gy, M)
    gv, gW_d = conv2d_backward(permute_channels(x, L), W_d, gz, groups=M)
    return permute_channels_backward(gv, L), gW_d


# ---- BatchNorm ----------------------------------------------------------------------------------
def _c(v):
    return v.reshape(1, -1, 1, 1)


def batch_norm_statistics(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W): two (C,) arrays."""
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))


def batch_norm(x, gamma, beta, mean, var, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel; x (N, C, H, W), the rest (C,)."""
    return gamma.reshape(1, -1, 1, 1) * (x - _c(mean)) / np.sqrt(_c(var) + eps) + _c(beta)


def batch_norm_backward(x, gamma, gy, mean, var, eps, training):
    """(gx, ggamma, gbeta). With batch statistics (training) mean and var depend on x too:

    gx = gamma / sqrt(var + eps) * (gy - mean(gy) - xhat * mean(gy * xhat)), means over (N, H, W).
    """
    xhat = (x - _c(mean)) / np.sqrt(_c(var) + eps)
    gbeta, ggamma = gy.sum(axis=(0, 2, 3)), (gy * xhat).sum(axis=(0, 2, 3))
    g = gy
    if training:
        g = gy - gy.mean(axis=(0, 2, 3), keepdims=True) - xhat * (gy * xhat).mean(axis=(0, 2, 3), keepdims=True)
    return _c(gamma) / np.sqrt(_c(var) + eps) * g, ggamma, gbeta


# ---- ReLU ---------------------------------------------------------------------------------------
def relu(x):
    """y = max(x, 0)."""
    return np.maximum(x, 0)


def relu_backward(x, gy):
    """gx = gy where x > 0, else 0."""
    return gy * (x > 0)


# ---- pooling ------------------------------------------------------------------------------------
def _taps(x_pad, kernel, stride, Ho, Wo):
    """(kh*kw, N, C, Ho, Wo): every tap of every window, tap t = i*kw + j."""
    kh, kw = kernel
    return np.stack([_windows(x_pad, i, j, Ho, Wo, stride) for i in range(kh) for j in range(kw)])


def max_pool2d(x, kernel, stride, padding):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), the max of each window (padding -inf never wins; NaN wins)."""
    Ho, Wo = _out_size(x.shape, kernel, stride, padding)
    return _taps(_pad(x, padding, -np.inf), kernel, stride, Ho, Wo).max(axis=0)


def max_pool2d_backward(x, gy, kernel, stride, padding):
    """gx: each window's gy goes to its first maximal tap (a NaN, if any: np.argmax's rule)."""
    Ho, Wo = gy.shape[2:]
    x_pad = _pad(x, padding, -np.inf)
    winner = _taps(x_pad, kernel, stride, Ho, Wo).argmax(axis=0)
    gx_pad = np.zeros(x_pad.shape, gy.dtype)
    kw = kernel[1]
    for t in range(kernel[0] * kw):
        _windows(gx_pad, t // kw, t % kw, Ho, Wo, stride)[...] += gy * (winner == t)
    return _unpad(gx_pad, padding, x.shape)


def avg_pool2d(x, kernel, stride, padding):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), the mean of each window, zero padding counted (MXNet)."""
    Ho, Wo = _out_size(x.shape, kernel, stride, padding)
    return _taps(_pad(x, padding), kernel, stride, Ho, Wo).mean(axis=0)


def avg_pool2d_backward(x, gy, kernel, stride, padding):
    """gx: every tap of a window receives gy / (kh*kw)."""
    Ho, Wo = gy.shape[2:]
    gx_pad = np.zeros(_pad(x, padding).shape, gy.dtype)
    kh, kw = kernel
    for i in range(kh):
        for j in range(kw):
            _windows(gx_pad, i, j, Ho, Wo, stride)[...] += gy / (kh * kw)
    return _unpad(gx_pad, padding, x.shape)


def global_avg_pool2d(x):
    """x (N, C, H, W) -> (N, C), the mean over H and W (array methods only: any xp)."""
    return x.mean(axis=(2, 3))


def global_avg_pool2d_backward(x_shape, gy, xp=np):
    """gx (x_shape): gy / (H*W) at every position."""
    N, C, H, W = x_shape
    return xp.broadcast_to(gy[:, :, None, None] / (H * W), x_shape).copy()


# ---- linear and the loss ------------------------------------------------------------------------
def linear(x, W, b=None):
    """x (N, in), W (out, in), b (out,) or None -> y = x W^T + b, (N, out)."""
    y = x @ W.T
    return y if b is None else y + b


def linear_backward(x, W, gy):
    """(gx, gW, gb) = (gy W, gy^T x, sum_n gy)."""
    return gy @ W, gy.T @ x, gy.sum(axis=0)


def log_softmax(z, xp=np, axis=1):
    """log(exp(z) / sum exp(z)) along `axis`, shifted by the max so that exp never overflows."""
    z = z - z.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def cross_entropy(logits, labels, xp=np):
    """logits (N, K), labels (N,) ints in [0, K) -> mean_n -log softmax(logits[n])[labels[n]] (0-d)."""
    N = logits.shape[0]
    return -log_softmax(logits, xp)[xp.arange(N), labels].mean()


def cross_entropy_backward(logits, labels, gy, xp=np):
    """g logits = (softmax(logits) - onehot(labels)) * gy / N."""
    N = logits.shape[0]
    g = xp.exp(log_softmax(logits, xp))
    g[xp.arange(N), labels] -= 1
    return g * (gy / N)
