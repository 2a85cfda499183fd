"""P -> secondary 1x1 group conv -> P^T, as ONE op with no permuted copy (IGC with S = M = C/L).

The IGC conv (paper section 3) is  y = P^T W_d P W_p x.  With C = L*M channels and S = M secondary
partitions, P = permute_channels(., L) puts member m of every primary partition into secondary
partition m; P^T = permute_channels(., M) puts them back. In indices (reference.permutation_index):

    z[m, l]    = x[l*M + m]                      (after P: partition m, member l)
    y[l*M + m] = sum_l' W_d[m][l, l'] z[m, l']   (secondary conv in partition m, then P^T)

So "partition m" is channels m, M+m, 2M+m, ...: a stride-M slice of the channel axis. The tiers:
    reference  reference.interleaved_secondary: the three steps one after the other;
    cpu        the channel axis is the outermost of the (C, H, W, N) memory, so partition m of x is
               the strided view layout.partitions(x)[m] and the whole op is one batched matmul
               between two such views: BLAS reads and writes them in place, P and P^T cost nothing;
    gpu        the fused kernel igc_np/kernels/interleaved_secondary.cu, the same indexing.
"""
import numpy as np

from ..autograd import Function
from ..kernels import interleaved_secondary as interleaved_kernels
from . import parallel, reference
from .layout import from_chwn, partitions, to_chwn


class InterleavedSecondaryFunction(Function):
    """Inputs x (N, C, H, W) - the primary conv's output - and W_d (C, L, 1, 1), the secondary
    weight with M = C/L groups. Output (N, C, H, W)."""

    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def __init__(self, L):
        self.L = L

    def forward_reference(self, xp, x, W_d):
        self.x, self.W_d = x, W_d
        return reference.interleaved_secondary(x, W_d, self.L)

    def backward_reference(self, xp, gy):
        return reference.interleaved_secondary_backward(self.x, self.W_d, gy, self.L)

    def forward_cpu(self, xp, x, W_d):
        L, M = self.L, x.shape[1] // self.L
        self.x, self.W_d = x, W_d
        xc = to_chwn(x)
        y = np.empty_like(xc)
        parallel.matmul(W_d.reshape(M, L, L), partitions(xc, L, M), out=partitions(y, L, M))
        return from_chwn(y)

    def backward_cpu(self, xp, gy):
        L, M = self.L, gy.shape[1] // self.L
        gyc, xc = to_chwn(gy), to_chwn(self.x)
        gx = np.empty_like(gyc)
        parallel.matmul(self.W_d.reshape(M, L, L).transpose(0, 2, 1), partitions(gyc, L, M),
                        out=partitions(gx, L, M))
        gW_d = parallel.matmul_reduce(partitions(gyc, L, M), partitions(xc, L, M).transpose(0, 2, 1))
        return from_chwn(gx), gW_d.reshape(self.W_d.shape)

    def forward_gpu(self, xp, x, W_d):
        self.x, self.W_d = x, W_d
        return interleaved_kernels.interleaved_secondary_forward(x, W_d, self.L, x.shape[1] // self.L, self.device)

    def backward_gpu(self, xp, gy):
        L, M = self.L, gy.shape[1] // self.L
        gx = interleaved_kernels.interleaved_secondary_backward_data(gy, self.W_d, L, M, self.device)
        gW_d = interleaved_kernels.interleaved_secondary_backward_weight(self.x, gy, self.W_d.shape, L, M, self.device)
        return gx, gW_d


def interleaved_secondary(x, W_d, L):
    """The second half of an IGC conv with S = C/L: P (permute by L), 1x1 conv in M groups, P^T.

    x (N, C, H, W), W_d (C, L, 1, 1) -> (N, C, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"interleaved_secondary: input must be 4-D (N, C, H, W), got shape {x.shape}")
    C = x.shape[1]
    if not isinstance(L, (int, np.integer)) or isinstance(L, bool) or L < 1 or C % L:
        raise ValueError(f"interleaved_secondary: L={L!r} must be a positive divisor of C={C} "
                         f"(input shape {x.shape})")
    if x.dtype != W_d.dtype or x.dtype.kind != "f":
        raise ValueError(f"interleaved_secondary: input dtype {x.dtype} and weight dtype {W_d.dtype} "
                         "must be the same floating-point type")
    if tuple(W_d.shape) != (C, L, 1, 1):
        raise ValueError(f"interleaved_secondary: weight shape {tuple(W_d.shape)} != (C, L, 1, 1) = "
                         f"({C}, {L}, 1, 1) for input shape {x.shape}")
    return InterleavedSecondaryFunction(int(L)).apply(x, W_d)
