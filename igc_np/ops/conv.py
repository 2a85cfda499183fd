"""Grouped 2-D convolution: the primary (k x k, L groups) and secondary (1 x 1, S groups) convs of IGC.

    y[n, o, h, w] = sum_{c in group(o), i, j} W[o, c', i, j] * x_pad[n, c, s*h + i, s*w + j]

Shapes are NCHW: x (N, C_in, H, W), W (C_out, C_in/G, kh, kw), y (N, C_out, Ho, Wo) with
Ho = (H + 2*ph - kh) // sh + 1. No bias inside the op (no conv of the IGC networks has one).

The tiers (chosen by Function.apply, see autograd.py):
    reference  ops/reference.py: conv2d / conv2d_backward, a loop over groups and taps;
    cpu        ops/cpu_conv.py: im2col tiles + batched matmuls in (C, H, W, N) memory, threaded;
    gpu        igc_np/kernels/group_conv.cu through kernels.ops ('cuda', or 'emu' on the CPU).
"""
import numpy as np

from ..autograd import Function
from ..kernels import conv as conv_kernels
from . import cpu_conv, reference
from .checks import check_nonempty, conv_window, output_size


def check_conv_args(x_shape, W_shape, stride, padding, groups, op="conv2d"):
    """Validate shapes of a grouped conv; return (Ho, Wo). Errors name the op and the shapes."""
    if len(x_shape) != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(W_shape) != 4:
        raise ValueError(f"{op}: weight must be 4-D (C_out, C_in/groups, kh, kw), got shape {tuple(W_shape)}")
    N, C, H, W = x_shape
    Co, Cg, kh, kw = W_shape
    check_nonempty(op, "input", x_shape)
    if min(W_shape) < 1:
        raise ValueError(f"{op}: weight shape {tuple(W_shape)} has a zero-size axis (a 0x0 kernel or "
                         "no output channels)")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
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
    if ph > kh or pw > kw:
        # padding k - 1 already makes border outputs that see one real row; beyond k an output
        # sees padding only: a mistake (and, for a large value, a huge allocation)
        raise ValueError(f"{op}: padding {padding} is larger than the kernel {kh}x{kw} "
                         f"(input shape {tuple(x_shape)}, weight shape {tuple(W_shape)})")
    Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: kernel {kh}x{kw} does not fit input {H}x{W} with padding {padding}")
    return Ho, Wo


class Conv2dFunction(Function):
    """The differentiable grouped conv (no bias); F.conv2d validates and adds the bias."""

    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def __init__(self, stride, padding, groups):
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward_reference(self, xp, x, W):
        self.x, self.W = x, W
        return reference.conv2d(x, W, self.stride, self.padding, self.groups)

    def backward_reference(self, xp, gy):
        return reference.conv2d_backward(self.x, self.W, gy, self.stride, self.padding, self.groups)

    def forward_cpu(self, xp, x, W):
        self.x_shape, self.W = x.shape, W
        y, self.x_pad = cpu_conv.conv2d_forward(x, W, self.stride, self.padding, self.groups)
        return y

    def backward_cpu(self, xp, gy):
        gx = None
        if self.needs_input_grad[0]:  # False for the stem conv, whose input is the data
            gx = cpu_conv.conv2d_backward_data(gy, self.W, self.x_shape, self.stride, self.padding,
                                               self.groups)
        gW = cpu_conv.conv2d_backward_weight(self.x_pad, gy, self.W.shape, self.stride, self.groups)
        return gx, gW

    def forward_gpu(self, xp, x, W):
        self.x, self.W = x, W
        return conv_kernels.conv2d_forward(x, W, self.stride, self.padding, self.groups, self.device)

    def backward_gpu(self, xp, gy):
        args = self.stride, self.padding, self.groups, self.device
        gx = None
        if self.needs_input_grad[0]:
            gx = conv_kernels.conv2d_backward_data(gy, self.W, self.x.shape, *args)
        gW = conv_kernels.conv2d_backward_weight(self.x, gy, self.W.shape, *args)
        return gx, gW


def conv2d(x, W, b=None, stride=1, padding=0, groups=1):
    """Grouped 2-D convolution. x (N, C_in, H, W), W (C_out, C_in/groups, kh, kw), b (C_out,) or None.

    stride: an int or an (h, w) pair. padding: an int, an (h, w) pair, 'valid' (none) or 'same'
    (output H x W, stride 1 only; an even kernel gets its odd zero row / column at the bottom /
    right, as PyTorch): see checks.conv_window. Raises ValueError naming the shapes when they do
    not fit (e.g. C_in not divisible by groups).
    """
    if x.dtype != W.dtype:
        raise ValueError(f"conv2d: input dtype {x.dtype} != weight dtype {W.dtype}")
    if x.dtype.kind != "f":
        raise ValueError(f"conv2d: input and weight must be floating point, got dtype {x.dtype}")
    kernel = tuple(W.shape[2:]) if W.ndim == 4 and min(W.shape[2:]) > 0 else 1  # else check_conv_args says
    _, stride, ((top, bottom), (left, right)) = conv_window("conv2d", kernel, stride, padding)
    # the op pads both sides alike: pad by the larger side, then crop what the smaller side lacks
    # (only 'same' with an even kernel is asymmetric: one row / column, at stride 1)
    ph, pw = max(top, bottom), max(left, right)
    check_conv_args(x.shape, W.shape, stride, (ph, pw), groups)
    y = Conv2dFunction(stride, (ph, pw), int(groups)).apply(x, W)
    if (top, bottom, left, right) != (ph, ph, pw, pw):
        Ho, Wo = y.shape[2:]
        y = y[:, :, ph - top:Ho - (ph - bottom), pw - left:Wo - (pw - right)]
    if b is not None:
        if b.shape != (W.shape[0],):
            raise ValueError(f"conv2d: bias shape {b.shape} != (C_out,) = ({W.shape[0]},)")
        y = y + b.reshape(1, -1, 1, 1)
    return y
