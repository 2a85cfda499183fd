"""Every data set the trainer knows, by name: one registry entry each.

An entry says how to load the data set (``load(options, download)``), how the training loop reads it
(``source(data set, batch_size, dtype, device)``: batches of Tensors) and the trainer's defaults for
it (network, depth, L, M, epochs, ...). ``load_dataset(name)`` is the same registry for Python users.
The in-memory data sets are read by ``data.py``, ImageNet is streamed by ``imagenet.py``; this module
sits above both (``data.py`` needs no ImageNet code). Adding a data set: docs/add_a_dataset.md.
"""
from __future__ import annotations

import argparse
import sys
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..autograd import Tensor
from . import data
from .data import DatasetNotFoundError, iterate_batches
from .imagenet import ImageNetTrainingData, default_workers, imagenet_dir, load_imagenet

__all__ = ["DataSet", "REGISTRY", "TrainingData", "load", "source", "load_dataset", "main"]


class TrainingData:
    """The data source of a run: an in-memory ``data.Dataset`` cut into batches.

    The loop needs only ``batches(rng, start_batch)``, ``len()``, ``test_batches()`` and the
    attributes ``name``, ``num_classes`` and ``train_size``; a streamed source (e.g. JPEG files,
    ``imagenet.ImageNetTrainingData``) provides the same.
    """

    def __init__(self, dataset, batch_size, dtype=np.float32, device="cpu", test_batch_size=256):
        self.dataset, self.batch_size, self.dtype, self.device = dataset, batch_size, dtype, device
        self.test_batch_size = test_batch_size
        self.name, self.num_classes = dataset.name, dataset.num_classes
        self.train_size = len(dataset.train_x)

    def __len__(self):
        """Batches per epoch (the last one may be smaller)."""
        return math.ceil(self.train_size / self.batch_size)

    def _tensors(self, batches):
        for xb, yb in batches:
            yield Tensor(xb, device=self.device), Tensor(yb, device=self.device)

    def batches(self, rng, start_batch=0, part=None):
        """(x, y) Tensors of one shuffled, augmented epoch; ``rng`` is advanced by the epoch.

        Restoring ``rng`` to its state before a call and passing ``start_batch=k`` gives the same
        batches k, k+1, ... again (the resume of a mid-epoch checkpoint). part=(rank, size): only
        this data-parallel rank's rows of each batch (``iterate_batches``), the rng advanced as
        for the whole batch.
        """
        ds = self.dataset
        return self._tensors(iterate_batches(
            ds.train_x, ds.train_y, self.batch_size, shuffle=True, rng=rng, augment=ds.augment,
            mean=ds.mean, std=ds.std, dtype=self.dtype, start_batch=start_batch, part=part))

    def plain_train_batches(self, count):
        """The first ``count`` training batches in file order, not augmented (for precise BN)."""
        ds = self.dataset
        it = iterate_batches(ds.train_x, ds.train_y, self.batch_size, mean=ds.mean, std=ds.std,
                             dtype=self.dtype)
        return self._tensors(b for _, b in zip(range(count), it))

    def test_batches(self):
        ds = self.dataset
        return self._tensors(iterate_batches(ds.test_x, ds.test_y, self.test_batch_size,
                                             mean=ds.mean, std=ds.std, dtype=self.dtype))

    def test_len(self):
        return math.ceil(len(self.dataset.test_x) / self.test_batch_size)


@dataclass(frozen=True)
class DataSet:
    """One registry entry. ``load(o, download)`` -> the data set (``o``: the trainer's options:
    ``data_dir``, ``subset``, ...); ``source(ds, batch_size, dtype, device)`` -> what the loop
    iterates; ``defaults``: trainer options for this data set; ``defaults_without_igc``: those
    that differ for the plain / resnet baselines (their width is L*M)."""
    load: Callable
    source: Callable = TrainingData
    defaults: dict = field(default_factory=dict)
    defaults_without_igc: dict = field(default_factory=dict)


def _in_memory(name):
    """The loader of one of data.py's data sets."""
    return lambda o, download: data.load_dataset(name, o.get("data_dir"), download=download,
                                                 subset=o.get("subset"))


def _imagenet(o, download):
    return load_imagenet(imagenet_dir(o.get("data_dir")), subset=o.get("subset"),
                         image_size=o.get("image_size") or 224,
                         workers=o.get("workers") or default_workers())


# the authors' CIFAR network resnet_igc-20 IGC-L24M2 (the network is the same for all three)
_CIFAR_NET = dict(network="resnet_igc", depth=20, primary_partition=24, secondary_partition=2)

REGISTRY = {
    # tuned so that the run with no options reaches >= 97% test accuracy well inside 2 minutes on
    # 2 CPU cores; the baselines get the classic ResNet width 16 (L16 M1: C = 16, 32, 64)
    "digits": DataSet(_in_memory("digits"), defaults=dict(
        network="resnet_igc", depth=8, primary_partition=4, secondary_partition=4, num_epochs=20,
        log_iters=10, checkpoint_every=5),
        defaults_without_igc=dict(primary_partition=16, secondary_partition=1)),
    "cifar10": DataSet(_in_memory("cifar10"), defaults=dict(
        _CIFAR_NET, num_epochs=400, log_iters=50, checkpoint_every=10)),
    "cifar100": DataSet(_in_memory("cifar100"), defaults=dict(
        _CIFAR_NET, num_epochs=400, log_iters=50, checkpoint_every=10)),
    "svhn": DataSet(_in_memory("svhn"), defaults=dict(
        _CIFAR_NET, num_epochs=40, log_iters=50, checkpoint_every=1)),
    # the seed's train_imagenet.py: batch 256, lr 0.1 x 0.1 every 30 epochs, 120 epochs (its
    # options.py says 100); the network is the paper's best, IGC-L100M2 (the name fixes L, M, depth)
    "imagenet": DataSet(_imagenet, source=ImageNetTrainingData, defaults=dict(
        network="igc_l100m2", depth=18, primary_partition=100, secondary_partition=2,
        batch_size=256, num_epochs=120, lr_steps="30,60,90", log_iters=50, checkpoint_every=1,
        image_size=224, workers=None)),
}


def load(o, download=False, ckpt=None):
    """The data set of the options ``o`` (``o["dataset"]``); a missing one says where it was
    looked for, and the --data-dir of the checkpoint being resumed when that differs."""
    try:
        ds = REGISTRY[o["dataset"]].load(o, download)
    except DatasetNotFoundError as e:
        stored = ckpt.args.get("data_dir") if ckpt is not None else None
        if isinstance(stored, str) and stored != o.get("data_dir"):  # a hint, never used as a path
            raise DatasetNotFoundError(f"{e}\n(the checkpoint was trained with --data-dir "
                                       f"{stored!r}: give --data-dir again to resume)") from None
        raise
    subset = o.get("subset")
    if isinstance(ds, data.Dataset) and subset is not None and subset < len(ds.train_x):
        ds.train_x, ds.train_y = ds.train_x[:subset].copy(), ds.train_y[:subset].copy()
    return ds


def source(o, ds, device):
    """What the training loop iterates: batches of ``o["batch_size"]`` on ``device``."""
    return REGISTRY[o["dataset"]].source(ds, o["batch_size"], np.dtype(o["dtype"]), device)


def load_dataset(name, data_dir=None, download=False, subset=None):
    """The data set ``name`` (a key of ``REGISTRY``): a ``data.Dataset`` in memory, or ImageNet
    streamed from disk; ``subset=N`` keeps the first N training images."""
    key = name.lower() if isinstance(name, str) else name
    if key not in REGISTRY:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(REGISTRY)}")
    if subset is not None and (int(subset) != subset or subset < 1):
        raise ValueError(f"subset must be a positive integer, got {subset!r}")
    return load(dict(dataset=key, data_dir=data_dir, subset=subset), download)


def main(argv=None):
    """``python -m igc_np.data cifar10 --data-dir data --download``: fetch and check a data set."""
    p = argparse.ArgumentParser(description="Download and check an igc_np data set.")
    p.add_argument("dataset", choices=tuple(REGISTRY))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    args = p.parse_args(argv)
    try:
        print(load_dataset(args.dataset, args.data_dir, download=args.download))
    except (OSError, ValueError, ImportError) as e:  # DatasetError is both; one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
