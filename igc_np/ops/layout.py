"""The memory-layout contract of the CPU tier, written down once.

Every array a user sees is NCHW: shape (N, C, H, W), indexed x[n, c, h, w]. What the *memory*
behind that shape looks like is a CPU-tier detail:

* the CPU conv engine (ops/cpu_conv.py) computes in channel-first, batch-last memory (C, H, W, N):
  a group of channels is one contiguous block, so a grouped conv is one batched matmul whose result
  already is y in (C, Ho, Wo, N) memory. It hands back the NCHW *view* ``from_chwn(y)``;
* the ops that follow a conv - BatchNorm, ReLU, the permutation, the fused secondary conv, the
  residual add - keep the memory order of their input (``empty_like``, ``copy_keeping_layout``), so
  the next conv finds its input already (C, H, W, N)-contiguous and ``to_chwn`` is a free view;
* every other op (pooling, linear, the generic ops of ops/math.py) sees an ordinary strided NumPy
  array and works on any memory order.

Shapes, indexing, ``.numpy()`` and every NumPy function see NCHW either way, which is why the
layout is invisible to users: only speed depends on it. The reference tier (ops/reference.py) and
the CUDA kernels (C-contiguous NCHW) ignore it.
"""
import numpy as np


def to_chwn(a):
    """(N, C, H, W) array -> the same values as a C-contiguous (C, H, W, N) array.

    A free view when `a` already lies in (C, H, W, N) memory (a conv's output); a copy otherwise.
    """
    return np.ascontiguousarray(a.transpose(1, 2, 3, 0))


def from_chwn(a):
    """(C, H, W, N) array -> the (N, C, H, W) view of the same memory (no copy)."""
    return a.transpose(3, 0, 1, 2)


def is_chwn(a):
    """True when the NCHW array `a` lies in C-contiguous (C, H, W, N) memory."""
    return a.transpose(1, 2, 3, 0).flags.c_contiguous


def rows(a):
    """(N, C, H, W) view of (C, H, W, N) memory -> its (C, H*W*N) channel rows (a view), else None.

    In that layout each channel is one contiguous row, which BatchNorm's cache-blocked path uses.
    """
    if not is_chwn(a):
        return None
    return a.transpose(1, 2, 3, 0).reshape(a.shape[1], -1)


def from_rows(r, shape):
    """(C, H*W*N) rows -> the NCHW view `shape` = (N, C, H, W) of the same memory (inverse of rows)."""
    N, C, H, W = shape
    return from_chwn(r.reshape(C, H, W, N))


def copy_keeping_layout(v):
    """A copy of the 5-D view v (N, A, B, H, W) into fresh memory in v's own memory order.

    For the permutation: v is a (channel-grid-transposed) view of an NCHW array, and the reshape of
    the copy back to (N, A*B, H, W) must stay a view. When v's batch axis is the fastest
    ((C, H, W, N) memory) the copy is made batch-last, otherwise C-contiguous.
    """
    if v.strides[0] < v.strides[3]:  # batch moves faster than rows: (C, H, W, N) memory
        out = np.empty(v.shape[1:] + v.shape[:1], v.dtype)
        out[...] = v.transpose(1, 2, 3, 4, 0)
        return out.transpose(4, 0, 1, 2, 3)
    return np.ascontiguousarray(v)


def partitions(a_chwn, L, M):
    """(C, H, W, N) memory with C = L*M -> the (M, L, H*W*N) view [m, l] = channel l*M + m.

    Row [m, l] is member l of secondary partition m (IGC's permutation P, read without a copy):
    the interleaved secondary conv is a batched matmul over these strided views.
    """
    return a_chwn.reshape(L, M, -1).transpose(1, 0, 2)
