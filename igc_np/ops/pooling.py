"""Max and average pooling over k x k windows, and global average pooling.

Windows are taken as k*k strided slices of the (padded) input, one per kernel tap, so every
pass is a whole-array operation that works for NumPy and CuPy and any memory layout.
"""
from ..autograd import Function
from .conv import output_size, pair


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


class _Pool(Function):
    def __init__(self, kernel, stride, padding):
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def out_size(self, shape):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return output_size(shape[2], kh, sh, ph), output_size(shape[3], kw, sw, pw)


class MaxPool2d(_Pool):
    def forward(self, xp, x):
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
                better = v > y  # ties keep the first tap, as a sequential scan would
                y = xp.where(better, v, y)
                argmax[better] = t
        self.argmax = argmax
        return y

    def backward(self, xp, gy):
        (kh, kw), (ph, pw) = self.kernel, self.padding
        N, C, H, W = self.x_shape
        gx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), gy.dtype)
        for t in range(kh * kw):
            _tap(gx, t // kw, t % kw, gy.shape[2], gy.shape[3], self.stride)[...] += gy * (self.argmax == t)
        return gx[:, :, ph:ph + H, pw:pw + W]


class AvgPool2d(_Pool):
    """Average over the window, zero padding counted (MXNet's default, count_include_pad)."""

    def forward(self, xp, x):
        Ho, Wo = self.out_size(x.shape)
        self.x_shape, (kh, kw) = x.shape, self.kernel
        xpad = _pad(xp, x, self.padding, 0)
        y = xp.zeros((x.shape[0], x.shape[1], Ho, Wo), x.dtype)
        for t in range(kh * kw):
            y += _tap(xpad, t // kw, t % kw, Ho, Wo, self.stride)
        return y * (1.0 / (kh * kw))

    def backward(self, xp, gy):
        (kh, kw), (ph, pw) = self.kernel, self.padding
        N, C, H, W = self.x_shape
        gx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), gy.dtype)
        g = gy * (1.0 / (kh * kw))
        for t in range(kh * kw):
            _tap(gx, t // kw, t % kw, gy.shape[2], gy.shape[3], self.stride)[...] += g
        return gx[:, :, ph:ph + H, pw:pw + W]


class GlobalAvgPool2d(Function):
    def forward(self, xp, x):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, xp, gy):
        N, C, H, W = self.x_shape
        return xp.broadcast_to((gy * (1.0 / (H * W)))[:, :, None, None], self.x_shape).copy()


def _pool_args(op, x, kernel_size, stride, padding):
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape}")
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
    """x (N, C, H, W) -> (N, C, Ho, Wo), the maximum of each window (padding never wins)."""
    return MaxPool2d(*_pool_args("max_pool2d", x, kernel_size, stride, padding)).apply(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> (N, C, Ho, Wo), the mean of each window (zero padding included)."""
    return AvgPool2d(*_pool_args("avg_pool2d", x, kernel_size, stride, padding)).apply(x)


def global_avg_pool2d(x):
    """x (N, C, H, W) -> (N, C), the mean over H and W."""
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d: input must be 4-D (N, C, H, W), got shape {x.shape}")
    return GlobalAvgPool2d().apply(x)
