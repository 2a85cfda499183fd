"""Metrics and evaluation: running sums, ``evaluate``, precise BN statistics, the test pass."""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import Tensor, no_grad
from .data import iterate_batches


class Metrics:
    """Running mean loss, top-1 and top-5 accuracy over the batches seen so far.

    ``sums`` = [sum of loss * batch size, samples, top-1 hits, top-5 hits] (float64), which is
    what a mid-epoch checkpoint stores to continue the epoch's numbers exactly. ``update`` keeps
    the new sums where the arrays are (a GPU array stays on the GPU: no host sync per batch);
    reading ``sums`` (or loss, top1, ...) brings them to the host.
    """

    def __init__(self, sums=None):
        self._host = np.zeros(4) if sums is None else np.array(sums, dtype=np.float64)
        self._pending = None  # device (4,) float64 sums not yet added to _host

    def update(self, loss, logits, labels):
        """loss: the batch's mean loss (number, 0-d array or Tensor); logits (B, K), labels (B,)."""
        loss, logits, labels = (v.data if isinstance(v, Tensor) else v
                                for v in (loss, logits, labels))
        xp = backend.get_array_module(backend.device_of(logits))
        logits, labels = xp.asarray(logits), xp.asarray(labels)
        n = labels.shape[0]
        # the 5 largest logits of each row, unordered (argpartition is O(K), no full sort)
        k = min(5, logits.shape[1])
        top5 = xp.argpartition(-logits, k - 1, axis=1)[:, :k]
        batch = xp.stack([xp.asarray(loss, dtype=xp.float64) * n, xp.asarray(float(n)),
                          (logits.argmax(axis=1) == labels).sum().astype(xp.float64),
                          (top5 == labels[:, None]).sum().astype(xp.float64)])
        self._pending = batch if self._pending is None else self._pending + batch

    def add(self, sums):
        """Add sums already computed (and reduced over ranks) by ``distributed.dp_step``."""
        self._host = self._host + np.asarray(sums, dtype=np.float64)

    @property
    def sums(self):
        if self._pending is not None:  # the host sync: once per log interval, not per batch
            self._host = self._host + backend.to_device(self._pending, "cpu")
            self._pending = None
        return self._host

    @property
    def count(self):
        return int(self.sums[1])

    @property
    def loss(self):
        return self.sums[0] / max(self.sums[1], 1)

    @property
    def top1(self):
        return self.sums[2] / max(self.sums[1], 1)

    @property
    def top5(self):
        return self.sums[3] / max(self.sums[1], 1)


def evaluate(model, x, y, mean, std, batch_size=256, device="cpu", dtype=np.float32,
             progress=None):
    """Test-set Metrics of ``model`` in inference mode (BN uses its running statistics).

    x (N, 3, H, W) uint8, y (N,) int64; mean/std per channel on the 0..255 scale.
    ``progress(n)`` is called after each batch. Leaves the model in eval mode: the caller
    switches it back with ``model.train()``.
    """
    batches = ((Tensor(xb, device=device), Tensor(yb, device=device)) for xb, yb in
               iterate_batches(x, y, batch_size, mean=mean, std=std, dtype=dtype))
    return evaluate_batches(model, batches, progress)


def evaluate_batches(model, batches, progress=None):
    """Metrics of ``model`` (eval mode, no graph) over (x, y) Tensor batches."""
    model.eval()
    metrics = Metrics()
    with no_grad():  # no graph: half the memory, and faster
        for x, y in batches:
            logits = model(x)
            metrics.update(F.cross_entropy(logits, y), logits, y)
            if progress is not None:
                progress(1)
    metrics.sums  # one host sync at the end
    return metrics


def batch_norms(model):
    return [m for _, m in model.named_modules() if hasattr(m, "running_mean")
            and hasattr(m, "momentum")]


def stale_statistics(model, updates, threshold=0.01):
    """True while the BN running statistics still hold more than ``threshold`` of their initial
    values: after t updates with momentum m that share is m**t (0.99**100 = 0.37)."""
    bns = batch_norms(model)
    return bool(bns) and max(m.momentum for m in bns) ** updates > threshold


class precise_bn_statistics:
    """``with precise_bn_statistics(model, batches):`` evaluate with BN statistics of the data.

    Inside the block every BN's running mean/variance is the plain average over ``batches`` of
    the batch statistics (precise BN: cumulative averages, momentum 1 - 1/i for batch i);
    leaving the block puts the trained statistics and momenta back bit for bit, so training,
    checkpoints and resume never see the recalibrated values.
    """

    def __init__(self, model, batches):
        self.model, self.batches, self.count = model, batches, 0

    def __enter__(self):
        self.saved = [(m, m.momentum, m.running_mean.copy(), m.running_var.copy())
                      for m in batch_norms(self.model)]
        self.model.train()  # batch statistics, and the running ones updated
        with no_grad():
            for i, (x, _) in enumerate(self.batches, start=1):
                for m, *_ in self.saved:
                    m.momentum = 1.0 - 1.0 / i  # running = ((i-1) * running + batch) / i
                self.model(x)
                self.count = i
        for m, momentum, *_ in self.saved:
            m.momentum = momentum
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, momentum, mean, var in self.saved:
            m.momentum = momentum
            m.running_mean[...] = mean
            m.running_var[...] = var
        return False


PRECISE_BN_BATCHES = 20


def test_pass(model, data, eval_bn="auto", updates=None, progress=None):
    """(Metrics on ``data.test_batches()``, note) with the BN statistics ``eval_bn`` asks for.

    eval_bn: 'running' (the reference: the running statistics), 'precise' (recalibrated on the
    first PRECISE_BN_BATCHES training batches, then restored), or 'auto': precise while
    ``stale_statistics(model, updates)``. The note says which was used; it goes into the log.
    """
    if eval_bn == "precise" or (eval_bn == "auto" and stale_statistics(model, updates or 0)):
        with precise_bn_statistics(model, data.plain_train_batches(PRECISE_BN_BATCHES)) as pbn:
            test = evaluate_batches(model, data.test_batches(), progress)
        why = "asked for" if eval_bn == "precise" else \
            f"the running statistics are young after {updates} updates"
        return test, f"precise ({pbn.count} training batches; {why})"
    return evaluate_batches(model, data.test_batches(), progress), "running"

