"""Every data set by name: the in-memory ones (``data.py``) and ImageNet, streamed (``imagenet.py``).

``load_dataset("cifar10")`` returns a ``data.Dataset`` (arrays in memory);
``load_dataset("imagenet")`` an ``imagenet.ImageNet`` (JPEGs read batch by batch). This module sits
above both, so that ``data.py`` needs no ImageNet code (and ImageNet's module can use ``data.py``).
"""
from __future__ import annotations

import argparse

from . import data
from .imagenet import imagenet_dir, load_imagenet

__all__ = ["load_dataset", "main"]


def load_dataset(name, data_dir=None, download=False, subset=None):
    """The data set ``name`` (one of ``data.DATASETS``); arguments as ``data.load_dataset``."""
    if isinstance(name, str) and name.lower() == "imagenet":
        if subset is not None and (int(subset) != subset or subset < 1):
            raise ValueError(f"subset must be a positive integer, got {subset!r}")
        return load_imagenet(imagenet_dir(data_dir), subset=subset)
    return data.load_dataset(name, data_dir, download=download, subset=subset)


def main(argv=None):
    """``python -m igc_np.data cifar10 --data-dir data --download``: fetch and check a data set."""
    p = argparse.ArgumentParser(description="Download and check an igc_np data set.")
    p.add_argument("dataset", choices=data.DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    args = p.parse_args(argv)
    print(load_dataset(args.dataset, args.data_dir, download=args.download))


if __name__ == "__main__":
    main()
