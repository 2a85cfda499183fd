"""The trainer's options: valid ranges, and the check that a set of options can work.

``check_options(o)`` raises ``OptionError`` naming the option and its valid range; the command
line (``examples/cifar10_igc.py``) and a checkpoint's stored options (``checkpoint.load_checkpoint``)
both go through it.
"""
from __future__ import annotations

import math

import numpy as np

from ..nets import IMAGENET_CONFIGS
from .data import DATASETS

NETWORKS = ("plain", "resnet", "plain_igc", "resnet_igc") + tuple(IMAGENET_CONFIGS)  # + ImageNet's five


class OptionError(ValueError):
    """An option that cannot work; the message names the option and the valid range."""


# --------------------------------------------------------------------------------------------
# Options: one table of valid values, used for the command line and for a checkpoint's copy
# --------------------------------------------------------------------------------------------
_INT_LIMITS = {  # option: (smallest, largest)
    "depth": (1, 2000), "primary_partition": (1, 4096), "secondary_partition": (1, 4096),
    "batch_size": (1, 1 << 16), "num_epochs": (1, 100_000), "log_iters": (1, 1 << 30),
    "checkpoint_every": (1, 100_000), "subset": (1, 1 << 40), "rand_seed": (0, 2 ** 63 - 1),
    "micro_batches": (1, 1 << 16)}
_FLOAT_LIMITS = {  # option: (lower, upper, lower included)
    "lr": (0.0, 1e6, False), "lr_factor": (0.0, 1.0, False), "momentum": (0.0, 1.0, True),
    "wd": (0.0, 1.0, True)}
MAX_WIDTH = 4096  # C = L*M channels in the first stage (4C in the last)


def _flag(key):
    return "--" + key.replace("_", "-")


def check_options(o, where=""):
    """Raise OptionError (naming the option and its valid range) unless every option is sane.

    ``o`` is the resolved option dict of the trainer; ``where`` prefixes messages (a checkpoint).
    """
    def bad(key, what):
        raise OptionError(f"{where}{_flag(key)} {what}")

    for key, (lo, hi) in _INT_LIMITS.items():
        v = o.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            bad(key, f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            bad(key, f"must be in {lo}..{hi}, got {v}")
    for key, (lo, hi, closed) in _FLOAT_LIMITS.items():
        v = o.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad(key, f"must be a finite number, got {v!r}")
        if not ((lo <= v) if closed else (lo < v)) or v > hi or (key == "momentum" and v >= 1):
            rng = f"{'[' if closed else '('}{lo:g}, {hi:g}{')' if key == 'momentum' else ']'}"
            hint = {"lr_factor": " (it multiplies the learning rate at each step: 0.1 divides "
                                 "it by 10; a negative factor would climb the loss)"}.get(key, "")
            bad(key, f"must be in {rng}, got {v:g}{hint}")
    choices = {"network": NETWORKS, "dataset": DATASETS, "dtype": ("float32", "float64"),
               "eval_bn": ("auto", "running", "precise"), "dist": ("auto", "none", "mpi", "nccl")}
    for key, valid in choices.items():
        if key in o and o[key] not in valid:
            bad(key, f"must be one of {', '.join(valid)}, got {o[key]!r}")
    steps = o.get("lr_steps")
    if steps is not None:
        if not isinstance(steps, list) or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps):
            bad("lr_steps", f"must be a list of epochs, got {steps!r}")
        if any(s < 1 for s in steps):
            bad("lr_steps", f"must be epochs >= 1 (the step happens before that epoch), got "
                            f"{','.join(map(str, steps))}")
    K, B = o.get("micro_batches"), o.get("batch_size")
    if isinstance(K, int) and isinstance(B, int) and K > B:
        bad("micro_batches", f"{K} is more than --batch-size {B}: every micro-batch needs at least "
                             "one image (and BatchNorm more than one)")
    L, M = o.get("primary_partition"), o.get("secondary_partition")
    if isinstance(L, int) and isinstance(M, int) and L * M > MAX_WIDTH:
        bad("primary_partition", f"x --secondary-partition = C = {L * M} channels in the first "
                                 f"stage ({4 * L * M} in the last); at most {MAX_WIDTH}")

