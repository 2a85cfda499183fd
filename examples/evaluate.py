#!/usr/bin/env python
"""Evaluate a checkpoint of examples/cifar10_igc.py on its test set.

    python examples/evaluate.py --checkpoint runs/digits-resnet_igc8-L4M4/model-0020.npz
    python examples/evaluate.py --dataset imagenet --model igc_l4m32 --weights seed-0001.params \
        --data-dir data/imagenet       # a released (MXNet) model: top-1 / top-5 on the validation set

The network (architecture, depth, L, M, dtype) and the data set are read from the options stored
in the checkpoint (paths are not: give --data-dir). The BN statistics are chosen as the trainer
chose them for its log (``--eval-bn``, stored), so the printed numbers are the logged ones.
Prints the test loss and top-1 accuracy (and top-5 for 100+ classes). Exit status 1 on a missing,
unreadable or unsuitable checkpoint, 2 on a bad option, with a message naming the file or option.
"""
import argparse
import os
import sys

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import igc_np as ig  # noqa: E402
from igc_np.app.checkpoint import CheckpointError, load_checkpoint, restore  # noqa: E402
from igc_np.app.cli import run_command  # noqa: E402
from igc_np.app import datasets  # noqa: E402
from igc_np.app.evaluation import test_pass  # noqa: E402
from igc_np.app.imagenet import default_workers, imagenet_dir, load_imagenet  # noqa: E402
from igc_np.app.imagenet import evaluate_imagenet  # noqa: E402
from igc_np.app.mxnet_io import load_released  # noqa: E402
from igc_np.app.options import OptionError, network_label  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an igc_np checkpoint on a test set.")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="a <prefix>-<epoch>.npz written by cifar10_igc.py")
    p.add_argument("--model", choices=tuple(ig.nets.IMAGENET_CONFIGS),
                   help="with --weights: one of the five released ImageNet models")
    p.add_argument("--weights", metavar="PARAMS",
                   help="an MXNet .params file of --model (the seed's <prefix>-<epoch>.params), "
                        "evaluated on the ImageNet validation split (short side 256, centre crop 224)")
    p.add_argument("--dataset", choices=tuple(datasets.REGISTRY),
                   help="the test set; must be the one the checkpoint was trained on [that one]")
    p.add_argument("--data-dir", help="where the data sets live [$IGC_NP_DATA or ./data]")
    p.add_argument("--download", action="store_true", help="fetch a missing data set")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size [256]")
    p.add_argument("--eval-bn", choices=("auto", "running", "precise"),
                   help="BN statistics for the test pass (see cifar10_igc.py --help) [the stored one]")
    p.add_argument("--device", choices=("cpu", "cuda", "emu"),
                   help="[cuda if --gpus is given, else cpu]")
    p.add_argument("--gpus", help="GPU id(s); only the first is used")
    args = p.parse_args(argv)
    if bool(args.model) != bool(args.weights):
        p.error("--model and --weights go together")
    if bool(args.checkpoint) == bool(args.weights):
        p.error("give --checkpoint FILE, or --model and --weights (an MXNet .params file)")
    if args.weights and (args.dataset or "imagenet") != "imagenet":
        p.error(f"--weights: the released models are ImageNet models, not --dataset {args.dataset}")
    if not 1 <= args.batch_size <= 1 << 16:
        p.error(f"--batch-size must be in 1..65536, got {args.batch_size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_command(lambda: _evaluate(args))  # errors: one line, exit 1 or 2


def _device(args):
    device = args.device or ("cuda" if args.gpus else "cpu")
    try:
        ig.backend.get_array_module(device)  # fails here, clearly, without CuPy or a GPU
        if device == "cuda" and args.gpus:
            ig.backend.cupy_module().cuda.Device(int(args.gpus.split(",")[0])).use()
    except (RuntimeError, ValueError) as e:
        given = f"--device {device}" + (f" --gpus {args.gpus}" if args.gpus else "")
        raise OptionError(f"{given}: {e}") from None
    return device


def _evaluate_params(args):
    """A released model: its .params into imagenet_model, then the validation split."""
    _check_file("--weights", args.weights)  # before the (long) indexing of the validation set
    data = load_imagenet(imagenet_dir(args.data_dir), val_only=True, workers=default_workers())
    device = _device(args)
    model = load_released(args.model, args.weights, num_classes=data.num_classes)
    model.to(device)
    print(f"Model: {args.model} from {args.weights}")
    print(f"Parameters: {ig.nets.count_params(model)}")
    print(f"Data: {data}")
    m = evaluate_imagenet(model, data.val, args.batch_size, device=device)
    print(f"Test imagenet: {m.count} images  loss {m.loss:.4f}  top1 {m.top1:.4f}  top5 {m.top5:.4f}  "
          f"(error {1 - m.top1:.4f} / {1 - m.top5:.4f}; BN statistics: the file's)")
    return 0


def _check_file(option, path):
    """An option's file must exist and be a file: said at once (exit 1), naming the option and path."""
    if os.path.isdir(path):
        raise CheckpointError(f"{option} {path}: is a folder, not a file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{option} {path}: no such file")


def _evaluate(args):
    if args.weights:
        return _evaluate_params(args)
    if args.checkpoint.endswith(".params"):  # the seed's MXNet weights, not a trainer checkpoint
        raise CheckpointError(f"--checkpoint {args.checkpoint}: an MXNet .params file; evaluate "
                                   "it with --model NAME --weights FILE (NAME: "
                                   f"{', '.join(ig.nets.IMAGENET_CONFIGS)})")
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"--checkpoint: {e}") from None
    o = ckpt.args
    missing = [k for k in ("network", "depth", "primary_partition", "secondary_partition",
                           "dataset") if k not in o]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path}: its stored options lack {missing}")
    dataset = args.dataset or o["dataset"]
    if dataset != o["dataset"]:
        raise CheckpointError(
            f"checkpoint {ckpt.path} was trained on {o['dataset']}; --dataset {dataset} is another "
            "data set (other images, normalisation and classes): its number would mean nothing")
    if ckpt.nonfinite:
        print(f"WARNING: checkpoint {ckpt.path} holds NaN/inf values in "
              f"{', '.join(ckpt.nonfinite[:3])}{' ...' if len(ckpt.nonfinite) > 3 else ''}: "
              "the training had diverged; the numbers below are not those of a usable model",
              file=sys.stderr)
    # ImageNet: the validation transform at the trained crop size (its --subset cuts training only)
    ds = datasets.load(dict(dataset=dataset, data_dir=args.data_dir, image_size=o.get("image_size"),
                            workers=o.get("workers"),
                            subset=None if dataset == "imagenet" else o.get("subset")),
                       download=args.download)
    device = _device(args)
    if o["network"] in ig.nets.IMAGENET_CONFIGS:
        model = ig.nets.imagenet_model(o["network"], num_classes=ds.num_classes)
    else:
        model = ig.nets.get_network(o["network"], o["depth"], num_classes=ds.num_classes,
                                    primary_partition=o["primary_partition"],
                                    secondary_partition=o["secondary_partition"])
    dtype = np.dtype(o.get("dtype", "float32"))
    model.to(device, dtype)
    restore(ckpt, model)  # no optimizer: only the weights and BN statistics
    print(f"Checkpoint: {ckpt.path} ({network_label(o)}, {ckpt.epoch} epochs"
          + (f" + {ckpt.batch} batches" if ckpt.batch else "") + ")")
    print(f"Parameters: {ig.nets.count_params(model)}")
    print(f"Data: {ds}")
    data = datasets.REGISTRY[dataset].source(ds, o.get("batch_size", 64), dtype, device,
                                              test_batch_size=args.batch_size)
    updates = ckpt.epoch * len(data) + ckpt.batch
    m, note = test_pass(model, data, args.eval_bn or o.get("eval_bn", "auto"), updates)
    line = f"Test {dataset}: {m.count} images  loss {m.loss:.4f}  top1 {m.top1:.4f}"
    if ds.num_classes >= 100:
        line += f"  top5 {m.top5:.4f}"
    print(line + f"  (BN statistics: {note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
