#!/usr/bin/env python
"""When are BatchNorm's running statistics good enough to test with? (the ``--eval-bn auto`` rule)

    python benchmarks/eval_bn_rule.py                      # every family, digits + digits32
    python benchmarks/eval_bn_rule.py --families resnet_igc --datasets digits32 --updates 10,40,80

Trains each network family with the trainer's short-run protocol (Nesterov SGD, lr 0.1 constant as
in a run of 1-3 epochs, weight decay 1e-4, batch 64) and, after t updates, tests the same weights
twice: with the running statistics, and with precise statistics (the plain average of the batch
statistics of 20 training batches). Prints one row per (data set, network, BN momentum, t): the
test top-1 of both, the gap, momentum**t (the share of the initial statistics still held),
t * (1 - momentum) (how many averaging windows have passed), and the distance between the two sets
of statistics (``statistics_distance``: 0 when they agree), and the top-1 and loss of CHECK
training batches in eval mode (running statistics) and in train mode (each batch's own statistics):
what a rule can see without the test set.

digits32 is a CIFAR-like stand-in built offline from the 8x8 digits (no CIFAR download here):
each digit upscaled 3x to 24x24, put at a random place on a 32x32 canvas, with random background
colour, a foreground colour 96-160 grey levels lighter or darker in each channel, and Gaussian
noise (sigma 12 grey levels); 5,000 training and 1,000 test images, 78 updates per epoch at
batch 64, as the README's quick CIFAR try ``--subset 5000``.
"""
import argparse
import sys
import time

import numpy as np

import igc_np as ig
from igc_np.app import evaluation
from igc_np.app.data import Dataset, load_dataset
from igc_np.app.datasets import TrainingData
from igc_np.step import train_step

FAMILIES = {  # network -> (depth, L, M) small enough for 2 CPU cores; C = L*M for the IGC nets
    "plain": (8, 16, 1), "resnet": (8, 16, 1), "plain_igc": (8, 4, 4), "resnet_igc": (8, 4, 4)}


def digits32(train_size=5000, test_size=1000, seed=0):
    """The CIFAR-like stand-in described in the module docstring: (N, 3, 32, 32) uint8."""
    d = load_dataset("digits")
    rng = np.random.default_rng(seed)

    def make(x, y, n):
        pick = rng.integers(0, len(x), n)
        glyph = np.kron(x[pick, 0].astype(np.float32) / 255.0, np.ones((3, 3), np.float32))
        bg = rng.uniform(0, 255, (n, 3, 1, 1))
        sign = np.where(bg.mean(axis=1, keepdims=True) > 128, -1.0, 1.0)  # dark on light or light on dark
        fg = np.clip(bg + sign * rng.uniform(96, 160, (n, 3, 1, 1)), 0, 255)
        out = np.empty((n, 3, 32, 32), np.float32)
        out[...] = bg
        oy, ox = rng.integers(0, 9, n), rng.integers(0, 9, n)
        for i in range(n):
            g = glyph[i][None]
            out[i, :, oy[i]:oy[i] + 24, ox[i]:ox[i] + 24] = g * fg[i] + (1 - g) * bg[i]
        out += rng.normal(0, 12, out.shape)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), y[pick]

    train_x, train_y = make(d.train_x, d.train_y, train_size)
    test_x, test_y = make(d.test_x, d.test_y, test_size)
    mean = tuple(float(m) for m in train_x.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in train_x.std(axis=(0, 2, 3)))
    return Dataset("digits32", train_x, train_y, test_x, test_y, 10, mean, std, image_size=32)


def statistics_distance(model, saved):
    """How far the running statistics ``saved`` [(mean, var) per BN] are from the model's current
    (precise) ones, in the units that matter to a normalised activation: per channel
    |mean_r - mean_p| / std_p + |log(var_r / var_p)| / 2, averaged over the channels of a layer;
    the largest over the layers."""
    worst = 0.0
    for m, (mean_r, var_r) in zip(evaluation.batch_norms(model), saved):
        mean_p = np.asarray(m.running_mean, np.float64)
        var_p = np.asarray(m.running_var, np.float64) + m.eps
        d = np.abs(np.asarray(mean_r, np.float64) - mean_p) / np.sqrt(var_p) \
            + np.abs(np.log((np.asarray(var_r, np.float64) + m.eps) / var_p)) / 2
        worst = max(worst, float(d.mean()))
    return worst


CHECK = evaluation.CHECK_BATCHES  # training batches the rule looks at


def measure(ds, network, momentum, checkpoints, seed=0, lr=0.1):
    """Rows (t, running top-1, precise top-1) after each t in ``checkpoints`` updates."""
    depth, L, M = FAMILIES[network]
    model = ig.nets.get_network(network, depth, num_classes=ds.num_classes, primary_partition=L,
                                secondary_partition=M, rng=seed)
    for bn in evaluation.batch_norms(model):
        bn.momentum = momentum
    opt = ig.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    data = TrainingData(ds, 64)
    rng = np.random.default_rng(seed)
    rows, t, todo = [], 0, sorted(checkpoints)
    while todo:
        model.train()
        for x, y in data.batches(rng):
            train_step(model, opt, x, y)
            t += 1
            if t == todo[0]:
                todo.pop(0)
                running = evaluation.evaluate_batches(model, data.test_batches()).top1
                # what a rule may look at without the test set: a few training batches in eval
                # mode (running statistics) and in train mode (each batch's own statistics)
                train_r = evaluation.evaluate_batches(model, data.plain_train_batches(CHECK))
                train_b = evaluation.batch_statistics_metrics(model, data.plain_train_batches(CHECK))
                saved = [(m.running_mean.copy(), m.running_var.copy())
                         for m in evaluation.batch_norms(model)]
                with evaluation.precise_bn_statistics(model, data.plain_train_batches(20)):
                    precise = evaluation.evaluate_batches(model, data.test_batches()).top1
                    distance = statistics_distance(model, saved)
                model.train()
                rows.append((t, running, precise, distance, train_r, train_b))
                if not todo:
                    break
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--datasets", default="digits,digits32")
    p.add_argument("--momenta", default="0.9,0.99")
    p.add_argument("--updates", default="5,10,23,46,78,156,312,468")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    checkpoints = [int(s) for s in a.updates.split(",")]
    print("| data set | network | BN momentum | updates t | running top-1 | precise top-1 | gap "
          "| momentum**t | t*(1-momentum) | distance | train top-1 running / batch "
          "| train loss running / batch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.datasets.split(","):
        ds = digits32() if name == "digits32" else load_dataset(name)
        for network in a.families.split(","):
            for momentum in (float(m) for m in a.momenta.split(",")):
                t0 = time.perf_counter()
                for t, running, precise, d, tr, tp in measure(ds, network, momentum, checkpoints,
                                                              a.seed):
                    print(f"| {name} | {network} | {momentum:g} | {t} | {running:.3f} | "
                          f"{precise:.3f} | {precise - running:+.3f} | {momentum ** t:.2g} | "
                          f"{t * (1 - momentum):.1f} | {d:.3f} | {tr.top1:.3f} / {tp.top1:.3f} "
                          f"| {tr.loss:.3f} / {tp.loss:.3f} |", flush=True)
                print(f"# {name} {network} {momentum:g}: {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
