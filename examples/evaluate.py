#!/usr/bin/env python
"""Evaluate a checkpoint of examples/cifar10_igc.py on a test set.

    python examples/evaluate.py --checkpoint runs/digits-resnet_igc8-L4M4/model-0020.npz

The network (architecture, depth, L, M, dtype) and the data set are read from the options stored
in the checkpoint; --dataset evaluates on another data set with the same number of classes.
Prints the test loss and top-1 accuracy (and top-5 for 100+ classes). Exit status 1 on a missing
or unreadable checkpoint, with a message naming the file.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import igc_np as ig  # noqa: E402
from igc_np import training  # noqa: E402
from igc_np.data import DATASETS, DatasetError, load_dataset  # noqa: E402
from igc_np.training import CheckpointError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an igc_np checkpoint on a test set.")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a <prefix>-<epoch>.npz written by cifar10_igc.py")
    p.add_argument("--dataset", choices=DATASETS,
                   help="the test set [the one the checkpoint was trained on]")
    p.add_argument("--data-dir", help="where the data sets live [the checkpoint's, else "
                                      "$IGC_NP_DATA or ./data]")
    p.add_argument("--download", action="store_true", help="fetch a missing data set")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size [256]")
    p.add_argument("--device", choices=("cpu", "cuda", "emu"),
                   help="[cuda if --gpus is given, else cpu]")
    p.add_argument("--gpus", help="GPU id(s); only the first is used")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        ckpt = training.load_checkpoint(args.checkpoint)
        o = ckpt.args
        dataset = args.dataset or o["dataset"]
        data_dir = args.data_dir if args.data_dir is not None else o.get("data_dir")
        ds = load_dataset(dataset, data_dir, download=args.download)
        device = args.device or ("cuda" if args.gpus else "cpu")
        ig.backend.get_array_module(device)  # fails here, clearly, without CuPy or a GPU
        if device == "cuda" and args.gpus:
            ig.backend.cupy_module().cuda.Device(int(args.gpus.split(",")[0])).use()
        model = ig.nets.get_network(o["network"], o["depth"], num_classes=ds.num_classes,
                                    primary_partition=o["primary_partition"],
                                    secondary_partition=o["secondary_partition"])
        dtype = np.dtype(o.get("dtype", "float32"))
        model.to(device, dtype)
        training.restore(ckpt, model)  # no optimizer: only the weights and BN statistics
    except (CheckpointError, DatasetError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"error: checkpoint {args.checkpoint}: its stored options lack {e}", file=sys.stderr)
        return 1
    print(f"Checkpoint: {ckpt.path} ({o['network']}-{o['depth']} L={o['primary_partition']} "
          f"M={o['secondary_partition']}, {ckpt.epoch} epochs"
          + (f" + {ckpt.batch} batches" if ckpt.batch else "") + ")")
    print(f"Parameters: {ig.nets.count_params(model)}")
    print(f"Data: {ds}")
    m = training.evaluate(model, ds.test_x, ds.test_y, ds.mean, ds.std,
                          batch_size=args.batch_size, device=device, dtype=dtype)
    line = f"Test {dataset}: {m.count} images  loss {m.loss:.4f}  top1 {m.top1:.4f}"
    if ds.num_classes >= 100:
        line += f"  top5 {m.top5:.4f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
