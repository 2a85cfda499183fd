"""Argument helpers shared by the public ops (F.*) and the layers: `pair`, `conv_window`, `divisors`.

Validation happens once, at the public API (the F.* functions in ops/*.py); the Functions and the
engines behind them trust their arguments.
"""
import numpy as np


class ArgumentError(TypeError, ValueError):
    """A size argument that is neither an int nor a pair of ints: a TypeError (the kind of value is
    wrong) that is also a ValueError (what F.* raises for every bad argument), as NumPy's AxisError
    is both a ValueError and an IndexError; `except` either one catches it."""


def pair(value, op, name):
    """An int or a pair of ints -> a pair of Python ints (ArgumentError naming op and argument otherwise)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        a, b = value
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (a, b)):
            raise TypeError
    except (TypeError, ValueError):
        raise ArgumentError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    return int(a), int(b)


PADDING_MODES = ("same", "valid")


def conv_window(op, kernel_size, stride=1, padding=0):
    """Normalise a conv's window arguments as PyTorch's Conv2d takes them -> (kernel, stride, padding).

    kernel_size, stride: an int or a pair of ints (h, w) -> pairs of Python ints (>= 1).
    padding: an int or a pair (h, w) pads both sides alike; 'valid' is no padding; 'same' keeps
    H x W (stride 1 only, as PyTorch): k - 1 zeros in all, the odd one of an even kernel at the
    bottom / right, as PyTorch puts it. -> ((top, bottom), (left, right)).
    Errors name `op` (the layer or function) and the argument. F.conv2d and nn.Conv2d use it.
    """
    given_stride = stride
    kernel = pair(kernel_size, op, "kernel_size")
    stride = pair(stride, op, "stride")
    for name, value, given in (("kernel_size", kernel, kernel_size), ("stride", stride, given_stride)):
        if min(value) < 1:
            raise ValueError(f"{op}: {name} must be >= 1, got {given!r}")
    if isinstance(padding, str):
        if padding not in PADDING_MODES:
            raise ValueError(f"{op}: padding={padding!r} is not one of {PADDING_MODES} (or an int or a "
                             "pair of ints)")
        if padding == "valid":
            return kernel, stride, ((0, 0), (0, 0))
        if stride != (1, 1):
            raise ValueError(f"{op}: padding='same' needs stride 1 (as in PyTorch), got stride={stride}; "
                             f"give the padding as numbers, e.g. padding={kernel[0] // 2}")
        return kernel, stride, tuple((t // 2, t - t // 2) for t in (kernel[0] - 1, kernel[1] - 1))
    ph, pw = pair(padding, op, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding!r}")
    return kernel, stride, ((ph, ph), (pw, pw))


def divisors(n):
    """The divisors of n, ascending: what an error lists when a partition count does not divide."""
    return [d for d in range(1, n + 1) if n % d == 0]


def output_size(size, k, stride, pad):
    """Output length of a window of k taps moved by `stride` over `size` + 2*`pad` values."""
    return (size + 2 * pad - k) // stride + 1


def check_nonempty(op, name, shape):
    """Refuse an array with a zero-length axis (an N=0 batch, C=0 channels) before any op runs on it."""
    if 0 in tuple(shape):
        raise ValueError(f"{op}: {name} has an empty axis, shape {tuple(shape)} (an N=0 batch or a "
                         "zero-size dimension)")


def check_float(op, name, dtype):
    """Refuse integer and boolean arrays: gradients need floating point, and int sums overflow."""
    if dtype.kind != "f":
        raise ValueError(f"{op}: {name} must be floating point (float32 or float64), got dtype {dtype}")
