"""Inverted dropout: in training, zero each element with probability p and scale the survivors
by 1 / (1 - p), so the expected value is unchanged and evaluation needs no rescaling.

    y = x * mask / (1 - p),  mask_i ~ Bernoulli(1 - p);     gx = gy * mask / (1 - p)

Off in evaluation (training=False or p=0): y is x itself. The mask is drawn with a NumPy
Generator (rng=, or the default one that ig.manual_seed seeds) on the CPU and moved to the
tensor's device, so a seed gives the same mask on every device.
"""
from .. import backend
from .. import random as _random
from ..autograd import Function


class Dropout(Function):
    def __init__(self, scaled_mask):
        self.scaled_mask = scaled_mask  # mask / (1 - p), in x's dtype

    def forward(self, xp, x):
        return x * self.scaled_mask

    def backward(self, xp, gy):
        return gy * self.scaled_mask


def dropout(x, p=0.5, training=True, rng=None):
    """x (any shape) -> same shape; p the probability of zeroing an element, in [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p is the probability of dropping an element, in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    rng = rng if rng is not None else _random.default_generator()
    keep = rng.random(x.shape) >= p
    # p = 1 drops everything: the mask is all zeros and there is nothing to rescale
    scaled = keep.astype(x.dtype) * (1.0 / (1.0 - p) if p < 1.0 else 0.0)  # stays x's dtype
    return Dropout(backend.to_device(scaled, x.device)).apply(x)
