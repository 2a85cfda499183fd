"""Fully connected layer: y = x W^T + b (one tier: reference.linear is array code for every xp)."""
from ..autograd import Function
from . import reference
from .checks import check_float, check_nonempty


class LinearFunction(Function):
    def forward(self, xp, x, W, b=None):
        self.x, self.W = x, W
        return reference.linear(x, W, b)

    def backward(self, xp, gy):
        return reference.linear_backward(self.x, self.W, gy)


class LinearNoBiasFunction(LinearFunction):
    def backward(self, xp, gy):
        return reference.linear_backward(self.x, self.W, gy)[:2]


def linear(x, W, b=None):
    """x (N, in), W (out, in), b (out,) or None -> (N, out). All three of one floating dtype."""
    if x.ndim != 2:
        raise ValueError(f"linear: input must be 2-D (N, in_features), got shape {x.shape}; "
                         "flatten it first")
    check_nonempty("linear", "input", x.shape)
    if W.ndim != 2 or W.shape[1] != x.shape[1]:
        raise ValueError(f"linear: weight shape {W.shape} does not fit input shape {x.shape} "
                         f"(expected (out_features, {x.shape[1]}))")
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"linear: bias shape {b.shape} != (out_features,) = ({W.shape[0]},)")
    check_float("linear", "input", x.dtype)
    # refuse mixed precisions as conv2d does: NumPy would silently promote float32 to float64
    if x.dtype != W.dtype:
        raise ValueError(f"linear: input dtype {x.dtype} != weight dtype {W.dtype}")
    if b is None:
        return LinearNoBiasFunction().apply(x, W)
    if b.dtype != x.dtype:
        raise ValueError(f"linear: bias dtype {b.dtype} != input dtype {x.dtype}")
    return LinearFunction().apply(x, W, b)
