"""ReLU: y = max(x, 0), gx = gy * (x > 0)."""
import numpy as np

from ..autograd import Function
from . import parallel, reference
from .layout import empty_keeping_layout


class ReLUFunction(Function):
    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def forward_reference(self, xp, x):
        self.x = x
        return reference.relu(x)

    def backward_reference(self, xp, gy):
        return reference.relu_backward(self.x, gy)

    def forward_cpu(self, xp, x):
        # one threaded pass, the output in x's memory layout (ops/layout.py)
        self.y = parallel.elementwise(lambda o, a: np.maximum(a, 0, out=o), empty_keeping_layout(x), x)
        return self.y

    def backward_cpu(self, xp, gy):
        return parallel.elementwise(lambda o, g, y: np.multiply(g, y > 0, out=o),
                                    empty_keeping_layout(self.y), gy, self.y)

    def forward_gpu(self, xp, x):
        self.y = xp.maximum(x, 0)
        return self.y

    def backward_gpu(self, xp, gy):
        return gy * (self.y > 0)  # y > 0 exactly where x > 0


def relu(x):
    """max(x, 0) elementwise."""
    return ReLUFunction().apply(x)
