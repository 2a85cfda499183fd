"""The channel permutation of IGC (the reference code's ``Reorder``).

permute_channels(x, b) views the channel axis of x (N, C, H, W) as a (b, C/b) grid and transposes
it to (C/b, b): input channel ``i*(C/b) + j`` becomes output channel ``j*b + i``. Its inverse is
permute_channels(., C/b), which is therefore its backward (paper section 3: the permutation P).
"""
import numpy as np

from ..autograd import Function


def interleave_index(C, b):
    """perm with y[:, k] = x[:, perm[k]] for y = permute_channels(x, b):  perm[j*b + i] = i*(C/b) + j."""
    return np.arange(C).reshape(b, C // b).T.reshape(C)


def permute_channels_numpy(x, b):
    """(N, C, H, W) -> (N, C, H, W) with the channel grid (b, C/b) transposed (memory order kept)."""
    N, C, H, W = x.shape
    # Transposing two axes of a 5-D view and copying with order='K' keeps the caller's memory
    # layout (NCHW stays NCHW, the CPU conv's (C, H, W, N) memory stays channel-first).
    y = x.reshape(N, b, C // b, H, W).transpose(0, 2, 1, 3, 4)
    return _copy_keep_layout(y).reshape(N, C, H, W)


def _copy_keep_layout(v):
    """Copy a 5-D (N, C/b, b, H, W) view into memory whose order follows the source's channels-first
    or batch-first layout, so the reshape back to 4-D stays a view."""
    if v.strides[0] < v.strides[3]:  # batch is the fastest axis: (C, H, W, N) memory
        out = np.empty((v.shape[1], v.shape[2], v.shape[3], v.shape[4], v.shape[0]), v.dtype)
        out[...] = v.transpose(1, 2, 3, 4, 0)
        return out.transpose(4, 0, 1, 2, 3)
    return np.ascontiguousarray(v)


def check_branch_factor(C, b, op="permute_channels"):
    if not isinstance(b, (int, np.integer)) or b < 1 or C % b:
        divisors = [d for d in range(1, C + 1) if C % d == 0]
        raise ValueError(f"{op}: branch_factor={b!r} must divide the channel count C={C}; "
                         f"divisors of {C}: {divisors}")


class PermuteChannels(Function):
    def __init__(self, b):
        self.b = b

    def forward(self, xp, x):
        self.C = x.shape[1]
        return self._permute(xp, x, self.b)

    def backward(self, xp, gy):
        return self._permute(xp, gy, self.C // self.b)  # the inverse permutation

    def _permute(self, xp, x, b):
        if self.device == "cpu":
            return permute_channels_numpy(x, b)
        from ..kernels import ops as kernel_ops
        return kernel_ops.permute_channels(x, b, self.device)


def permute_channels(x, branch_factor):
    """IGC's interleaving permutation of x (N, C, H, W); see the module docstring."""
    if x.ndim != 4:
        raise ValueError(f"permute_channels: input must be 4-D (N, C, H, W), got shape {x.shape}")
    check_branch_factor(x.shape[1], branch_factor)
    return PermuteChannels(int(branch_factor)).apply(x)
