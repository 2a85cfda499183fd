"""BatchNorm -> (+ residual) -> ReLU as one op: the networks' ConvBN tail and residual join.

    batch_norm_relu(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                    relu=True, residual=None)  ->  [relu](batch_norm(x) [+ residual])

x, residual (N, C, H, W) Tensors; gamma, beta (C,) Tensors; running statistics (C,) arrays,
updated in place in training mode (as ops/normalization.py's batch_norm).

The reference tier is the composition of the existing ops' tiers (BatchNormFunction, the add,
ReLUFunction). The cpu tier, when x (and the residual) lie in the conv's (C, H, W, N) memory
(ops/layout.py), runs BatchNorm's slab code (ops/normalization.py) with the add and the clamp
done on each cache-sized slab of channels: one pass over memory forward (statistics, normalise,
+ residual, ReLU, y written once) and one backward (the ReLU mask from the saved y, the residual's
gradient, BatchNorm's backward with xhat rebuilt from x, mean, invstd); other layouts compose the
unfused ops' cpu tiers, as the reference tier does. The gpu
tier ("cuda", "emu") runs igc_np/kernels/batch_norm.cu: 2 launches forward (per-channel
statistics, then one fused pass that normalises, adds and clamps) and 2 backward, where the
unfused ops issue about twenty array operations.
"""
from ..autograd import Function, Tensor
from .activation import ReLUFunction
from .layout import rows
from .normalization import BatchNormFunction, batch_norm, check_batch_norm_args


class BatchNormReLUFunction(Function):
    """Inputs x, gamma, beta (and the residual when has_residual); output like x."""

    def __init__(self, running_mean, running_var, training, momentum, eps, relu, has_residual):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps
        self.relu, self.has_residual = relu, has_residual

    # ---- reference and cpu: the unfused ops' own tiers, one after the other ----
    def _compose(self, tier, x, gamma, beta, residual):
        self.bn = BatchNormFunction(self.running_mean, self.running_var, self.training, self.momentum, self.eps)
        z = getattr(self.bn, "forward_" + tier)(x, gamma, beta)
        if self.has_residual:
            z = z + residual[0]
        self.relu_fn = ReLUFunction() if self.relu else None
        return getattr(self.relu_fn, "forward_" + tier)(z) if self.relu else z

    def _compose_backward(self, tier, gy):
        g = getattr(self.relu_fn, "backward_" + tier)(gy) if self.relu else gy
        gx, ggamma, gbeta = getattr(self.bn, "backward_" + tier)(g)
        return (gx, ggamma, gbeta) + ((g,) if self.has_residual else ())

    def forward_reference(self, x, gamma, beta, *residual):
        return self._compose("reference", x, gamma, beta, residual)

    def backward_reference(self, gy):
        return self._compose_backward("reference", gy)

    # ---- cpu: one slab pass each way on (C, H, W, N) rows, else the unfused ops ----
    def forward_cpu(self, x, gamma, beta, *residual):
        xr, rr = rows(x), rows(residual[0]) if self.has_residual else None
        self.fused_rows = xr is not None and (rr is not None or not self.has_residual)
        if not self.fused_rows:
            return self._compose("cpu", x, gamma, beta, residual)
        # BatchNormFunction's slab code with the add and the clamp done on each slab in cache;
        # backward needs x (its rows, kept by self.bn), mean, invstd and, for the ReLU mask, y
        self.bn = BatchNormFunction(self.running_mean, self.running_var, self.training, self.momentum, self.eps)
        self.bn.rows = xr
        y = self.bn._forward_rows(x, gamma, beta, residual=rr, relu=self.relu)
        self.y_rows = rows(y) if self.relu else None
        return y

    def backward_cpu(self, gy):
        if not self.fused_rows:
            return self._compose_backward("cpu", gy)
        gx, ggamma, gbeta, gres = self.bn._backward_rows(gy, relu_y=self.y_rows, residual=self.has_residual)
        return (gx, ggamma, gbeta) + ((gres,) if self.has_residual else ())

    # ---- gpu: the fused kernels ----
    def forward_gpu(self, xp, x, gamma, beta, *residual):
        from ..kernels import fused_ops
        self.x, self.gamma = x, gamma
        self.y, self.mean, self.stat = fused_ops.batch_norm_forward(
            x, gamma, beta, self.running_mean, self.running_var, self.training, self.momentum, self.eps,
            self.device, relu=self.relu, residual=residual[0] if self.has_residual else None)
        return self.y

    def backward_gpu(self, xp, gy):
        from ..kernels import fused_ops
        gx, ggamma, gbeta, gres = fused_ops.batch_norm_backward(
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
