"""Batch normalisation over (N, H, W) per channel (the reference code's BatchNorm, eps 2e-5).

Training: y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta with the batch statistics, and
running = momentum * running + (1 - momentum) * batch statistic (biased variance, as MXNet).
Evaluation: the running statistics replace the batch ones.
"""
from ..autograd import Function


def _channel(v):
    return v.reshape(1, -1, 1, 1)


class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, xp, x, gamma, beta):
        axes = (0, 2, 3)
        if self.training:
            mean = x.mean(axis=axes)
            xc = x - _channel(mean)
            var = (xc * xc).mean(axis=axes)
            m = self.momentum
            if self.running_mean is not None:
                # in place, so that the Module's buffers see the update
                self.running_mean *= m
                self.running_mean += (1 - m) * mean
                self.running_var *= m
                self.running_var += (1 - m) * var
        else:
            mean, var = self.running_mean, self.running_var
            xc = x - _channel(mean)
        self.invstd = 1.0 / xp.sqrt(var + self.eps)
        self.xhat = xc * _channel(self.invstd)
        self.gamma = gamma
        return self.xhat * _channel(gamma) + _channel(beta)

    def backward(self, xp, gy):
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


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True,
               momentum=0.9, eps=2e-5):
    """x (N, C, H, W); gamma, beta (C,) Tensors; running_mean/var (C,) arrays updated in place
    in training mode and used in evaluation mode."""
    if x.ndim != 4:
        raise ValueError(f"batch_norm: input must be 4-D (N, C, H, W), got shape {x.shape}")
    C = x.shape[1]
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
    return BatchNorm(running_mean, running_var, training, momentum, eps).apply(x, gamma, beta)
