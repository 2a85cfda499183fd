"""Softmax cross-entropy, mean over the batch."""
import numpy as np

from ..autograd import Function


def log_softmax(xp, z):
    z = z - z.max(axis=1, keepdims=True)  # shift for numerical safety: exp never overflows
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


class CrossEntropy(Function):
    def forward(self, xp, logits, labels):
        self.labels = labels
        self.logp = log_softmax(xp, logits)
        N = logits.shape[0]
        return -self.logp[xp.arange(N), labels].mean()

    def backward(self, xp, gy):
        N = self.logp.shape[0]
        g = xp.exp(self.logp)  # softmax
        g[xp.arange(N), self.labels] -= 1
        return g * (gy / N), None


def cross_entropy(logits, labels):
    """logits (N, K), labels (N,) integer class ids in [0, K) -> scalar mean loss."""
    from ..autograd import Tensor
    lab = labels.data if isinstance(labels, Tensor) else labels
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-D (N, classes), got shape {logits.shape}")
    if lab.ndim != 1 or lab.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy: labels shape {lab.shape} does not match logits shape "
                         f"{logits.shape} (expected ({logits.shape[0]},))")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"cross_entropy: labels must be integers, got dtype {lab.dtype}")
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= logits.shape[1]):
        raise ValueError(f"cross_entropy: labels must lie in [0, {logits.shape[1]}), got range "
                         f"[{int(lab.min())}, {int(lab.max())}]")
    if not isinstance(labels, Tensor):
        labels = Tensor(labels, device=logits.device)
    return CrossEntropy().apply(logits, labels)
