"""ReLU: y = max(x, 0), gx = gy * (x > 0)."""
import numpy as np

from ..autograd import Function
from . import parallel, reference


class ReLUFunction(Function):
    def forward_reference(self, x):
        self.x = x
        return reference.relu(x)

    def backward_reference(self, gy):
        return reference.relu_backward(self.x, gy)

    def forward_cpu(self, x):
        # one threaded pass; empty_like keeps x's memory layout (ops/layout.py)
        self.y = parallel.elementwise(lambda o, a: np.maximum(a, 0, out=o), np.empty_like(x), x)
        return self.y

    def backward_cpu(self, gy):
        return parallel.elementwise(lambda o, g, y: np.multiply(g, y > 0, out=o), np.empty_like(self.y),
                                    gy, self.y)

    def forward_gpu(self, xp, x):
        self.y = xp.maximum(x, 0)
        return self.y

    def backward_gpu(self, xp, gy):
        return gy * (self.y > 0)  # y > 0 exactly where x > 0


def relu(x):
    """max(x, 0) elementwise."""
    return ReLUFunction().apply(x)
