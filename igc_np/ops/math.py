"""Elementwise arithmetic with NumPy broadcasting, reductions and shape ops.

Each op is a Function; the operators of ``Tensor`` (``+ - * / ** @``, ``reshape``, ``sum``, ...)
are attached at the bottom of this file. Reductions take NumPy's ``axis=``/``keepdims=`` or
PyTorch's ``dim=``/``keepdim=``; comparisons return arrays (no gradient).
"""
import operator
from collections import namedtuple

import numpy as np

from ..autograd import Function, Tensor, as_tensor


def sum_to(xp, g, shape):
    """Sum a broadcast gradient `g` back down to `shape` (the inverse of broadcasting)."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def check_binary(op, a, b):
    """Operands must broadcast and, when both are floating point, share a dtype (float32 training
    must not silently become float64 because one operand was)."""
    if a.dtype != b.dtype and "f" in (a.dtype.kind, b.dtype.kind):
        raise ValueError(f"{op}: operand dtypes differ, {a.dtype} (shape {a.shape}) and {b.dtype} "
                         f"(shape {b.shape}); make them the same")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None


class Add(Function):
    def forward(self, xp, a, b):
        check_binary("add", a, b)
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, xp, gy):
        return sum_to(xp, gy, self.shapes[0]), sum_to(xp, gy, self.shapes[1])


class Sub(Function):
    def forward(self, xp, a, b):
        check_binary("sub", a, b)
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, xp, gy):
        return sum_to(xp, gy, self.shapes[0]), sum_to(xp, -gy, self.shapes[1])


class Mul(Function):
    def forward(self, xp, a, b):
        check_binary("mul", a, b)
        self.a, self.b = a, b
        return a * b

    def backward(self, xp, gy):
        return sum_to(xp, gy * self.b, self.a.shape), sum_to(xp, gy * self.a, self.b.shape)


class Div(Function):
    def forward(self, xp, a, b):
        check_binary("div", a, b)
        self.a, self.b = a, b
        return a / b

    def backward(self, xp, gy):
        ga = gy / self.b
        return sum_to(xp, ga, self.a.shape), sum_to(xp, -ga * self.a / self.b, self.b.shape)


class Clone(Function):
    """A copy of the data (in the same memory order) that stays in the graph: gx = gy."""

    def forward(self, xp, a):
        return a.copy(order="K")

    def backward(self, xp, gy):
        return gy


class Cast(Function):
    """a in another floating point dtype (Tensor.to(dtype), .float(), .double()): gx = gy in a's dtype."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, xp, a):
        self.input_dtype = a.dtype
        return a.astype(self.dtype)

    def backward(self, xp, gy):
        return gy.astype(self.input_dtype)


def _cast(self, dtype):
    """Tensor.to(dtype=...): a float cast stays in the graph (as PyTorch's); to an integer or bool
    dtype the result has no gradient (a constant, as in PyTorch)."""
    dtype = np.dtype(dtype)
    if dtype == self.dtype:
        return self
    if dtype == np.float16:  # say it here, naming the call, rather than from deep in Tensor()
        raise TypeError(f"Tensor.to(float16) / .half(): float16 is not supported (igc_np's ops accumulate "
                        "in the input's precision and give wrong results in float16); use float32: .float()")
    if dtype.kind != "f":
        return Tensor(self.data.astype(dtype), device=self.device)
    return Cast(dtype).apply(self)


def _flatten(self, start_dim=0, end_dim=-1):
    """Axes start_dim..end_dim merged into one (PyTorch's Tensor.flatten: all axes by default)."""
    if self.ndim == 0:
        return self.reshape(1)
    start, end = start_dim % self.ndim, end_dim % self.ndim
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {self.shape}")
    return Reshape(self.shape[:start] + (-1,) + self.shape[end + 1:]).apply(self)


class Neg(Function):
    def forward(self, xp, a):
        return -a

    def backward(self, xp, gy):
        return -gy


class Pow(Function):
    """a ** p for a constant Python number p."""

    def __init__(self, p):
        self.p = p

    def forward(self, xp, a):
        self.a = a
        return a ** self.p

    def backward(self, xp, gy):
        return gy * (self.p * self.a ** (self.p - 1))


class Exp(Function):
    def forward(self, xp, a):
        self.y = xp.exp(a)
        return self.y

    def backward(self, xp, gy):
        return gy * self.y


class Log(Function):
    def forward(self, xp, a):
        self.a = a
        return xp.log(a)

    def backward(self, xp, gy):
        return gy / self.a


class MatMul(Function):
    """(..., n, k) @ (..., k, m) for 2-D operands."""

    def forward(self, xp, a, b):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"matmul: only 2-D operands are supported, got {a.shape} @ {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul: inner sizes differ, {a.shape} @ {b.shape}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, xp, gy):
        return gy @ self.b.T, self.a.T @ gy


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, xp, a):
        self.shape = a.shape
        return a.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, xp, gy):
        if self.axis is not None and not self.keepdims:
            axes = (self.axis,) if np.isscalar(self.axis) else self.axis
            axes = sorted(ax % len(self.shape) for ax in axes)
            for ax in axes:
                gy = xp.expand_dims(gy, ax)
        return xp.broadcast_to(gy, self.shape).copy()


class Max(Function):
    """Maximum (or, with smallest=True, minimum) over `axis` (None: all elements).

    Gradient policy at ties: split equally among the tied elements (each gets gy / count), as the
    subgradient that treats them symmetrically; PyTorch's ``amax`` does the same (its ``max(dim)``
    gives everything to one index). Without ties the gradient is gy at the arg-max.
    """

    def __init__(self, axis=None, keepdims=False, smallest=False):
        self.axis, self.keepdims, self.smallest = axis, keepdims, smallest

    def forward(self, xp, a):
        if a.size == 0:
            raise ValueError(f"{'min' if self.smallest else 'max'}: empty tensor of shape {a.shape}")
        y = a.min(axis=self.axis, keepdims=True) if self.smallest else a.max(axis=self.axis, keepdims=True)
        self.mask = a == y
        self.count = self.mask.sum(axis=self.axis, keepdims=True)
        self.keep_shape = y.shape
        return y if self.keepdims else y.reshape(_reduced_shape(a.shape, self.axis))

    def backward(self, xp, gy):
        return self.mask * (gy.reshape(self.keep_shape) / self.count)


def _reduced_shape(shape, axis):
    if axis is None:
        return ()
    axes = {ax % len(shape) for ax in ((axis,) if np.isscalar(axis) else axis)}
    return tuple(n for i, n in enumerate(shape) if i not in axes)


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, xp, a):
        self.in_shape = a.shape
        try:
            return a.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {a.shape} ({a.size} elements) to {self.shape}") from None

    def backward(self, xp, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, xp, a):
        return a.transpose(self.axes)

    def backward(self, xp, gy):
        return gy.transpose(np.argsort(self.axes))


# ---- Tensor methods and operators --------------------------------------------------------------
def _binary(cls):
    return lambda a, b: cls().apply(a, b)


def _reflected(cls):
    return lambda a, b: cls().apply(as_tensor(b, a), a)


def _reshape(self, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape(shape).apply(self)


def _transpose(self, *axes):
    if not axes:
        axes = tuple(reversed(range(self.ndim)))
    elif len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    as_ints = [int(a) % self.ndim if isinstance(a, (int, np.integer)) and -self.ndim <= a < self.ndim
               else None for a in axes]
    if sorted(as_ints, key=lambda a: -1 if a is None else a) != list(range(self.ndim)):
        hint = (f"; to swap two axes (PyTorch's transpose(d0, d1)) use x.swapaxes{tuple(axes)}"
                if len(axes) == 2 and self.ndim != 2 else "")
        raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the {self.ndim} axes "
                         f"of shape {self.shape} (NumPy's rule: name every axis once){hint}")
    return Transpose(tuple(as_ints)).apply(self)


def _swapaxes(self, axis1, axis2):
    """x.swapaxes(a, b): axes a and b exchanged (PyTorch's transpose(a, b))."""
    axes = list(range(self.ndim))
    try:
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    except (IndexError, TypeError):
        raise ValueError(f"swapaxes: axes ({axis1!r}, {axis2!r}) must be ints in [-{self.ndim}, "
                         f"{self.ndim}) for shape {self.shape}") from None
    return Transpose(tuple(axes)).apply(self)


def _reduction_args(op, axis, dim, keepdims, keepdim, shape):
    """NumPy's axis/keepdims or PyTorch's dim/keepdim, not both; each axis an int within `shape`."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: give axis= (NumPy) or dim= (PyTorch), not both")
        axis = dim
    if isinstance(axis, list):
        axis = tuple(axis)
    for a in (() if axis is None else axis if isinstance(axis, tuple) else (axis,)):
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -len(shape) <= a < len(shape):
            raise ValueError(f"{op}: axis/dim {a!r} is not an axis of shape {tuple(shape)} (ints in "
                             f"[-{len(shape)}, {len(shape)}))")
    return axis, bool(keepdims or keepdim)


def _sum(self, axis=None, keepdims=False, *, dim=None, keepdim=False):
    """Sum over axis (int, tuple or None for all); dim=/keepdim= are accepted as aliases."""
    axis, keepdims = _reduction_args("sum", axis, dim, keepdims, keepdim, self.shape)
    return Sum(axis, keepdims).apply(self)


def _mean(self, axis=None, keepdims=False, *, dim=None, keepdim=False):
    axis, keepdims = _reduction_args("mean", axis, dim, keepdims, keepdim, self.shape)
    s = Sum(axis, keepdims).apply(self)
    return s * (s.size / self.size)  # 1 / (number of elements averaged)


# what x.max(dim=d) returns, as in PyTorch: values (a Tensor in the graph) and indices (an array)
MaxResult = namedtuple("MaxResult", ["values", "indices"])


def _extreme(smallest):
    name = "min" if smallest else "max"

    def extreme(self, axis=None, keepdims=False, *, dim=None, keepdim=False):
        values = Max(*_reduction_args(name, axis, dim, keepdims, keepdim, self.shape), smallest).apply(self)
        if dim is None:
            return values  # NumPy's form: the values
        if not isinstance(dim, (int, np.integer)):
            raise TypeError(f"{name}(dim=...): dim must be one int, as in PyTorch, got {dim!r}; "
                            "axis= takes a tuple")
        return MaxResult(values, _arg(self, dim, keepdim, smallest))

    extreme.__doc__ = (f"The {name} over axis (None: all). With axis= the values, as NumPy; with dim= "
                       f"PyTorch's (values, indices). Ties split the gradient equally (see Max).")
    return extreme


def _arg(self, axis, keepdims, smallest):
    data = self.data
    i = data.argmin(axis=axis) if smallest else data.argmax(axis=axis)
    if keepdims:
        i = i.reshape((1,) * data.ndim if axis is None else _keep_shape(data.shape, axis))
    return i


def _keep_shape(shape, axis):
    axis = axis % len(shape)
    return tuple(1 if i == axis else n for i, n in enumerate(shape))


def _argextreme(smallest):
    def argextreme(self, axis=None, keepdims=False, *, dim=None, keepdim=False):
        axis, keepdims = _reduction_args("argmin" if smallest else "argmax", axis, dim, keepdims,
                                        keepdim, self.shape)
        return _arg(self, axis, keepdims, smallest)

    argextreme.__doc__ = (f"Index of the {'minimum' if smallest else 'maximum'} (first at ties) along "
                          "axis/dim (None: of the flattened data): an integer array, no graph.")
    return argextreme


def _squeeze(self, dim=None):
    """Drop size-1 dimensions (all, or only `dim`)."""
    if dim is None:
        shape = tuple(n for n in self.shape if n != 1)
    else:
        if self.shape[dim] != 1:
            raise ValueError(f"squeeze: dimension {dim} of shape {self.shape} has size {self.shape[dim]}, not 1")
        shape = tuple(n for i, n in enumerate(self.shape) if i != dim % self.ndim)
    return Reshape(shape).apply(self)


def _unsqueeze(self, dim):
    """Insert a size-1 dimension at `dim` (negative counts from the end of the result)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -self.ndim - 1 <= dim <= self.ndim:
        raise ValueError(f"unsqueeze: dim {dim!r} is out of range for shape {self.shape} (the result has "
                         f"{self.ndim + 1} axes: dim in [-{self.ndim + 1}, {self.ndim}])")
    dim = dim % (self.ndim + 1)
    return Reshape(self.shape[:dim] + (1,) + self.shape[dim:]).apply(self)


def _compare(op):
    """Comparisons act on the data: a boolean array on the tensor's device, no graph."""
    return lambda a, b: op(a.data, b.data if isinstance(b, Tensor) else b)


Tensor.__add__ = _binary(Add)
Tensor.__radd__ = _reflected(Add)
Tensor.__sub__ = _binary(Sub)
Tensor.__rsub__ = _reflected(Sub)
Tensor.__mul__ = _binary(Mul)
Tensor.__rmul__ = _reflected(Mul)
Tensor.__truediv__ = _binary(Div)
Tensor.__rtruediv__ = _reflected(Div)
Tensor.__matmul__ = _binary(MatMul)
Tensor.__neg__ = lambda a: Neg().apply(a)
Tensor.clone = lambda a: Clone().apply(a)
Tensor.clone.__doc__ = "A copy of the data with the gradient flowing back to a (PyTorch's clone)."
Tensor.__pow__ = lambda a, p: Pow(p).apply(a)
Tensor.exp = lambda a: Exp().apply(a)
Tensor.log = lambda a: Log().apply(a)
Tensor.reshape = _reshape
Tensor.flatten = _flatten
Tensor._cast = _cast  # Tensor.to(dtype=...) (autograd.py) calls it
Tensor.float = lambda a: _cast(a, np.float32)
Tensor.double = lambda a: _cast(a, np.float64)
Tensor.half = lambda a: _cast(a, np.float16)  # refused, with the alternative
Tensor.transpose = _transpose
Tensor.permute = _transpose  # PyTorch's name for a full reordering of the axes
Tensor.swapaxes = _swapaxes
Tensor.T = property(lambda a: Transpose(tuple(reversed(range(a.ndim)))).apply(a))
Tensor.view = _reshape  # PyTorch's name; as reshape, it never fails on a non-contiguous input
Tensor.squeeze = _squeeze
Tensor.unsqueeze = _unsqueeze
Tensor.sum = _sum
Tensor.mean = _mean
Tensor.max = _extreme(smallest=False)
Tensor.min = _extreme(smallest=True)
Tensor.argmax = _argextreme(smallest=False)
Tensor.argmin = _argextreme(smallest=True)
Tensor.__lt__ = _compare(operator.lt)
Tensor.__le__ = _compare(operator.le)
Tensor.__gt__ = _compare(operator.gt)
Tensor.__ge__ = _compare(operator.ge)
Tensor.__eq__ = _compare(operator.eq)
Tensor.__ne__ = _compare(operator.ne)
