"""The channel permutation of IGC (``Reorder`` in the authors' MXNet code; paper section 3: P).

permute_channels(x, b) views the channel axis of x (N, C, H, W) as a (b, C/b) grid and transposes
it: y[:, j*b + i] = x[:, i*(C/b) + j] (the formula lives in reference.permutation_index). Its
inverse is permute_channels(., C/b), which is therefore its backward.
"""
from ..autograd import Function
from ..kernels import permutation as permutation_kernels
from . import reference
from .checks import divisors
from .layout import copy_keeping_layout


def permute_channels_cpu(x, b):
    """The CPU tier: the grid transpose as a 5-D view (N, C/b, b, H, W), copied keeping x's memory
    order (NCHW stays NCHW, the conv's (C, H, W, N) memory stays channel-first)."""
    N, C, H, W = x.shape
    return copy_keeping_layout(x.reshape(N, b, C // b, H, W).transpose(0, 2, 1, 3, 4)).reshape(N, C, H, W)


def check_branch_factor(C, b, op="permute_channels"):
    if not isinstance(b, int) or isinstance(b, bool) or b < 1 or C % b:
        raise ValueError(f"{op}: branch_factor={b!r} must divide the channel count C={C}; "
                         f"divisors of {C}: {divisors(C)}")


class PermuteChannelsFunction(Function):
    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def __init__(self, b):
        self.b = b

    def forward_reference(self, xp, x):
        return reference.permute_channels(x, self.b)

    def backward_reference(self, xp, gy):
        return reference.permute_channels_backward(gy, self.b)

    def forward_cpu(self, xp, x):
        return permute_channels_cpu(x, self.b)

    def backward_cpu(self, xp, gy):
        return permute_channels_cpu(gy, gy.shape[1] // self.b)  # the inverse permutation

    def forward_gpu(self, xp, x):
        return permutation_kernels.permute_channels(x, self.b, self.device)

    def backward_gpu(self, xp, gy):
        return permutation_kernels.permute_channels(gy, gy.shape[1] // self.b, self.device)


def permute_channels(x, branch_factor):
    """IGC's interleaving permutation of x (N, C, H, W); see the module docstring."""
    if x.ndim != 4:
        raise ValueError(f"permute_channels: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if hasattr(branch_factor, "__index__") and not isinstance(branch_factor, bool):
        branch_factor = int(branch_factor)
    check_branch_factor(x.shape[1], branch_factor)
    return PermuteChannelsFunction(branch_factor).apply(x)
