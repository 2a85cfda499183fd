"""Max and average pooling over k x k windows, and global average pooling.

The fast tier (cpu and gpu alike, any xp and any memory layout) takes the windows as k*k strided
slices of the (padded) input, one per kernel tap, so every pass is a whole-array operation with no
host synchronisation on the GPU. The reference tier (reference.max_pool2d, ...) stacks the taps.
"""

from ..autograd import Function
from . import reference
from .checks import check_float, check_nonempty, output_size, pair


def _tap(a, i, j, Ho, Wo, stride):
    """a[..., s*h + i, s*w + j] for h < Ho, w < Wo."""
    sh, sw = stride
    return a[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]


def _pad(xp, x, padding, value):
    ph, pw = padding
    if ph == pw == 0:
        return x
    N, C, H, W = x.shape
    out = xp.full((N, C, H + 2 * ph, W + 2 * pw), value, x.dtype)
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


class _PoolFunction(Function):
    """k x k pooling; the cpu and gpu tiers share one xp implementation (forward_xp/backward_xp),
    the reference tier calls the pair reference_ops = (forward, backward) of ops/reference.py."""

    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_xp", "backward_xp"),
             "gpu": ("forward_xp", "backward_xp")}
    reference_ops = None

    def __init__(self, kernel, stride, padding):
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward_reference(self, xp, x):
        self.x = x
        return self.reference_ops[0](x, self.kernel, self.stride, self.padding)

    def backward_reference(self, xp, gy):
        return self.reference_ops[1](self.x, gy, self.kernel, self.stride, self.padding)

    def out_size(self, shape):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return output_size(shape[2], kh, sh, ph), output_size(shape[3], kw, sw, pw)

    def forward_xp(self, xp, x):  # each pooling class writes its own
        raise NotImplementedError

    def backward_xp(self, xp, gy):
        raise NotImplementedError


class MaxPool2dFunction(_PoolFunction):
    reference_ops = reference.max_pool2d, reference.max_pool2d_backward

    def forward_xp(self, xp, x):
        Ho, Wo = self.out_size(x.shape)
        self.x_shape, (kh, kw) = x.shape, self.kernel
        xpad = _pad(xp, x, self.padding, -xp.inf)
        y = argmax = None
        for t in range(kh * kw):
            v = _tap(xpad, t // kw, t % kw, Ho, Wo, self.stride)
            if y is None:
                # the winning tap's index: int8 is enough (and 4x smaller) up to 127 taps
                y, argmax = v.copy(), xp.zeros(v.shape, xp.int8 if kh * kw <= 127 else xp.int32)
            else:
                # ties keep the first tap, as a sequential scan would; a NaN wins and then stays
                # (y != y is NaN), so NaN propagates as in NumPy's max. xp.where, not a masked
                # assignment: no scan and no device->host sync per tap on the GPU
                better = (v > y) | ((v != v) & (y == y))
                y = xp.where(better, v, y)
                argmax = xp.where(better, argmax.dtype.type(t), argmax)
        self.argmax = argmax
        return y

    def backward_xp(self, xp, gy):
        (kh, kw), (ph, pw) = self.kernel, self.padding
        N, C, H, W = self.x_shape
        gx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), gy.dtype)
        for t in range(kh * kw):
            _tap(gx, t // kw, t % kw, gy.shape[2], gy.shape[3], self.stride)[...] += gy * (self.argmax == t)
        return gx[:, :, ph:ph + H, pw:pw + W]


class AvgPool2dFunction(_PoolFunction):
    """Average over the window, zero padding counted (MXNet's default, count_include_pad)."""

    reference_ops = reference.avg_pool2d, reference.avg_pool2d_backward

    def forward_xp(self, xp, x):
        Ho, Wo = self.out_size(x.shape)
        self.x_shape, (kh, kw) = x.shape, self.kernel
        xpad = _pad(xp, x, self.padding, 0)
        y = xp.zeros((x.shape[0], x.shape[1], Ho, Wo), x.dtype)
        for t in range(kh * kw):
            y += _tap(xpad, t // kw, t % kw, Ho, Wo, self.stride)
        return y * (1.0 / (kh * kw))

    def backward_xp(self, xp, gy):
        (kh, kw), (ph, pw) = self.kernel, self.padding
        N, C, H, W = self.x_shape
        gx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), gy.dtype)
        g = gy * (1.0 / (kh * kw))
        for t in range(kh * kw):
            _tap(gx, t // kw, t % kw, gy.shape[2], gy.shape[3], self.stride)[...] += g
        return gx[:, :, ph:ph + H, pw:pw + W]


class GlobalAvgPool2dFunction(Function):
    """One tier: the reference tier's array code (reference.global_avg_pool2d) serves every device."""

    def forward(self, xp, x):
        self.x_shape = x.shape
        return reference.global_avg_pool2d(x)

    def backward(self, xp, gy):
        return reference.global_avg_pool2d_backward(self.x_shape, gy, xp)


def _check_input(op, x):
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    check_nonempty(op, "input", x.shape)
    check_float(op, "input", x.dtype)


def _pool_args(op, x, kernel_size, stride, padding):
    _check_input(op, x)
    kernel = pair(kernel_size, op, "kernel_size")
    stride = kernel if stride is None else pair(stride, op, "stride")
    padding = pair(padding, op, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: kernel_size and stride must be >= 1 and padding >= 0, got "
                         f"{kernel}, {stride}, {padding}")
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel {kernel}")
    Ho = output_size(x.shape[2], kernel[0], stride[0], padding[0])
    Wo = output_size(x.shape[3], kernel[1], stride[1], padding[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: window {kernel} does not fit input shape {x.shape} with padding {padding}")
    return kernel, stride, padding


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> (N, C, Ho, Wo), the maximum of each window (padding never wins, NaN does)."""
    return MaxPool2dFunction(*_pool_args("max_pool2d", x, kernel_size, stride, padding)).apply(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> (N, C, Ho, Wo), the mean of each window (zero padding included)."""
    return AvgPool2dFunction(*_pool_args("avg_pool2d", x, kernel_size, stride, padding)).apply(x)


def global_avg_pool2d(x):
    """x (N, C, H, W) -> (N, C), the mean over H and W."""
    _check_input("global_avg_pool2d", x)
    return GlobalAvgPool2dFunction().apply(x)
