"""One training step: forward, loss, backward, update.

The four lines every loop runs (``examples/cifar10_igc.py`` writes them out in its loop); here
for callers that want them as one call. It uses only the core (a model, ``F.cross_entropy``, an
optimizer); the data-parallel step is ``igc_np.app.distributed.dp_step``.
"""
from . import functional as F

__all__ = ["train_step"]


def train_step(model, optimizer, x, y):
    """One SGD step on the batch (x, y); returns (loss, logits) as Tensors, still on the device.

    Nothing here reads a value back to the host: on a GPU the step stays asynchronous.
    The data-parallel version is ``distributed.dp_step`` (slices, a rank-ordered reduction).
    """
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, logits
