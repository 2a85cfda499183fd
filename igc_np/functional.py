"""The functional API: every op of the engine as a function of Tensors.

    from igc_np import functional as F
    y = F.conv2d(x, W, stride=1, padding=1, groups=L)
    y = F.permute_channels(y, L)
"""
from .ops.activation import relu
from .ops.conv import conv2d
from .ops.interleaved import interleaved_secondary
from .ops.linear import linear
from .ops.loss import cross_entropy
from .ops.normalization import batch_norm
from .ops.permutation import permute_channels
from .ops.pooling import avg_pool2d, global_avg_pool2d, max_pool2d
from .ops.softmax import log_softmax, softmax
from .ops.dropout import dropout
from .ops.mse import mse_loss

__all__ = ["conv2d", "permute_channels", "interleaved_secondary", "batch_norm", "relu", "max_pool2d",
           "avg_pool2d", "global_avg_pool2d", "linear", "cross_entropy", "flatten"]
__all__ += ["softmax", "log_softmax", "dropout", "mse_loss"]


def flatten(x, start_dim=1):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    return x.flatten(start_dim)
