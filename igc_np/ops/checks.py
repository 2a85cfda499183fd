"""Argument helpers shared by the public ops (F.*) and the layers: one `pair`, one `divisors`.

Validation happens once, at the public API (the F.* functions in ops/*.py); the Functions and the
engines behind them trust their arguments.
"""
import numpy as np


def pair(value, op, name):
    """An int or a pair of ints -> a pair of Python ints (ValueError naming op and argument otherwise)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        a, b = value
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (a, b)):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    return int(a), int(b)


def divisors(n):
    """The divisors of n, ascending: what an error lists when a partition count does not divide."""
    return [d for d in range(1, n + 1) if n % d == 0]


def output_size(size, k, stride, pad):
    """Output length of a window of k taps moved by `stride` over `size` + 2*`pad` values."""
    return (size + 2 * pad - k) // stride + 1
