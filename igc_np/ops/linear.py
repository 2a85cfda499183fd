"""Fully connected layer: y = x W^T + b."""
from ..autograd import Function


class Linear(Function):
    def forward(self, xp, x, W, b=None):
        self.x, self.W = x, W
        y = x @ W.T
        return y if b is None else y + b

    def backward(self, xp, gy):
        gx, gW = gy @ self.W, gy.T @ self.x
        return gx, gW, gy.sum(axis=0)


def linear(x, W, b=None):
    """x (N, in), W (out, in), b (out,) or None -> (N, out)."""
    if x.ndim != 2:
        raise ValueError(f"linear: input must be 2-D (N, in_features), got shape {x.shape}; "
                         "flatten it first")
    if W.ndim != 2 or W.shape[1] != x.shape[1]:
        raise ValueError(f"linear: weight shape {W.shape} does not fit input shape {x.shape} "
                         f"(expected (out_features, {x.shape[1]}))")
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"linear: bias shape {b.shape} != (out_features,) = ({W.shape[0]},)")
    if x.dtype != W.dtype:
        raise ValueError(f"linear: input dtype {x.dtype} != weight dtype {W.dtype}")
    if b is None:
        return _LinearNoBias().apply(x, W)
    return Linear().apply(x, W, b)


class _LinearNoBias(Linear):
    def backward(self, xp, gy):
        return gy @ self.W, gy.T @ self.x
