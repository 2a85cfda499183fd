"""BatchNorm -> (+ residual) -> ReLU as one op: the networks' ConvBN tail and residual join.

    batch_norm_relu(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                    relu=True, residual=None)  ->  [relu](batch_norm(x) [+ residual])

x, residual (N, C, H, W) Tensors; gamma, beta (C,) Tensors; running statistics (C,) arrays,
updated in place in training mode (as ops/normalization.py's batch_norm).

On "cpu" it is the composition of the existing ops' maths (BatchNorm's forward and backward,
then the add and the ReLU's), so the CPU results are those of the unfused network bit for
bit. On "cuda" and "emu" it runs igc_np/kernels/batch_norm.cu: 2 launches forward (per-channel
statistics, then one fused elementwise pass) and 2 backward, where the unfused ops issue about
twenty array operations (the BatchNorm's, the add's, the ReLU's and their gradients').
"""
import numpy as np

from ..autograd import Function, Tensor
from .activation import ReLU
from .normalization import BatchNorm, batch_norm


class BatchNormReLU(Function):
    def __init__(self, running_mean, running_var, training, momentum, eps, relu, has_residual):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps
        self.relu, self.has_residual = relu, has_residual

    def forward(self, xp, x, gamma, beta, *residual):
        res = residual[0] if self.has_residual else None
        if self.device == "cpu":
            self.bn = BatchNorm(self.running_mean, self.running_var, self.training, self.momentum, self.eps)
            self.bn.device = "cpu"
            z = self.bn.forward(np, x, gamma, beta)
            if res is not None:
                z = z + res
            self.relu_fn = ReLU() if self.relu else None
            return self.relu_fn.forward(np, z) if self.relu else z
        from ..kernels import fused_ops
        self.x, self.gamma = x, gamma
        self.y, self.mean, self.stat = fused_ops.batch_norm_forward(
            x, gamma, beta, self.running_mean, self.running_var, self.training, self.momentum, self.eps,
            self.device, relu=self.relu, residual=res)
        return self.y

    def backward(self, xp, gy):
        if self.device == "cpu":
            g = self.relu_fn.backward(np, gy) if self.relu else gy
            gx, ggamma, gbeta = self.bn.backward(np, g)
            return (gx, ggamma, gbeta) + ((g,) if self.has_residual else ())
        from ..kernels import fused_ops
        gx, ggamma, gbeta, gres = fused_ops.batch_norm_backward(
            gy, self.y, self.x, self.mean, self.stat, self.gamma, self.training, self.eps, self.device,
            relu=self.relu, has_residual=self.has_residual)
        return (gx, ggamma, gbeta) + ((gres,) if self.has_residual else ())


def batch_norm_relu(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.9,
                    eps=2e-5, relu=True, residual=None):
    """[relu](batch_norm(x) [+ residual]); the arguments and checks of ops.normalization.batch_norm."""
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"batch_norm_relu: residual shape {tuple(residual.shape)} != input shape "
                         f"{tuple(x.shape)}")
    if not relu and residual is None and x.device == "cpu":  # nothing to fuse on the CPU
        return batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    if residual is not None and not isinstance(residual, Tensor):
        raise TypeError(f"batch_norm_relu: residual must be a Tensor, got {type(residual).__name__}")
    _validate(x, gamma, beta, running_mean, running_var, training)
    fn = BatchNormReLU(running_mean, running_var, training, momentum, eps, bool(relu), residual is not None)
    return fn.apply(x, gamma, beta, *(() if residual is None else (residual,)))


def _validate(x, gamma, beta, running_mean, running_var, training):
    """The checks of ops.normalization.batch_norm, named batch_norm_relu."""
    op = "batch_norm_relu"
    if x.ndim != 4 or x.dtype.kind != "f":
        raise ValueError(f"{op}: input must be a 4-D (N, C, H, W) float tensor, got shape {x.shape}, "
                         f"dtype {x.dtype}")
    C = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"{op}: {name} shape {tuple(v.shape)} != (C,) = ({C},) for input shape {x.shape}")
        if name in ("gamma", "beta") and v.dtype != x.dtype:
            raise ValueError(f"{op}: {name} dtype {v.dtype} != input dtype {x.dtype} (input shape {x.shape})")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: evaluation mode (training=False) needs running_mean and running_var")
    if training and x.size // C < 2:
        raise ValueError(f"{op}: training needs more than one value per channel, got input shape {x.shape}")
