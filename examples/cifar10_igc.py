#!/usr/bin/env python
"""Train an IGC network (or a plain / ResNet baseline) with the protocol of the authors' code.

    python examples/cifar10_igc.py                      # resnet_igc-8 IGC-L4M4 on the 8x8 digits
    python examples/cifar10_igc.py --dataset cifar10 --download   # resnet_igc-20 IGC-L24M2, CPU
    python examples/cifar10_igc.py --load-epoch 10      # resume exactly after epoch 10
    mpiexec -n 4 python examples/cifar10_igc.py ...     # 4 CPU processes (MPI), one batch split 4 ways
    python examples/cifar10_igc.py --gpus 0,1,2,3 ...   # one process per GPU (NCCL)
    python examples/cifar10_igc.py --dataset imagenet --data-dir data/imagenet --gpus 0 \
        --network igc_l4m32                              # the seed's ImageNet protocol (section 6)

The protocol is the authors' (docs/reference_protocol.md): SGD with Nesterov momentum 0.9, weight
decay 1e-4 on every parameter, learning rate 0.1 divided by 10 at 1/2, 3/4 and 7/8 of the epochs,
batch 64, He-normal conv initialisation, pad-4/crop/mirror augmentation on CIFAR.

Read ``train()`` from top to bottom: device, data, network, optimizer, then the loop with its
step (forward, loss, backward, update), the test pass and the checkpoint. The options (one table:
``igc_np/app/options.py``, ``--help``) and everything around the loop (run folder and its lock,
resume, progress, log, curves, Ctrl-C/SIGTERM: ``igc_np/app/run.py``) are named calls;
examples/minimal_train.py is the same loop in 40 lines without any of it.

Numbering follows the authors' code (MXNet): the console counts epochs from 0 (``Epoch[0]`` is the
first), and the checkpoint written after it is ``<prefix>-0001.npz``: the number of epochs
completed. ``--load-epoch k`` loads ``<prefix>-<k:04d>.npz`` and goes on with ``Epoch[k]``.

Files: paths come from the command line only (``--output-dir``, ``--model-prefix``, the folder of
``--resume FILE``), never from a checkpoint. A folder that holds a run is refused unless the run
resumes its own latest checkpoint, or ``--overwrite`` deletes it; a lock keeps a second trainer out.

Ctrl-C or SIGTERM: the current batch is finished, then ``<prefix>-interrupted.npz`` is written (the
state after that batch, the batch index and the data rng state of the epoch's start), so
``--resume <prefix>-interrupted.npz`` continues *exactly* (the full command is printed). Exit status
130 (SIGINT) or 143 (SIGTERM); a second signal quits at once without saving. Data parallel
(``--dist``, ``--gpus`` with several ids, ``--micro-batches``; igc_np/app/distributed.py):
``--batch-size`` is the global batch; a signal on any rank stops every rank after the same batch,
and rank 0 alone writes files.
"""
import os
import sys

import numpy as np  # noqa: E402

# run from a source checkout without installing: the package is one folder up
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import igc_np as ig  # noqa: E402
from igc_np import functional as F  # noqa: E402
from igc_np.app import cli, datasets  # noqa: E402
from igc_np.app.distributed import dp_step  # noqa: E402
from igc_np.app.options import IMAGENET_LM, OptionError, network_label  # noqa: E402
from igc_np.app.run import Run, check_folder_first, start_ranks  # noqa: E402


def main(argv=None):
    """Parse the command line and train; returns the exit status (0, 1, 2, 130 or 143)."""
    return cli.main(train, argv, script=__file__)


def build_model(o, num_classes, seed):
    """The network the options name, initialised from ``seed`` (a SeedSequence)."""
    rng = np.random.default_rng(seed)
    try:
        if o["network"] in IMAGENET_LM:  # one of the five released ImageNet models
            return ig.nets.imagenet_model(o["network"], num_classes=num_classes, rng=rng)
        return ig.nets.get_network(o["network"], o["depth"], num_classes=num_classes,
                                   primary_partition=o["primary_partition"],
                                   secondary_partition=o["secondary_partition"], rng=rng)
    except ValueError as e:  # e.g. a depth the architecture cannot have, or C not divisible by L
        raise OptionError(f"cannot build {o['network']}-{o['depth']}: {e}") from None


def train(o, ckpt=None, download=False, overwrite=False):
    """Train with the resolved options ``o`` (resuming ``ckpt``); returns the exit status."""
    print("Configuration: " + " ".join(f"{k}={v}" for k, v in sorted(o.items())))

    # ---- device: the model and every batch go there; the code below is the same for all ------
    device = o["device"]
    comm, data_parallel = start_ranks(o)         # MPI / NCCL ranks, or this process alone
    check_folder_first(o, ckpt, overwrite, comm)  # writable, no other run: before loading data

    # ---- data ---------------------------------------------------------------------------------
    ds = datasets.load(o, download, ckpt)   # igc_np/app/datasets.py: one entry per data set
    print(f"Data: {ds}")
    data = datasets.source(o, ds, device)   # batches of Tensors on the device

    # ---- network ------------------------------------------------------------------------------
    # two independent random streams: the initialisation, and the data order/augmentation
    # (only the latter is saved in checkpoints; the former is replaced by the saved weights)
    init_seed, data_seed = np.random.SeedSequence(o["rand_seed"]).spawn(2)
    model = build_model(o, ds.num_classes, init_seed)
    dtype = np.dtype(o["dtype"])
    model.to(device, dtype)
    print(f"Network: {network_label(o)} on {device}, {dtype}")
    print(f"Parameters: {ig.nets.count_params(model)}")

    # ---- optimizer: Nesterov SGD, weight decay on every parameter; multi-step schedule ---------
    optimizer = ig.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], nesterov=True,
                             weight_decay=o["wd"])
    schedule = ig.optim.MultiStepLR(optimizer, o["lr_steps"], factor=o["lr_factor"])

    # ---- the loop: Run restores a checkpoint, keeps the folder's lock and writes every file ---
    run = Run(o, model, optimizer, data, ckpt, rng=np.random.default_rng(data_seed),
              resume_command=lambda path: cli.resume_command(o, path, comm, __file__),
              overwrite=overwrite, comm=comm)
    with run:
        for epoch in run.epochs():
            lr = schedule.step(epoch)
            for x, y in run.batches(epoch):
                if data_parallel:  # x, y: this rank's slice; reduction over ranks, the same step
                    run.after_step(dp_step(model, optimizer, x, y, comm, o["micro_batches"],
                                           stop=run.interrupt.requested,
                                           global_batch=run.batch_rows))
                    continue
                logits = model(x)                    # forward
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()                      # backward
                optimizer.step()                     # update
                run.after_batch(loss, logits, y)     # metrics stay on the device; Ctrl-C checked
            test, statistics = run.test(epoch)       # test set (statistics: which BN ones)
            run.report(epoch, lr, test, statistics)  # console, log.jsonl
            run.save(epoch)                          # checkpoint, curves; stops after a Ctrl-C
    return run.status


if __name__ == "__main__":
    sys.exit(main())
