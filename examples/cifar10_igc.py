#!/usr/bin/env python
"""Train an IGC network (or a plain / ResNet baseline) with the reference protocol.

    python examples/cifar10_igc.py          # resnet_igc-8 IGC-L4M4 on the 8x8 digits: ~25 s on 2 cores
    python examples/cifar10_igc.py --dataset cifar10 --download \\
        --network resnet_igc --depth 20 --primary-partition 8 --secondary-partition 4
    python examples/cifar10_igc.py --load-epoch 10     # resume exactly after epoch 10

The protocol is the reference code's (IGC_SPEC.md section 4): SGD with Nesterov momentum 0.9,
weight decay 1e-4 on every parameter, learning rate 0.1 divided by 10 at 1/2, 3/4 and 7/8 of the
epochs, batch 64, He-normal conv initialisation, pad-4/crop/mirror augmentation on CIFAR.

Read ``train()`` from top to bottom: data, network, optimizer, (resume), then the epoch loop.
Everything that is not the loop (checkpoint files, metrics, log, curves, Ctrl-C) is in
``igc_np/training.py``.

Numbering follows the reference (MXNet): the console counts epochs from 0 (``Epoch[0]`` is the first
one), and the checkpoint written after it is ``<prefix>-0001.npz``: the number of epochs completed.
``--load-epoch k`` loads ``<prefix>-<k:04d>.npz`` and goes on with ``Epoch[k]``.

Ctrl-C: the current batch is finished, then ``<prefix>-interrupted.npz`` is written: the state after
that batch, with the batch index and the data rng state of the epoch's start, so
``--resume <prefix>-interrupted.npz`` continues *exactly* (the epoch's shuffle is drawn again and the
finished batches skipped). Exit status 130. A second Ctrl-C quits at once without saving; every file
is written atomically, so nothing half-written is ever left behind.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

# run from a source checkout without installing: the package is one folder up
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import igc_np as ig  # noqa: E402
from igc_np import functional as F, training  # noqa: E402
from igc_np.data import DATASETS, DatasetError, iterate_batches, load_dataset  # noqa: E402
from igc_np.training import CheckpointError  # noqa: E402

NETWORKS = ("plain", "resnet", "plain_igc", "resnet_igc")

# Options that depend on the data set. digits is tuned so that the run with no options reaches
# >= 97% test accuracy well inside 2 minutes on 2 CPU cores (~25 s measured); the others are the
# reference's.
DATASET_DEFAULTS = {
    "digits": dict(num_epochs=20, log_iters=10, checkpoint_every=5),
    "cifar10": dict(num_epochs=400, log_iters=50, checkpoint_every=10),
    "cifar100": dict(num_epochs=400, log_iters=50, checkpoint_every=10),
    "svhn": dict(num_epochs=40, log_iters=50, checkpoint_every=1),
}
DEFAULTS = dict(network="resnet_igc", depth=8, primary_partition=4, secondary_partition=4,
                dataset="digits", batch_size=64, lr=0.1, lr_factor=0.1, rand_seed=0, dtype="float32")

# On resume these must equal the checkpoint's: they decide the parameter shapes and the data.
STRUCTURAL = ("network", "depth", "primary_partition", "secondary_partition", "dataset", "subset",
              "dtype")

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


class OptionError(ValueError):
    """A command-line option that cannot work (the message says which and why)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train plain / resnet / plain_igc / resnet_igc networks (Interleaved Group "
                    "Convolutions, ICCV 2017) on CIFAR-10/100, SVHN or the 8x8 digits.",
        epilog="Defaults are in [brackets]. When resuming, options left out take the value stored "
               "in the checkpoint. The console counts epochs from 0 like the reference: the "
               "checkpoint written after Epoch[k] is <prefix>-<k+1:04d>.npz. Ctrl-C finishes the "
               "current batch, saves <prefix>-interrupted.npz (resume it exactly with --resume) and "
               "exits with status 130; a second Ctrl-C quits without saving. Exit status 1: an "
               "error, or the loss became NaN/inf (the run stops; earlier checkpoints stay intact).")
    # None means "not given": filled from the checkpoint or the defaults by resolve_options()
    net = p.add_argument_group("network")
    net.add_argument("--network", choices=NETWORKS, help=f"architecture [{DEFAULTS['network']}]")
    net.add_argument("--depth", type=int, metavar="N", help=f"number of layers (plain: 3n+2, resnet: 6n+2) "
                                              f"[{DEFAULTS['depth']}]")
    net.add_argument("--primary-partition", type=int, metavar="L",
                     help="primary partitions of every IGC conv; the first stage has C = L*M "
                          "channels (plain/resnet: the width is L*M too, so use M=1 there) "
                          f"[{DEFAULTS['primary_partition']}]")
    net.add_argument("--secondary-partition", type=int, metavar="M",
                     help="channels per primary partition = secondary partitions "
                          f"[{DEFAULTS['secondary_partition']}]")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help=f"[{DEFAULTS['dataset']}]")
    data.add_argument("--data-dir", metavar="DIR", help="where the data sets live [$IGC_NP_DATA or ./data]")
    data.add_argument("--download", action="store_true", help="fetch a missing data set")
    data.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only "
                                                "(quick experiments; the test set stays complete)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, metavar="B", help=f"[{DEFAULTS['batch_size']}]")
    opt.add_argument("--num-epochs", type=int, metavar="E",
                     help="[digits 20, cifar10/cifar100 400, svhn 40]")
    opt.add_argument("--lr", type=float, help=f"initial learning rate [{DEFAULTS['lr']}]")
    opt.add_argument("--lr-factor", type=float,
                     help=f"multiply the learning rate by this at each step [{DEFAULTS['lr_factor']}]")
    opt.add_argument("--lr-steps", metavar="E1,E2,..", help="comma-separated epochs at which to multiply by --lr-factor "
                                        "[1/2, 3/4, 7/8 of --num-epochs]")
    opt.add_argument("--rand-seed", type=int, metavar="S", help=f"seed of the initialisation and the data order "
                                                   f"[{DEFAULTS['rand_seed']}]")
    opt.add_argument("--dtype", choices=("float32", "float64"), help=f"[{DEFAULTS['dtype']}]")
    out = p.add_argument_group("output and checkpoints")
    out.add_argument("--log-iters", type=int, metavar="N", help="print speed and metrics every N batches "
                                                  "[digits 10, others 50]")
    out.add_argument("--output-dir", metavar="DIR", help="folder for log.jsonl, the curves and the checkpoints "
                                         "[runs/<dataset>-<network><depth>-L<L>M<M>]")
    out.add_argument("--model-prefix", metavar="P", help="checkpoints are <prefix>-<epoch:04d>.npz "
                                           "[<output-dir>/model]")
    out.add_argument("--checkpoint-every", type=int, metavar="K",
                     help="save every K epochs, and after the last one [digits 5, cifar 10, svhn 1]")
    out.add_argument("--load-epoch", type=int, metavar="K",
                     help="resume from <model-prefix>-<K:04d>.npz (exactly: same result as a run "
                          "never stopped)")
    out.add_argument("--resume", metavar="FILE",
                     help="resume from a checkpoint file, e.g. <prefix>-interrupted.npz")
    dev = p.add_argument_group("device")
    dev.add_argument("--device", choices=("cpu", "cuda", "emu"),
                     help="cpu: NumPy; cuda: CuPy and our CUDA kernels; emu: the same kernels run "
                          "by the CPU emulator (slow) [cuda if --gpus is given, else cpu]")
    dev.add_argument("--gpus", metavar="IDS", help="GPU ids as in the reference, e.g. 0 or 0,1; only the FIRST id "
                                    "is used (igc_np trains on one GPU): "
                                    "cupy.cuda.Device(id).use()")
    args = p.parse_args(argv)
    if args.load_epoch is not None and args.resume:
        p.error("give --load-epoch or --resume, not both")
    return args


def default_output_dir(o):
    return os.path.join("runs", f"{o['dataset']}-{o['network']}{o['depth']}-"
                                f"L{o['primary_partition']}M{o['secondary_partition']}")


def resolve_options(args):
    """Options not given on the command line: the resumed checkpoint's, else the defaults.

    Returns (options as a dict, the Checkpoint to resume from or None).
    """
    o = {k: v for k, v in vars(args).items()
         if v is not None and k not in ("load_epoch", "resume", "download")}
    ckpt = None
    if args.resume or args.load_epoch is not None:
        path = args.resume
        if path is None:  # --load-epoch: the prefix is given, or the default one of these options
            guess = {**DEFAULTS, **o}
            prefix = o.get("model_prefix") or os.path.join(
                o.get("output_dir") or default_output_dir(guess), "model")
            path = training.checkpoint_path(prefix, args.load_epoch)
        ckpt = training.load_checkpoint(path)
        for key in STRUCTURAL + (("batch_size",) if ckpt.batch else ()):
            if key in o and key in ckpt.args and o[key] != ckpt.args[key]:
                raise CheckpointError(
                    f"checkpoint {path} was trained with --{key.replace('_', '-')} "
                    f"{ckpt.args[key]}, this run asks for {o[key]}: leave the option out to resume")
        for key, value in ckpt.args.items():
            if key not in o and key not in ("device", "gpus"):  # those belong to this machine
                o[key] = value
    for key, value in DEFAULTS.items():
        o.setdefault(key, value)
    for key, value in DATASET_DEFAULTS[o["dataset"]].items():
        o.setdefault(key, value)
    o.setdefault("output_dir", default_output_dir(o))
    o.setdefault("model_prefix", os.path.join(o["output_dir"], "model"))
    o.setdefault("subset", None)
    o.setdefault("data_dir", None)
    o.setdefault("device", "cuda" if o.get("gpus") else "cpu")
    o.setdefault("gpus", None)
    # the learning-rate steps: 1/2, 3/4 and 7/8 of the epochs unless given
    steps = o.get("lr_steps")
    if steps is None:
        n = o["num_epochs"]
        steps = sorted({int(n * f) for f in (1 / 2, 3 / 4, 7 / 8)} - {0})
    elif isinstance(steps, str):
        try:
            steps = sorted(int(s) for s in steps.split(",") if s.strip())
        except ValueError:
            raise OptionError(f"--lr-steps must be comma-separated integers, got {steps!r}") from None
    o["lr_steps"] = steps
    for key in ("depth", "primary_partition", "secondary_partition", "batch_size", "num_epochs",
                "log_iters", "checkpoint_every", "subset"):
        if o[key] is not None and o[key] < 1:
            raise OptionError(f"--{key.replace('_', '-')} must be positive, got {o[key]}")
    return o, ckpt


def main(argv=None):
    """Parse the command line and train; returns the exit status (0, 1 or 130)."""
    args = parse_args(argv)
    try:
        opts, ckpt = resolve_options(args)
        return train(opts, ckpt, download=args.download)
    except (CheckpointError, DatasetError, OptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        print("\ninterrupted: quit without saving (checkpoints already on disk are complete)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def train(o, ckpt=None, download=False):
    print("Configuration: " + " ".join(f"{k}={v}" for k, v in sorted(o.items())))

    # ---- device: the model and every batch go there; the code below is the same for all ------
    device = o["device"]
    try:
        ig.backend.get_array_module(device)  # fails here, clearly, without CuPy or a GPU
        if device == "cuda" and o["gpus"]:
            ig.backend.cupy_module().cuda.Device(int(o["gpus"].split(",")[0])).use()
    except (RuntimeError, ValueError) as e:
        raise OptionError(f"--device {device} --gpus {o['gpus']}: {e}") from None

    # ---- data ---------------------------------------------------------------------------------
    ds = load_dataset(o["dataset"], o["data_dir"], download=download, subset=o["subset"])
    print(f"Data: {ds}")
    dtype = np.dtype(o["dtype"])

    # ---- network ------------------------------------------------------------------------------
    # two independent random streams: the initialisation, and the data order/augmentation
    # (only the latter is saved in checkpoints; the former is replaced by the saved weights)
    init_seed, data_seed = np.random.SeedSequence(o["rand_seed"]).spawn(2)
    try:
        model = ig.nets.get_network(o["network"], o["depth"], num_classes=ds.num_classes,
                                    primary_partition=o["primary_partition"],
                                    secondary_partition=o["secondary_partition"],
                                    rng=np.random.default_rng(init_seed))
    except ValueError as e:  # e.g. a depth the architecture cannot have, or C not divisible by L
        raise OptionError(f"cannot build {o['network']}-{o['depth']}: {e}") from None
    model.to(device, dtype)
    print(f"Network: {o['network']}-{o['depth']} L={o['primary_partition']} "
          f"M={o['secondary_partition']} on {device}, {dtype}")
    print(f"Parameters: {ig.nets.count_params(model)}")

    # ---- optimizer: Nesterov SGD, weight decay on every parameter; multi-step schedule ---------
    optimizer = ig.optim.SGD(model.parameters(), lr=o["lr"], momentum=0.9, nesterov=True,
                             weight_decay=1e-4)
    schedule = ig.optim.MultiStepLR(optimizer, o["lr_steps"], factor=o["lr_factor"])
    rng = np.random.default_rng(data_seed)

    # ---- resume: weights, velocities, the data rng, and how far we got ------------------------
    start_epoch, start_batch, train_sums, history = 0, 0, None, []
    if ckpt is not None:
        training.restore(ckpt, model, optimizer)
        rng.bit_generator.state = ckpt.rng_state
        start_epoch, start_batch, history = ckpt.epoch, ckpt.batch, ckpt.history
        train_sums = ckpt.train_sums if ckpt.batch else None
        where = f"Epoch[{start_epoch}] Batch [{start_batch}]" if start_batch else f"Epoch[{start_epoch}]"
        print(f"Resumed from {ckpt.path}: continuing with {where}")

    out_dir = o["output_dir"]
    os.makedirs(out_dir, exist_ok=True)
    print(f"Output: {out_dir} (log.jsonl, loss.png, accuracy.png, "
          f"{os.path.basename(o['model_prefix'])}-NNNN.npz)")
    log = training.JsonLinesLog(os.path.join(out_dir, "log.jsonl"), history)
    last_checkpoint = str(ckpt.path) if ckpt is not None else None
    n_batches = math.ceil(len(ds.train_x) / o["batch_size"])
    show_bar = sys.stdout.isatty() and _have_tqdm()
    top5 = ds.num_classes >= 100  # top-5 is reported for 100+ classes, as in the paper
    elapsed_before = history[-1]["elapsed"] if history else 0.0
    t_start = time.perf_counter()

    def save(path, epoch, batch, epoch_rng_state, sums):
        return str(training.save_checkpoint(
            path, model, optimizer, epoch=epoch, batch=batch, rng_state=epoch_rng_state,
            train_sums=sums, history=history, args=o))

    # ---- the loop -----------------------------------------------------------------------------
    with training.GracefulInterrupt() as interrupt:
        for epoch in range(start_epoch, o["num_epochs"]):
            lr = schedule.step(epoch)
            model.train()
            # the rng state *before* this epoch's shuffle: a mid-epoch checkpoint stores it, and
            # resuming draws the same shuffle again and skips the batches already done
            # (on a mid-epoch resume the rng was set back to exactly that state above)
            epoch_rng_state = rng.bit_generator.state
            metrics = training.Metrics(train_sums)
            t_epoch = tic = time.perf_counter()
            seen = 0
            bar = _progress_bar(n_batches, start_batch, epoch) if show_bar else None
            say = bar.write if bar else print
            batches = iterate_batches(ds.train_x, ds.train_y, o["batch_size"], shuffle=True, rng=rng,
                                      augment=ds.augment, mean=ds.mean, std=ds.std, dtype=dtype,
                                      start_batch=start_batch)
            for b, (xb, yb) in enumerate(batches, start=start_batch):
                x, y = ig.Tensor(xb, device=device), ig.Tensor(yb, device=device)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    # stop before the step: the weights (and the checkpoints) stay as they were
                    if bar:
                        bar.close()
                    print(f"Epoch[{epoch}] Batch [{b + 1}]: the loss is {loss_value}; stopping. The "
                          f"training diverged: is the learning rate ({lr:g}) too high? Last good "
                          f"checkpoint: {last_checkpoint or 'none written yet'}", file=sys.stderr)
                    return EXIT_ERROR
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

                metrics.update(loss_value, logits.numpy(), yb)
                seen += len(yb)
                if bar:  # redrawn by update() at most 10 times a second
                    bar.set_postfix(loss=f"{metrics.loss:.4f}", top1=f"{metrics.top1:.4f}",
                                    refresh=False)
                    bar.update(1)
                if (b + 1) % o["log_iters"] == 0:
                    speed = seen / (time.perf_counter() - tic)
                    say(f"Epoch[{epoch}] Batch [{b + 1}]\tSpeed: {speed:.2f} samples/sec\t"
                        f"loss: {metrics.loss:.6f}\ttop1: {metrics.top1:.6f}")
                    tic, seen = time.perf_counter(), 0
                if interrupt.requested:  # Ctrl-C: this batch is complete, save and leave
                    if bar:
                        bar.close()
                    path = save(f"{o['model_prefix']}-interrupted.npz", epoch, b + 1,
                                epoch_rng_state, metrics.sums)
                    print(f"Saved {path} (Epoch[{epoch}] after batch {b + 1}); continue exactly "
                          f"with:  --resume {path}", file=sys.stderr)
                    return EXIT_INTERRUPTED
            if bar:
                bar.close()
            start_batch, train_sums = 0, None

            # ---- end of epoch: test, log, curves, checkpoint ----------------------------------
            test = training.evaluate(model, ds.test_x, ds.test_y, ds.mean, ds.std,
                                     batch_size=256, device=device, dtype=dtype)
            model.train()
            if not math.isfinite(test.loss):
                print(f"Epoch[{epoch}]: the test loss is {test.loss}; stopping (diverged; is the "
                      f"learning rate {lr:g} too high?). Last good checkpoint: "
                      f"{last_checkpoint or 'none written yet'}", file=sys.stderr)
                return EXIT_ERROR
            now = time.perf_counter()
            record = dict(epoch=epoch, lr=lr, train_loss=metrics.loss, train_top1=metrics.top1,
                          test_loss=test.loss, test_top1=test.top1)
            if top5:
                record.update(train_top5=metrics.top5, test_top5=test.top5)
            record.update(epoch_time=now - t_epoch, elapsed=elapsed_before + now - t_start)
            history.append(record)
            log.append(record)
            print(f"Epoch[{epoch}] lr {lr:g}  train loss {metrics.loss:.4f} top1 {metrics.top1:.4f}"
                  + (f" top5 {metrics.top5:.4f}" if top5 else "")
                  + f"  test loss {test.loss:.4f} top1 {test.top1:.4f}"
                  + (f" top5 {test.top5:.4f}" if top5 else "")
                  + f"  time {record['epoch_time']:.1f}s (total {record['elapsed']:.1f}s)")
            training.plot_curves(history, out_dir)

            done = epoch + 1
            if done % o["checkpoint_every"] == 0 or done == o["num_epochs"] or interrupt.requested:
                last_checkpoint = save(training.checkpoint_path(o["model_prefix"], done), done, 0,
                                       rng.bit_generator.state, np.zeros(4))
                print(f"Saved {last_checkpoint}")
            if interrupt.requested:  # Ctrl-C during the test pass: the epoch is complete and saved
                print(f"Stopped after Epoch[{epoch}]; continue with --load-epoch {done}",
                      file=sys.stderr)
                return EXIT_INTERRUPTED
    if start_epoch >= o["num_epochs"]:
        print(f"Nothing to train: the checkpoint is at epoch {start_epoch} >= --num-epochs "
              f"{o['num_epochs']}")
    return 0


def _have_tqdm():
    try:
        import tqdm  # noqa: F401
        return True
    except ImportError:
        return False


def _progress_bar(total, initial, epoch):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=f"Epoch[{epoch}]", leave=False,
                dynamic_ncols=True, file=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
