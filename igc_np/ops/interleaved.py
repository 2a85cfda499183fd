"""permutation -> secondary 1x1 group conv -> permutation back, as ONE op with no permuted copy.

The IGC conv (paper section 3) is  y = P^T W_d P W_p x.  With C = L*M channels and S = M secondary
partitions, P = permute_channels(., L) puts channel m of every primary partition into secondary
partition m; P^T = permute_channels(., M) puts them back. Written as index maps:

    z[m, l]  =  x[l*M + m]                (after P: partition m, member l)
    y[l*M + m] = sum_l' W_d[m][l, l'] z[m, l']   (secondary conv in partition m, then P^T)

So "partition m" is channels m, M+m, 2M+m, ...: a stride-M slice of the channel axis. On the CPU
the channel axis is the outermost of the (C, H, W, N) memory, so partition m of x is the matrix
x.reshape(L, M, HWN)[:, m, :] (row stride M*HWN) and the whole op is one batched matmul between
two strided views: BLAS reads and writes them in place, and the permutations cost nothing.
On 'cuda'/'emu' the fused kernel igc_np/kernels/interleaved_secondary.cu does the same indexing.
"""
import numpy as np

from ..autograd import Function
from . import parallel
from .conv import from_chwn, to_chwn


def _partitions(a_chwn, L, M):
    """(C, H, W, N) memory -> (M, L, H*W*N) view: [m, l] = channel l*M + m."""
    return a_chwn.reshape(L, M, -1).transpose(1, 0, 2)


def interleaved_secondary_numpy(x, W2, L):
    """y = permute(conv1x1(permute(x, L), W2, groups=M), M) for x (N, C, H, W), W2 (C, L, 1, 1)."""
    C = x.shape[1]
    M = C // L
    xc = to_chwn(x)
    y = np.empty_like(xc)
    parallel.matmul(W2.reshape(M, L, L), _partitions(xc, L, M), out=_partitions(y, L, M))
    return from_chwn(y)


class InterleavedSecondary(Function):
    """Inputs x (N, C, H, W) - the primary conv's output - and W2 (C, L, 1, 1), the secondary
    weight with M = C/L groups. Output (N, C, H, W)."""

    def __init__(self, L):
        self.L = L

    def forward(self, xp, x, W2):
        self.x, self.W2 = x, W2
        C = x.shape[1]
        if self.device != "cpu":
            from ..kernels import ops as kernel_ops
            return kernel_ops.interleaved_secondary_forward(x, W2, self.L, C // self.L, self.device)
        return interleaved_secondary_numpy(x, W2, self.L)

    def backward(self, xp, gy):
        L = self.L
        C = gy.shape[1]
        M = C // L
        if self.device != "cpu":
            from ..kernels import ops as kernel_ops
            gx = kernel_ops.interleaved_secondary_backward_data(gy, self.W2, L, M, self.device)
            gW = kernel_ops.interleaved_secondary_backward_weight(self.x, gy, self.W2.shape, L, M, self.device)
            return gx, gW
        gyc, xc = to_chwn(gy), to_chwn(self.x)
        Wd = self.W2.reshape(M, L, L)
        gx = np.empty_like(gyc)
        parallel.matmul(Wd.transpose(0, 2, 1), _partitions(gyc, L, M), out=_partitions(gx, L, M))
        gW = parallel.matmul_reduce(_partitions(gyc, L, M), _partitions(xc, L, M).transpose(0, 2, 1))
        return from_chwn(gx), gW.reshape(self.W2.shape)


def interleaved_secondary(x, W2, L):
    """The second half of an IGC conv with S = C/L: permute(L), 1x1 conv in M groups, permute(M)."""
    if x.ndim != 4:
        raise ValueError(f"interleaved_secondary: input must be 4-D (N, C, H, W), got shape {x.shape}")
    C = x.shape[1]
    if not isinstance(L, (int, np.integer)) or L < 1 or C % L:
        raise ValueError(f"interleaved_secondary: L={L!r} must be a positive divisor of C={C} "
                         f"(input shape {x.shape})")
    if x.dtype != W2.dtype or x.dtype.kind != "f":
        raise ValueError(f"interleaved_secondary: input dtype {x.dtype} and weight dtype {W2.dtype} "
                         "must be the same floating-point type")
    if tuple(W2.shape) != (C, L, 1, 1):
        raise ValueError(f"interleaved_secondary: weight shape {tuple(W2.shape)} != (C, L, 1, 1) = "
                         f"({C}, {L}, 1, 1) for input shape {x.shape}")
    return InterleavedSecondary(int(L)).apply(x, W2)
