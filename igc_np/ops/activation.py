"""ReLU."""
import numpy as np

from ..autograd import Function
from . import parallel


class ReLU(Function):
    def forward(self, xp, x):
        if xp is np:  # one pass, threaded; empty_like keeps x's memory layout
            self.y = parallel.elementwise(lambda o, a: np.maximum(a, 0, out=o), np.empty_like(x), x)
        else:
            self.y = xp.maximum(x, 0)
        return self.y

    def backward(self, xp, gy):
        if xp is np:
            return parallel.elementwise(lambda o, g, y: np.multiply(g, y > 0, out=o), np.empty_like(self.y), gy, self.y)
        return gy * (self.y > 0)


def relu(x):
    """max(x, 0) elementwise."""
    return ReLU().apply(x)
