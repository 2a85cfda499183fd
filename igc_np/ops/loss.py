"""Softmax cross-entropy, mean over the batch (one tier: reference.cross_entropy with xp)."""
import numpy as np

from ..autograd import Function, Tensor
from . import reference
from .checks import check_float, check_nonempty


class CrossEntropyFunction(Function):
    def forward(self, xp, logits, labels):
        self.logits, self.labels = logits, labels
        return reference.cross_entropy(logits, labels, xp)

    def backward(self, xp, gy):
        return reference.cross_entropy_backward(self.logits, self.labels, gy, xp), None


def _check_labels(lab, logits):
    """Shape and dtype always; the range [0, K) only for NumPy labels: reading a device array's
    min/max would stall the GPU (a device->host sync) on every step."""
    if lab.ndim != 1 or lab.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy: labels shape {tuple(lab.shape)} does not match logits shape "
                         f"{logits.shape} (expected ({logits.shape[0]},))")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: labels must be integers, got dtype {lab.dtype}")
    if isinstance(lab, np.ndarray) and lab.size and (lab.min() < 0 or lab.max() >= logits.shape[1]):
        raise ValueError(f"cross_entropy: labels must lie in [0, {logits.shape[1]}), got range "
                         f"[{lab.min()}, {lab.max()}]")


def cross_entropy(logits, labels):
    """logits (N, K), labels (N,) integer class ids in [0, K) -> scalar mean loss.

    labels: a NumPy or device integer array, or a Tensor holding one (range-checked when NumPy).
    """
    lab = labels.data if isinstance(labels, Tensor) else labels
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-D (N, classes), got shape {logits.shape}")
    check_nonempty("cross_entropy", "logits", logits.shape)
    check_float("cross_entropy", "logits", logits.dtype)
    if not (hasattr(lab, "dtype") and hasattr(lab, "ndim")):
        raise TypeError(f"cross_entropy: labels must be an integer array (numpy, cupy or Tensor), got "
                        f"{type(labels).__name__}; wrap it: numpy.asarray(labels)")
    _check_labels(lab, logits)
    if not isinstance(labels, Tensor):
        labels = Tensor(labels, device=logits.device)
    return CrossEntropyFunction().apply(logits, labels)
