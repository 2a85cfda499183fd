"""BatchNorm -> (+ residual) -> ReLU as one op: the networks' ConvBN tail and residual join.

    batch_norm_relu(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                    relu=True, residual=None)  ->  [relu](batch_norm(x) [+ residual])

x, residual (N, C, H, W) Tensors; gamma, beta (C,) Tensors; running statistics (C,) arrays,
updated in place in training mode (as ops/normalization.py's batch_norm).

The reference tier is the composition of the existing ops: BatchNormFunction, the add and
ReLUFunction, each run through Function.run_forward / run_backward on this op's tier. The cpu
tier, when x (and the residual) lie in the conv's (C, H, W, N) memory (ops/layout.py), runs
BatchNorm's slab code (normalization.forward_rows / backward_rows) with the add and the clamp
done on each cache-sized slab of channels: one pass over memory forward (statistics, normalise,
+ residual, ReLU, y written once) and one backward (the ReLU mask from the saved y, the residual's
gradient, BatchNorm's backward with xhat rebuilt from x, mean, invstd); other layouts compose the
unfused ops on the cpu tier, as the reference tier does. The gpu tier ("cuda", "emu") runs
igc_np/kernels/batch_norm.cu: 2 launches forward (per-channel statistics, then one fused pass
that normalises, adds and clamps) and 2 backward, where the
unfused ops issue about twenty array operations.
"""
from ..autograd import Function, Tensor
from ..kernels import batch_norm as batch_norm_kernels
from .activation import ReLUFunction
from .layout import from_rows, rows
from .normalization import BatchNormFunction, backward_rows, batch_norm, check_batch_norm_args, forward_rows


class BatchNormReLUFunction(Function):
    """Inputs x, gamma, beta (and the residual when has_residual); output like x."""

    tiers = {"reference": ("forward_composed", "backward_composed"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def __init__(self, running_mean, running_var, training, momentum, eps, relu, has_residual):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps
        self.relu, self.has_residual = relu, has_residual

    # ---- reference (and cpu in other layouts): the unfused Functions, one after the other ----
    def forward_composed(self, xp, x, gamma, beta, *residual):
        """BatchNormFunction, the add, ReLUFunction, each run on this op's tier."""
        self.bn = BatchNormFunction(self.running_mean, self.running_var, self.training, self.momentum, self.eps)
        z = self.bn.run_forward(self.tier, self.device, xp, x, gamma, beta)
        if self.has_residual:
            z = z + residual[0]
        if not self.relu:
            return z
        self.relu_fn = ReLUFunction()
        return self.relu_fn.run_forward(self.tier, self.device, xp, z)

    def backward_composed(self, xp, gy):
        g = self.relu_fn.run_backward(xp, gy) if self.relu else gy
        gx, ggamma, gbeta = self.bn.run_backward(xp, g)
        return (gx, ggamma, gbeta) + ((g,) if self.has_residual else ())

    # ---- cpu: one slab pass each way on (C, H, W, N) rows, else the unfused ops ----
    def forward_cpu(self, xp, x, gamma, beta, *residual):
        xr, rr = rows(x), rows(residual[0]) if self.has_residual else None
        self.fused_rows = xr is not None and (rr is not None or not self.has_residual)
        if not self.fused_rows:
            return self.forward_composed(xp, x, gamma, beta, *residual)
        # BatchNorm's slab code with the add and the clamp done on each slab in cache; backward
        # needs x's rows, mean, invstd and, for the ReLU mask, y
        y, self.mean, self.invstd = forward_rows(xr, gamma, beta, self.running_mean, self.running_var,
                                                 self.training, self.momentum, self.eps, residual=rr,
                                                 relu=self.relu)
        self.x_rows, self.gamma = xr, gamma
        self.y_rows = y if self.relu else None
        return from_rows(y, x.shape)

    def backward_cpu(self, xp, gy):
        if not self.fused_rows:
            return self.backward_composed(xp, gy)
        gx, ggamma, gbeta, gres = backward_rows(gy, self.x_rows, self.mean, self.invstd, self.gamma,
                                                self.training, relu_y=self.y_rows, residual=self.has_residual)
        return (gx, ggamma, gbeta) + ((gres,) if self.has_residual else ())

    # ---- gpu: the fused kernels ----
    def forward_gpu(self, xp, x, gamma, beta, *residual):
        self.x, self.gamma = x, gamma
        self.y, self.mean, self.stat = batch_norm_kernels.batch_norm_forward(
            x, gamma, beta, self.running_mean, self.running_var, self.training, self.momentum, self.eps,
            self.device, relu=self.relu, residual=residual[0] if self.has_residual else None)
        return self.y

    def backward_gpu(self, xp, gy):
        gx, ggamma, gbeta, gres = batch_norm_kernels.batch_norm_backward(
            gy, self.y, self.x, self.mean, self.stat, self.gamma, self.training, self.eps, self.device,
            relu=self.relu, has_residual=self.has_residual)
        return (gx, ggamma, gbeta) + ((gres,) if self.has_residual else ())


def batch_norm_relu(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.9,
                    eps=2e-5, relu=True, residual=None):
    """[relu](batch_norm(x) [+ residual]); the arguments and checks of ops.normalization.batch_norm."""
    if not relu and residual is None:  # nothing to fuse: batch_norm's own tiers (also kernels on a GPU)
        return batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"batch_norm_relu: residual must be a Tensor, got {type(residual).__name__}")
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"batch_norm_relu: residual shape {tuple(residual.shape)} != input shape "
                             f"{tuple(x.shape)}")
        if residual.dtype != x.dtype:  # as the unfused add: float32 training must not become float64
            raise ValueError(f"batch_norm_relu: residual dtype {residual.dtype} != input dtype {x.dtype} "
                             f"(shape {tuple(x.shape)}); make them the same")
    check_batch_norm_args(x, gamma, beta, running_mean, running_var, training)
    fn = BatchNormReLUFunction(running_mean, running_var, training, momentum, eps, bool(relu), residual is not None)
    return fn.apply(x, gamma, beta, *(() if residual is None else (residual,)))
