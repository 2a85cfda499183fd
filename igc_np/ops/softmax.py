"""Softmax and log-softmax along one axis (the classes of (N, K) logits by default).

    softmax(z)_i     = exp(z_i - max z) / sum_j exp(z_j - max z)    (the shift keeps exp finite)
    log_softmax(z)_i = z_i - max z - log sum_j exp(z_j - max z)

Backward, with y = softmax(z):   softmax:      gz = y * (gy - sum_j gy_j y_j)
                                 log_softmax:  gz = gy - y * sum_j gy_j
"""
from ..autograd import Function


def _log_softmax(xp, z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, xp, z):
        self.y = xp.exp(_log_softmax(xp, z, self.axis))
        return self.y

    def backward(self, xp, gy):
        return self.y * (gy - (gy * self.y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, xp, z):
        self.logy = _log_softmax(xp, z, self.axis)
        return self.logy

    def backward(self, xp, gy):
        return gy - xp.exp(self.logy) * gy.sum(axis=self.axis, keepdims=True)


def _axis(op, x, axis, dim):
    if dim is not None:
        if axis != -1:
            raise TypeError(f"{op}: give axis= (NumPy) or dim= (PyTorch), not both")
        axis = dim
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} out of range for a tensor of shape {x.shape}")
    return axis


def softmax(x, axis=-1, *, dim=None):
    """Probabilities along `axis` (default the last: the classes of (N, K) logits); dim= as PyTorch."""
    return Softmax(_axis("softmax", x, axis, dim)).apply(x)


def log_softmax(x, axis=-1, *, dim=None):
    """log(softmax(x)) along `axis`, computed stably (never log of an underflowed 0)."""
    return LogSoftmax(_axis("log_softmax", x, axis, dim)).apply(x)
