"""Batch normalisation over (N, H, W) per channel (as BatchNorm in the authors' code, eps 2e-5).

Training: y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta with the batch statistics, and
running = momentum * running + (1 - momentum) * batch statistic (biased variance, as MXNet).
Evaluation: the running statistics replace the batch ones.

The tiers: reference (reference.batch_norm*, the formulas as written); cpu: when x lies in the
conv's channel-first (C, H, W, N) memory (ops/layout.py) each channel is one contiguous row, and
forward and backward work on slabs of a few channels that fit in cache, so their several passes
(mean, variance, normalise; two sums and the input gradient) read main memory about once, with the
slabs spread over threads (measured 4x faster than the whole-array passes); other layouts on the
CPU run the whole-array code below; the gpu tier ("cuda", "emu") runs igc_np/kernels/batch_norm.cu.
"""
import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..kernels import batch_norm as batch_norm_kernels
from . import parallel, reference
from .checks import check_nonempty
from .layout import from_rows, rows

SLAB_BYTES = 1 << 20  # channels processed together: stays in cache (measured best of 64 KiB..4 MiB)


def _channel(v):
    return v.reshape(1, -1, 1, 1)


def _over_slabs(C, K, itemsize, fn):
    """fn(c0, c1) over slabs of channels of about SLAB_BYTES, threads taking contiguous ranges."""
    per = max(1, SLAB_BYTES // max(1, K * itemsize))

    def work(a, b):
        for c0 in range(a, b, per):
            fn(c0, min(c0 + per, b))
    parallel.over_range(C, work)


class BatchNormFunction(Function):
    tiers = {"reference": ("forward_reference", "backward_reference"),
             "cpu": ("forward_cpu", "backward_cpu"),
             "gpu": ("forward_gpu", "backward_gpu")}

    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward_reference(self, xp, x, gamma, beta):
        if self.training:
            mean, var = reference.batch_norm_statistics(x)
            update_running(self.running_mean, self.running_var, self.momentum, mean, var)
        else:  # the running statistics may be kept in another precision than x
            mean, var = self.running_mean.astype(x.dtype), self.running_var.astype(x.dtype)
        self.x, self.gamma, self.mean, self.var = x, gamma, mean, var
        return reference.batch_norm(x, gamma, beta, mean, var, self.eps)

    def backward_reference(self, xp, gy):
        return reference.batch_norm_backward(self.x, self.gamma, gy, self.mean, self.var, self.eps,
                                             self.training)

    def forward_cpu(self, xp, x, gamma, beta):
        self.rows = rows(x)
        if self.rows is None:
            return self._forward_arrays(xp, x, gamma, beta)
        y, self.mean, self.invstd = forward_rows(self.rows, gamma, beta, self.running_mean, self.running_var,
                                                 self.training, self.momentum, self.eps)
        self.gamma = gamma
        return from_rows(y, x.shape)

    def backward_cpu(self, xp, gy):
        if self.rows is None:
            return self._backward_arrays(xp, gy)
        return backward_rows(gy, self.rows, self.mean, self.invstd, self.gamma, self.training)[:3]

    def forward_gpu(self, xp, x, gamma, beta):
        """igc_np/kernels/batch_norm.cu: 2 launches in training (statistics, apply), 1 in evaluation."""
        self.x, self.gamma = x, gamma
        self.y, self.mean, self.stat = batch_norm_kernels.batch_norm_forward(
            x, gamma, beta, self.running_mean, self.running_var, self.training, self.momentum, self.eps, self.device)
        return self.y

    def backward_gpu(self, xp, gy):
        gx, ggamma, gbeta, _ = batch_norm_kernels.batch_norm_backward(gy, self.y, self.x, self.mean, self.stat, self.gamma,
                                                              self.training, self.eps, self.device)
        return gx, ggamma, gbeta

    def _forward_arrays(self, xp, x, gamma, beta):
        """The whole-array passes (any xp, any memory layout)."""
        axes = (0, 2, 3)
        if self.training:
            mean = x.mean(axis=axes)
            xc = x - _channel(mean)
            var = (xc * xc).mean(axis=axes)
            update_running(self.running_mean, self.running_var, self.momentum, mean, var)
        else:  # the running statistics may be kept in another precision than x
            mean, var = self.running_mean.astype(x.dtype), self.running_var.astype(x.dtype)
            xc = x - _channel(mean)
        self.invstd = 1.0 / xp.sqrt(var + self.eps)
        self.xhat = xc * _channel(self.invstd)
        self.gamma = gamma
        return self.xhat * _channel(gamma) + _channel(beta)

    def _backward_arrays(self, xp, gy):
        axes = (0, 2, 3)
        gbeta = gy.sum(axis=axes)
        ggamma = (gy * self.xhat).sum(axis=axes)
        scale = _channel(self.gamma * self.invstd)
        if not self.training:  # statistics are constants
            return gy * scale, ggamma, gbeta
        m = gy.size // gy.shape[1]
        # d/dx of the normalisation: subtract the parts of gy explained by the mean and by xhat
        gx = (gy - _channel(gbeta / m) - self.xhat * _channel(ggamma / m)) * scale
        return gx, ggamma, gbeta


def update_running(running_mean, running_var, momentum, mean, var):
    """running = momentum * running + (1 - momentum) * batch statistic, in place (the Module's
    buffers see the update); nothing without running statistics."""
    if running_mean is not None:
        m = momentum
        running_mean *= m
        running_mean += (1 - m) * mean
        running_var *= m
        running_var += (1 - m) * var


# ---- the cpu tier on (C, H*W*N) rows: shared by BatchNormFunction and ops/fused.py -------------
def forward_rows(xr, gamma, beta, running_mean, running_var, training, momentum, eps, residual=None,
                 relu=False):
    """BatchNorm of the (C, K) rows xr, slab by slab -> (y rows (C, K), mean (C,), invstd (C,)).

    Training uses (and folds into the running statistics) the batch's; evaluation the running
    ones. residual (C, K) rows or None, relu: ops/fused.py's batch_norm_relu tail, done on each
    slab while it is in cache, so y = [relu](bn(x) [+ residual]) is written once.
    """
    C, K = xr.shape
    y = np.empty_like(xr)
    mean = running_mean.astype(xr.dtype) if not training else np.empty(C, xr.dtype)
    var = running_var.astype(xr.dtype) if not training else np.empty(C, xr.dtype)

    def slab(c0, c1):
        xs, ys = xr[c0:c1], y[c0:c1]
        if training:
            mean[c0:c1] = xs.mean(axis=1)
        d = xs - mean[c0:c1, None]
        if training:
            var[c0:c1] = np.einsum("ck,ck->c", d, d) / K
        a = gamma[c0:c1] / np.sqrt(var[c0:c1] + eps)
        np.multiply(d, a[:, None], out=ys)
        ys += beta[c0:c1, None]
        if residual is not None:
            ys += residual[c0:c1]
        if relu:
            np.maximum(ys, 0, out=ys)
    _over_slabs(C, K, xr.itemsize, slab)
    if training:
        update_running(running_mean, running_var, momentum, mean, var)
    return y, mean, 1.0 / np.sqrt(var + eps)


def backward_rows(gy, xr, mean, invstd, gamma, training, relu_y=None, residual=False):
    """(gx, ggamma, gbeta, gresidual) from gy (N, C, H, W), slab by slab; the input gradient is
    rebuilt from the forward's rows xr, mean and invstd, so the forward keeps no xhat.

    relu_y: the (C, K) rows of the forward's ReLU output (its mask y > 0 gates gy), or None;
    residual: also return the gradient reaching the residual (gy through the mask), else None.
    """
    gr = rows(gy)
    if gr is None:
        gr = np.ascontiguousarray(gy.transpose(1, 2, 3, 0)).reshape(xr.shape)
    C, K = xr.shape
    gx, gbeta, ggamma = np.empty_like(xr), np.empty(C, gy.dtype), np.empty(C, gy.dtype)
    gres = np.empty_like(xr) if residual and relu_y is not None else None

    def slab(c0, c1):
        g = gr[c0:c1]
        if relu_y is not None:  # ReLU's backward on this slab: into gres, or a slab-sized temporary
            g = np.multiply(g, relu_y[c0:c1] > 0, out=None if gres is None else gres[c0:c1])
        xhat = (xr[c0:c1] - mean[c0:c1, None]) * invstd[c0:c1, None]
        gbeta[c0:c1] = g.sum(axis=1)
        ggamma[c0:c1] = np.einsum("ck,ck->c", g, xhat)
        scale = (gamma[c0:c1] * invstd[c0:c1])[:, None]
        if training:
            xhat *= ggamma[c0:c1, None] / K
            np.subtract(g, xhat, out=gx[c0:c1])
            gx[c0:c1] -= gbeta[c0:c1, None] / K
            gx[c0:c1] *= scale
        else:
            np.multiply(g, scale, out=gx[c0:c1])
    _over_slabs(C, K, gy.itemsize, slab)
    if not residual:
        gres_out = None
    elif gres is None:  # no ReLU: the residual's gradient is gy itself
        gres_out = gy
    else:
        gres_out = from_rows(gres, gy.shape)
    return from_rows(gx, gy.shape), ggamma, gbeta, gres_out


def _check_running(name, v, x):
    """A running statistic must be a floating (C,) array on x's device, updated in place."""
    if isinstance(v, Tensor) or not (hasattr(v, "dtype") and hasattr(v, "shape")):
        raise TypeError(f"batch_norm: {name} must be a numpy/cupy array (a Module buffer), got "
                        f"{type(v).__name__}")
    if v.dtype.kind != "f":
        raise ValueError(f"batch_norm: {name} must be floating point, got dtype {v.dtype} (shape "
                         f"{tuple(v.shape)}); integer statistics would truncate every update")
    if v.dtype == np.float16:  # as Tensor: float16 statistics lose the updates; see autograd._check_dtype
        raise ValueError(f"batch_norm: {name} is float16 (shape {tuple(v.shape)}), which is not "
                         "supported; use float32: model.to(dtype=np.float32)")
    if (backend.device_of(v) == "cuda") != (x.device == "cuda"):
        raise ValueError(f"batch_norm: {name} is a {type(v).__module__} array but the input is on "
                         f"{x.device!r}; move the module with .to(device)")


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True,
               momentum=0.9, eps=2e-5):
    """x (N, C, H, W); gamma, beta (C,) Tensors; running_mean/var (C,) arrays updated in place
    in training mode and used in evaluation mode."""
    check_batch_norm_args(x, gamma, beta, running_mean, running_var, training)
    return BatchNormFunction(running_mean, running_var, training, momentum, eps).apply(x, gamma, beta)


def check_batch_norm_args(x, gamma, beta, running_mean, running_var, training):
    """batch_norm's argument checks (also ops/fused.py's batch_norm_relu)."""
    if x.ndim != 4:
        raise ValueError(f"batch_norm: input must be 4-D (N, C, H, W), got shape {x.shape}")
    check_nonempty("batch_norm", "input", x.shape)
    C = x.shape[1]
    if x.dtype.kind != "f":
        raise ValueError(f"batch_norm: input must be floating point, got dtype {x.dtype}")
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            _check_running(name, v, x)
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.dtype != x.dtype:
            raise ValueError(f"batch_norm: {name} dtype {v.dtype} != input dtype {x.dtype} "
                             f"(input shape {x.shape})")
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"batch_norm: {name} shape {tuple(v.shape)} != (C,) = ({C},) for input "
                             f"shape {x.shape}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: evaluation mode (training=False) needs running_mean and running_var")
    if training and x.size // C < 2:
        raise ValueError(f"batch_norm: training needs more than one value per channel, got input "
                         f"shape {x.shape}")
