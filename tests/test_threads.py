"""Two Python threads training two models at once compute exactly what each computes alone.

The grad mode (no_grad), the reference switch and the CPU thread pool's state are per thread or
safe to share (autograd.py, backend.py, ops/parallel.py): a barrier makes both threads run their
steps at the same time, and their weights must equal two solo runs bit for bit.
"""
import threading

import numpy as np
import pytest

import igc_np as ig
from igc_np import nn
from igc_np.ops import cpu_conv, parallel


def small_model(seed):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 1, groups=2, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Linear(8, 4, rng=rng))


def train(seed, steps=4, barrier=None):
    """A few Nesterov SGD steps on a fixed random batch; the weights after them."""
    model = small_model(seed)
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    rng = np.random.default_rng(100 + seed)
    x = ig.Tensor(rng.standard_normal((8, 3, 12, 12)).astype(np.float32))  # 1152 columns: 2 blocks
    labels = rng.integers(0, 4, 8)
    for _ in range(steps):
        if barrier is not None:
            barrier.wait()  # both threads step together: no_grad in one overlaps a forward in the other
        loss = ig.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with ig.no_grad():  # an evaluation pass, as the trainer's, overlapping the other's forward
            model.eval()
            model(x)
            model.train()
    return [p.numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("threads", [1, 3])
def test_two_threads_train_as_two_solo_runs(monkeypatch, threads):
    """With the CPU engine's own threads too (3: reductions split over several, conv tiles made
    small so there are many): its sums have a fixed order (ops/parallel.py), so bits agree."""
    monkeypatch.setattr(parallel, "THREADS", threads)
    monkeypatch.setattr(parallel, "_pool", None)
    monkeypatch.setattr(cpu_conv, "TILE_BYTES", 1 << 13)
    solo = [train(1), train(2)]
    for _ in range(3):
        barrier, results, errors = threading.Barrier(2), [None, None], []

        def work(k):
            try:
                results[k] = train(k + 1, barrier=barrier)
            except BaseException as e:  # noqa: B902 - reported below
                errors.append(e)
                barrier.abort()
        workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, errors
        for k in range(2):
            for a, b in zip(results[k], solo[k]):
                np.testing.assert_array_equal(a, b)


def test_grad_mode_and_reference_switch_are_per_thread():
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen["grad"], seen["reference"] = ig.is_grad_enabled(), ig.backend.reference_enabled()
        done.set()
    t = threading.Thread(target=other)
    t.start()
    with ig.no_grad(), ig.backend.use_reference():
        inside.set()
        done.wait()
    t.join()
    assert seen == {"grad": True, "reference": ig.backend.reference_enabled()}
