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
CHECK_BATCHES = 4        # training batches on which auto compares the two kinds of statistics
TOP1_TOLERANCE = 0.01    # auto keeps the running statistics within these of the batch statistics
LOSS_TOLERANCE = 0.25    # (relative, plus LOSS_SLACK absolute): measured in docs/eval_bn.md
LOSS_SLACK = 0.005


def batch_statistics_metrics(model, batches):
    """Metrics of ``batches`` with every BN normalising by the batch's own statistics (train
    mode, as the weights were trained), no graph; the running statistics are put back bit for bit."""
    bns = batch_norms(model)
    saved = [(m.running_mean.copy(), m.running_var.copy()) for m in bns]
    model.train()
    metrics = Metrics()
    try:
        with no_grad():
            for x, y in batches:
                logits = model(x)
                metrics.update(F.cross_entropy(logits, y), logits, y)
        metrics.sums  # one host sync
    finally:
        for m, (mean, var) in zip(bns, saved):
            m.running_mean[...] = mean
            m.running_var[...] = var
        model.eval()
    return metrics


def running_statistics_fit(model, batches):
    """(fit, running Metrics, batch-statistics Metrics) on the same training batches.

    ``batches()`` gives a fresh iterator of (x, y) each call (they are read twice, not kept).
    The running statistics are a moving average over the last ~1/(1 - momentum) steps: while the
    weights still change quickly (a young or short run, a high learning rate) they describe older
    weights than the current ones, and a test pass with them can be far worse than the model
    (digits32 plain_igc after 468 updates: 0.73 against 0.93). No count of updates says when this
    is over (docs/eval_bn.md), so look: in eval mode the running statistics must do as well on
    these training images as the batches' own statistics do (top-1 within TOP1_TOLERANCE, loss
    within LOSS_TOLERANCE). Training images only: the choice never peeks at the test set.
    """
    running = evaluate_batches(model, batches())
    batch = batch_statistics_metrics(model, batches())
    fit = (running.top1 >= batch.top1 - TOP1_TOLERANCE
           and running.loss <= batch.loss * (1 + LOSS_TOLERANCE) + LOSS_SLACK)
    return fit, running, batch


def choose_statistics(model, data, updates):
    """auto's choice for the test pass: ('running' | 'precise', why)."""
    if stale_statistics(model, updates or 0):
        return "precise", f"the running statistics are young after {updates} updates"
    fit, r, b = running_statistics_fit(model, lambda: data.plain_train_batches(CHECK_BATCHES))
    numbers = (f"training top1/loss {r.top1:.3f}/{r.loss:.3f}, with the batches' own "
               f"statistics {b.top1:.3f}/{b.loss:.3f}")
    if fit:
        return "running", f"they fit: {numbers}"
    return "precise", f"the running ones lag: {numbers}"


def test_pass(model, data, eval_bn="auto", updates=None, progress=None):
    """(Metrics on ``data.test_batches()``, note) with the BN statistics ``eval_bn`` asks for.

    eval_bn: 'running' (the authors' protocol: the running statistics), 'precise' (recalibrated
    on the first PRECISE_BN_BATCHES training batches, then restored), or 'auto': precise while
    ``stale_statistics(model, updates)`` or unless ``running_statistics_fit`` (docs/eval_bn.md).
    The note says which were used and why; it goes into the log and the epoch line.
    """
    kind, why = ("precise", "asked for") if eval_bn == "precise" else ("running", None)
    if eval_bn == "auto":
        kind, why = choose_statistics(model, data, updates)
    if kind == "precise":
        with precise_bn_statistics(model, data.plain_train_batches(PRECISE_BN_BATCHES)) as pbn:
            test = evaluate_batches(model, data.test_batches(), progress)
        return test, f"precise ({pbn.count} training batches; {why})"
    test = evaluate_batches(model, data.test_batches(), progress)
    return test, "running" if why is None else f"running ({why})"
