"""Elementwise arithmetic with NumPy broadcasting, reductions and shape ops.

Each op is a Function; the operators of ``Tensor`` (``+ - * / ** @``, ``reshape``, ``sum``, ...)
are attached at the bottom of this file.
"""
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
    return Transpose(axes).apply(self)


def _mean(self, axis=None, keepdims=False):
    s = Sum(axis, keepdims).apply(self)
    return s * (s.size / self.size)  # 1 / (number of elements averaged)


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
Tensor.__pow__ = lambda a, p: Pow(p).apply(a)
Tensor.exp = lambda a: Exp().apply(a)
Tensor.log = lambda a: Log().apply(a)
Tensor.reshape = _reshape
Tensor.flatten = lambda a, start_dim=1: Reshape(a.shape[:start_dim] + (-1,)).apply(a)
Tensor.transpose = _transpose
Tensor.T = property(lambda a: Transpose(tuple(reversed(range(a.ndim)))).apply(a))
Tensor.sum = lambda a, axis=None, keepdims=False: Sum(axis, keepdims).apply(a)
Tensor.mean = _mean
