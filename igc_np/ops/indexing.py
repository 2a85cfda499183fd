"""Indexing and slicing: ``x[0]``, ``x[:, 1:3]``, ``x[..., None]``, ``x[idx]``, ``x[mask]``.

The forward pass is NumPy's (or CuPy's) own indexing, so every key NumPy accepts works the same
here. The backward pass scatters the output gradient into zeros of the input's shape. With an
integer index array an element may be picked several times (``x[[0, 0, 1]]``); its gradient is then
the *sum* over its picks, which ``add.at`` computes (a plain ``gx[key] += gy`` would keep only one).
Basic keys (ints, slices, None, ...) never pick an element twice and take a plain assignment.
"""
import numpy as np

from .. import backend
from ..autograd import Function, Tensor


def _unwrap(key):
    """Tensors inside a key become their arrays (an index carries no gradient)."""
    if isinstance(key, tuple):
        return tuple(_unwrap(k) for k in key)
    if isinstance(key, Tensor):
        return key.data
    if isinstance(key, list):  # [0, 2] and [True, False] index as arrays, as in NumPy
        return np.asarray(key) if key else np.zeros(0, np.intp)
    return key


def _is_basic(key):
    """True for ints, slices, None and Ellipsis only: then no element is picked twice."""
    parts = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice))
               and not isinstance(k, bool) for k in parts)


class GetItem(Function):
    """y = x[key]; gx = zeros like x with gy added at key (repeated picks accumulate)."""

    def __init__(self, key):
        self.key = key

    def forward(self, xp, x):
        self.in_shape = x.shape
        try:
            return x[self.key]
        except IndexError as e:
            raise IndexError(f"Tensor[{_describe(self.key)}] on shape {x.shape}: {e}") from None

    def backward(self, xp, gy):
        gx = xp.zeros(self.in_shape, gy.dtype)
        if _is_basic(self.key):
            gx[self.key] = gy
        else:
            scatter_add(xp, gx, self.key, gy)
        return gx


def scatter_add(xp, gx, key, gy):
    """gx[key] += gy, every repeated pick counted (NumPy's add.at; CuPy >= 13 has it too)."""
    at = getattr(xp.add, "at", None)
    if at is not None:
        at(gx, key, gy)
        return
    # an older CuPy: index an array of flat positions with the same key, then sum per position
    pos = xp.arange(gx.size).reshape(gx.shape)[key]
    sums = xp.bincount(pos.ravel(), weights=gy.ravel().astype(xp.float64), minlength=gx.size)
    gx += sums.reshape(gx.shape).astype(gx.dtype)


def _describe(key):
    parts = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"<{k.dtype} array {k.shape}>" if hasattr(k, "shape") else repr(k) for k in parts)


def getitem(x, key):
    """x[key] for any NumPy key; gradients flow to x (not to an index Tensor)."""
    key = _unwrap(key)
    if x.device == "cuda":  # CuPy indexes with device arrays
        key = tuple(backend.to_device(k, "cuda") if isinstance(k, np.ndarray) else k
                    for k in (key if isinstance(key, tuple) else (key,)))
    return GetItem(key).apply(x)


Tensor.__getitem__ = getitem
