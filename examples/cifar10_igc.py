#!/usr/bin/env python
"""Train an IGC network (or a plain / ResNet baseline) with the reference protocol.

    python examples/cifar10_igc.py                      # resnet_igc-8 IGC-L4M4 on the 8x8 digits
    python examples/cifar10_igc.py --dataset cifar10 --download   # resnet_igc-20 IGC-L24M2, CPU
    python examples/cifar10_igc.py --load-epoch 10      # resume exactly after epoch 10
    mpiexec -n 4 python examples/cifar10_igc.py ...     # 4 CPU processes (MPI), one batch split 4 ways
    python examples/cifar10_igc.py --gpus 0,1,2,3 ...   # one process per GPU (NCCL)
    python examples/cifar10_igc.py --micro-batches 4    # one process, bit for bit the 4-rank run
    python examples/cifar10_igc.py --dataset imagenet --data-dir data/imagenet --gpus 0 \
        --network igc_l4m32                              # the seed's ImageNet protocol (section 6)

The protocol is the reference code's (docs/reference_protocol.md): SGD with Nesterov momentum 0.9,
weight decay 1e-4 on every parameter, learning rate 0.1 divided by 10 at 1/2, 3/4 and 7/8 of the
epochs, batch 64, He-normal conv initialisation, pad-4/crop/mirror augmentation on CIFAR.

Read ``train()`` from top to bottom: data, network, optimizer, then the loop, whose step is
``train_step``. Everything around the step (run folder, lock, checkpoints, resume,
metrics, log, curves, Ctrl-C/SIGTERM) is ``igc_np/app/``; examples/minimal_train.py is the
same loop in 40 lines without any of it.

Numbering follows the reference (MXNet): the console counts epochs from 0 (``Epoch[0]`` is the first
one), and the checkpoint written after it is ``<prefix>-0001.npz``: the number of epochs completed.
``--load-epoch k`` loads ``<prefix>-<k:04d>.npz`` and goes on with ``Epoch[k]``.

Files: paths come from the command line only (``--output-dir``, ``--model-prefix``, the folder of
``--resume FILE``), never from a checkpoint. A folder that holds a run is refused unless the run
resumes its own latest checkpoint, or ``--overwrite`` deletes it; a lock keeps a second trainer out.

Ctrl-C or SIGTERM: the current batch is finished, then ``<prefix>-interrupted.npz`` is written: the
state after that batch, with the batch index and the data rng state of the epoch's start, so
``--resume <prefix>-interrupted.npz`` continues *exactly* (the full command is printed). Exit status
130 (SIGINT) or 143 (SIGTERM). A second signal quits at once without saving; every file is written
atomically, so nothing half-written is ever left behind. Data parallel (``--dist``, ``--gpus``
with several ids, ``--micro-batches``; igc_np/app/distributed.py): ``--batch-size`` is the global
batch; a signal on any rank (SIGUSR1 too: Open MPI forwards it, not SIGINT) stops every rank
after the same batch, and rank 0 alone writes files.
"""
import argparse
import os
import shlex
import sys

# The engine reads IGC_NP_THREADS when it is imported: check it first, for a message, not a traceback
_threads = os.environ.get("IGC_NP_THREADS")
if _threads is not None and not (_threads.strip().isdigit() and int(_threads) >= 1):
    print(f"error: IGC_NP_THREADS={_threads!r}: must be a positive integer (the number of CPU "
          "threads), or unset for all cores", file=sys.stderr)
    sys.exit(2)

import numpy as np  # noqa: E402

# run from a source checkout without installing: the package is one folder up
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import igc_np as ig  # noqa: E402
from igc_np.app import distributed  # noqa: E402
from igc_np.app.checkpoint import CheckpointError, checkpoint_path, load_checkpoint  # noqa: E402
from igc_np.app.cli import run_command  # noqa: E402
from igc_np.app.data import DATASETS, DatasetNotFoundError, load_dataset  # noqa: E402
from igc_np.app.imagenet import ImageNetTrainingData, default_workers, imagenet_dir, load_imagenet  # noqa: E402
from igc_np.app.options import NETWORKS, OptionError, check_options  # noqa: E402
from igc_np.app.run import Run, TrainingData  # noqa: E402
from igc_np.app.run_folder import RunFolderError, check_run_folder  # noqa: E402
from igc_np.app.signals import EXIT_USAGE  # noqa: E402
from igc_np.step import train_step  # noqa: E402

# Options that depend on the data set. digits is tuned so that the run with no options reaches
# >= 97% test accuracy well inside 2 minutes on 2 CPU cores; the others are the reference's, with
# its CIFAR network resnet_igc-20 IGC-L24M2 (the network is the same for all three).
_CIFAR_NET = dict(network="resnet_igc", depth=20, primary_partition=24, secondary_partition=2)
DATASET_DEFAULTS = {
    "digits": dict(network="resnet_igc", depth=8, primary_partition=4, secondary_partition=4,
                   num_epochs=20, log_iters=10, checkpoint_every=5),
    "cifar10": dict(_CIFAR_NET, num_epochs=400, log_iters=50, checkpoint_every=10),
    "cifar100": dict(_CIFAR_NET, num_epochs=400, log_iters=50, checkpoint_every=10),
    "svhn": dict(_CIFAR_NET, num_epochs=40, log_iters=50, checkpoint_every=1),
    # the seed's train_imagenet.py: batch 256, lr 0.1 x 0.1 every 30 epochs, 120 epochs (its
    # options.py says 100); the network is the paper's best, IGC-L100M2 (the name fixes L, M, depth)
    "imagenet": dict(network="igc_l100m2", depth=18, primary_partition=100, secondary_partition=2,
                     batch_size=256, num_epochs=120, lr_steps="30,60,90", log_iters=50, checkpoint_every=1,
                     image_size=224, workers=None),
}
# ImageNet models: depth, L and M are what the name says (only for the run folder and the log)
IMAGENET_LM = {"resnet18_c64": (64, 1), "resnet18_c69": (69, 1), "igc_l4m32": (4, 32),
               "igc_l16m16": (16, 16), "igc_l100m2": (100, 2)}
DEFAULTS = dict(dataset="digits", batch_size=64, lr=0.1, lr_factor=0.1, momentum=0.9, wd=1e-4,
                rand_seed=0, dtype="float32", eval_bn="auto", dist="auto", micro_batches=1)

# On resume these must equal the checkpoint's: they decide the parameter shapes and the data.
STRUCTURAL = ("network", "depth", "primary_partition", "secondary_partition", "dataset", "subset",
              "dtype")
# Never taken from a checkpoint: paths (a file being read must not decide where we write or
# read) and the machine's devices.
NOT_FROM_CHECKPOINT = ("output_dir", "model_prefix", "data_dir", "device", "gpus", "dist",
                       "micro_batches")
COMMAND_ONLY = ("load_epoch", "resume", "download", "overwrite")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train plain / resnet / plain_igc / resnet_igc networks (Interleaved Group "
                    "Convolutions, ICCV 2017) on CIFAR-10/100, SVHN, the 8x8 digits, or ImageNet with "
                    "its five reference models.",
        epilog="Defaults are in [brackets]. When resuming, options left out take the value stored "
               "in the checkpoint, except paths and devices (from this command line only). The "
               "console counts epochs from 0 like the reference: the checkpoint written after "
               "Epoch[k] is <prefix>-<k+1:04d>.npz. Ctrl-C or SIGTERM finishes the current batch, "
               "saves <prefix>-interrupted.npz (resume it exactly with --resume) and exits with "
               "status 130 (143 for SIGTERM); a second one quits without saving. Exit status 1: an "
               "error, or the loss became NaN/inf (noticed within --log-iters batches; earlier "
               "checkpoints stay intact). Exit status 2: a bad option. IGC_NP_DEBUG=1 shows the "
               "traceback of an unexpected error.")
    # None means "not given": filled from the checkpoint or the defaults by resolve_options()
    net = p.add_argument_group("network")
    net.add_argument("--network", choices=NETWORKS,
                     help="architecture [resnet_igc; digits: depth 8 L4M4, cifar/svhn: depth 20 L24M2; "
                          "imagenet: igc_l100m2, one of the five ImageNet models, whose name fixes depth, L, M]")
    net.add_argument("--depth", type=int, metavar="N", help="number of layers (plain: 3n+2, resnet: 6n+2) "
                                                            "[digits 8, others 20]")
    net.add_argument("--primary-partition", type=int, metavar="L",
                     help="primary partitions of every IGC conv; the first stage has C = L*M "
                          "channels (plain/resnet: the width is L*M too, so use M=1 there) "
                          "[digits 4, others 24]")
    net.add_argument("--secondary-partition", type=int, metavar="M",
                     help="channels per primary partition = secondary partitions [digits 4, others 2]")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help=f"[{DEFAULTS['dataset']}]")
    data.add_argument("--data-dir", metavar="DIR", help="where the data sets live [$IGC_NP_DATA or ./data]")
    data.add_argument("--download", action="store_true", help="fetch a missing data set")
    data.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only "
                                                              "(quick experiments; the test set stays complete)")
    data.add_argument("--image-size", type=int, metavar="S",
                      help="imagenet: the crop (the short sides scale with it) [224, the seed's]")
    data.add_argument("--workers", type=int, metavar="W",
                      help="imagenet: threads decoding and augmenting JPEGs [one per core]")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, metavar="B", help=f"[{DEFAULTS['batch_size']}; imagenet 256]")
    opt.add_argument("--num-epochs", "--epochs", type=int, metavar="E", dest="num_epochs",
                     help="[digits 20, cifar10/cifar100 400, svhn 40, imagenet 120 (lr steps 30,60,90)]")
    opt.add_argument("--lr", type=float, help=f"initial learning rate [{DEFAULTS['lr']}]")
    opt.add_argument("--lr-factor", type=float,
                     help=f"multiply the learning rate by this at each step, in (0, 1] "
                          f"[{DEFAULTS['lr_factor']}]")
    opt.add_argument("--lr-steps", metavar="E1,E2,..", help="comma-separated epochs at which to multiply by "
                                                            "--lr-factor [1/2, 3/4, 7/8 of --num-epochs]")
    opt.add_argument("--momentum", type=float, help=f"Nesterov momentum [{DEFAULTS['momentum']}]")
    opt.add_argument("--wd", "--weight-decay", type=float, dest="wd",
                     help=f"weight decay on every parameter [{DEFAULTS['wd']}]")
    opt.add_argument("--rand-seed", "--seed", type=int, metavar="S", dest="rand_seed",
                     help=f"seed of the initialisation and the data order [{DEFAULTS['rand_seed']}]")
    opt.add_argument("--dtype", choices=("float32", "float64"), help=f"[{DEFAULTS['dtype']}]")
    opt.add_argument("--eval-bn", choices=("auto", "running", "precise"),
                     help="BN statistics for the test pass: running (the reference), precise "
                          "(recalibrated on 20 training batches, for a copy of the statistics only), "
                          "auto: precise while the running ones still hold > 1%% of their initial "
                          "values (short runs of plain nets, BN momentum 0.99) [auto]")
    out = p.add_argument_group("output and checkpoints")
    out.add_argument("--log-iters", type=int, metavar="N", help="print speed and metrics every N batches "
                                                                "[digits 10, others 50]")
    out.add_argument("--output-dir", metavar="DIR",
                     help="folder for log.jsonl, the curves and the checkpoints [the folder of "
                          "--resume/--model-prefix, else runs/<dataset>-<network><depth>-L<L>M<M>]")
    out.add_argument("--model-prefix", metavar="P", help="checkpoints are <prefix>-<epoch:04d>.npz "
                                                         "[<output-dir>/model]")
    out.add_argument("--checkpoint-every", type=int, metavar="K",
                     help="save every K epochs, and after the last one [digits 5, cifar 10, svhn 1, imagenet 1]")
    out.add_argument("--load-epoch", type=int, metavar="K",
                     help="resume from <model-prefix>-<K:04d>.npz (exactly: same result as a run "
                          "never stopped)")
    out.add_argument("--resume", metavar="FILE",
                     help="resume from a checkpoint file, e.g. <prefix>-interrupted.npz; the run "
                          "goes on in FILE's folder unless --output-dir says otherwise")
    out.add_argument("--overwrite", action="store_true",
                     help="start in a folder that holds an earlier run, deleting its log, curves "
                          "and checkpoints (without it such a folder is refused)")
    dev = p.add_argument_group("device")
    dev.add_argument("--device", choices=("cpu", "cuda", "emu"),
                     help="cpu: NumPy; cuda: CuPy and our CUDA kernels; emu: the same kernels run "
                          "by the CPU emulator (slow) [cuda if --gpus is given, else cpu]")
    dev.add_argument("--gpus", metavar="IDS",
                     help="GPU ids as in the reference, e.g. 0 or 0,1,2,3: with several ids one "
                          "process per GPU is started (NCCL), each taking its slice of every "
                          "batch; under mpiexec the rank with local rank i uses the i-th id")
    par = p.add_argument_group("data parallel (the reference's --gpus / --kv-store dist_sync)")
    par.add_argument("--dist", choices=("auto", "none", "mpi", "nccl"),
                     help="how ranks talk: mpi (mpi4py; start with mpiexec -n N or srun), nccl "
                          "(one process per GPU), none; auto: nccl for several --gpus (one "
                          "process each is started) or under mpiexec/srun with --gpus, mpi under "
                          "mpiexec/srun without, else none [auto]. --batch-size "
                          "stays the global batch, cut into near-equal slices, one per rank; "
                          "gradients are summed (the mean loss of the whole batch, lr unchanged); "
                          "BatchNorm per rank; rank 0 writes every file")
    par.add_argument("--micro-batches", type=int, metavar="K",
                     help="cut every batch into K slices run one after another (BatchNorm per "
                          "slice, gradients summed in slice order): on one process, the exact "
                          "twin of K ranks, bit for bit [1]")
    args = p.parse_args(argv)
    if args.load_epoch is not None and args.resume:
        p.error("give --load-epoch or --resume, not both")
    if args.load_epoch is not None and args.load_epoch < 0:
        p.error(f"--load-epoch must be >= 0, got {args.load_epoch}")
    return args


def default_output_dir(o):
    if o["network"] in IMAGENET_LM:  # the model's name already says its depth, L and M
        return os.path.join("runs", f"{o['dataset']}-{o['network']}")
    return os.path.join("runs", f"{o['dataset']}-{o['network']}{o['depth']}-"
                                f"L{o['primary_partition']}M{o['secondary_partition']}")


def prefix_of(checkpoint_file):
    """runs/x/model-0003.npz -> runs/x/model (the prefix a resume from that file writes with)."""
    head, name = os.path.split(str(checkpoint_file))
    stem = name[:-4] if name.endswith(".npz") else name
    return os.path.join(head, stem.rsplit("-", 1)[0] if "-" in stem else stem)


def resolve_options(args):
    """Options not given on the command line: the resumed checkpoint's, else the defaults.

    Paths are never taken from the checkpoint. Returns (options as a dict, the Checkpoint to
    resume from or None); raises OptionError / CheckpointError with a message.
    """
    o = {k: v for k, v in vars(args).items() if v is not None and k not in COMMAND_ONLY}
    ckpt = None
    if args.resume or args.load_epoch is not None:
        path = args.resume
        if path is None:  # --load-epoch: the prefix is given, or derived from the output folder
            guess = {**DEFAULTS, **DATASET_DEFAULTS[o.get("dataset", DEFAULTS["dataset"])], **o}
            prefix = o.get("model_prefix") or os.path.join(
                o.get("output_dir") or default_output_dir(guess), "model")
            path = checkpoint_path(prefix, args.load_epoch)
        ckpt = load_checkpoint(path)
        if ckpt.nonfinite:
            raise CheckpointError(
                f"checkpoint {path} holds NaN/inf values ({', '.join(ckpt.nonfinite[:3])}"
                f"{' ...' if len(ckpt.nonfinite) > 3 else ''}): not a state to resume from; "
                "resume an earlier checkpoint")
        for key in STRUCTURAL + (("batch_size",) if ckpt.batch else ()):
            if key in o and key in ckpt.args and o[key] != ckpt.args[key]:
                raise CheckpointError(
                    f"checkpoint {path} was trained with --{key.replace('_', '-')} "
                    f"{ckpt.args[key]}, this run asks for {o[key]}: leave the option out to resume")
        for key, value in ckpt.args.items():
            if key not in o and key not in NOT_FROM_CHECKPOINT and key in _KNOWN:
                o[key] = value
        if args.resume and "model_prefix" not in o and "output_dir" not in o:
            o["model_prefix"] = prefix_of(args.resume)  # go on beside the file given
    o.setdefault("dataset", DEFAULTS["dataset"])
    for key, value in DATASET_DEFAULTS[o["dataset"]].items():  # first: ImageNet's batch 256 wins
        o.setdefault(key, value)
    for key, value in DEFAULTS.items():
        o.setdefault(key, value)
    _imagenet_options(o)
    if "output_dir" not in o:
        o["output_dir"] = (os.path.dirname(o["model_prefix"]) or ".") if "model_prefix" in o \
            else default_output_dir(o)
    o.setdefault("model_prefix", os.path.join(o["output_dir"], "model"))
    o.setdefault("subset", None)
    o.setdefault("data_dir", None)
    o.setdefault("device", "cuda" if o.get("gpus") else "cpu")
    o.setdefault("gpus", None)
    # the learning-rate steps: 1/2, 3/4 and 7/8 of the epochs unless given
    steps = o.get("lr_steps")
    if steps is None:
        n = o["num_epochs"]
        steps = sorted({int(n * f) for f in (1 / 2, 3 / 4, 7 / 8)} - {0}) if isinstance(n, int) else []
    elif isinstance(steps, str):
        try:
            given = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise OptionError(f"--lr-steps must be comma-separated epochs like 200,300,350, "
                              f"got {steps!r}") from None
        steps = sorted(set(given))
        if steps != given:
            print(f"note: --lr-steps {','.join(map(str, given))} read as {','.join(map(str, steps))}",
                  file=sys.stderr)
        late = [e for e in steps if isinstance(o.get("num_epochs"), int) and e >= o["num_epochs"]]
        if late:
            print(f"note: --lr-steps {','.join(map(str, late))} at or after --num-epochs "
                  f"{o['num_epochs']}: that step never happens in this run", file=sys.stderr)
    o["lr_steps"] = steps
    check_options(o)
    return o, ckpt


_KNOWN = set(DEFAULTS) | set(DATASET_DEFAULTS["digits"]) | set(DATASET_DEFAULTS["imagenet"]) | set(STRUCTURAL) \
    | {"lr_steps"}


def _imagenet_options(o):
    """The five ImageNet models go with --dataset imagenet (and only there); their name fixes the
    depth and L, M: given options must agree with it."""
    name, imagenet = o["network"], o["dataset"] == "imagenet"
    if (name in IMAGENET_LM) != imagenet:
        raise OptionError(f"--network {name} with --dataset {o['dataset']}: the ImageNet models "
                          f"({', '.join(IMAGENET_LM)}) train on --dataset imagenet, the CIFAR networks "
                          "on the others")
    if not imagenet:
        return
    implied = dict(depth=18, primary_partition=IMAGENET_LM[name][0], secondary_partition=IMAGENET_LM[name][1])
    for key, value in implied.items():
        if o.get(key) not in (None, value) and o[key] != DATASET_DEFAULTS["imagenet"][key]:
            raise OptionError(f"--{key.replace('_', '-')} {o[key]}: {name} has {key.replace('_', ' ')} {value}")
        o[key] = value
    if o.get("image_size") is not None and not 32 <= o["image_size"] <= 1024:
        raise OptionError(f"--image-size must be in 32..1024, got {o['image_size']}")


def resume_command(o, path, comm=None):
    """The command line that continues exactly from ``path`` (printed after Ctrl-C)."""
    cmd = ["python", os.path.relpath(os.path.abspath(__file__)), "--resume", str(path)]
    if comm is not None and comm.kind == "mpi":  # any world size resumes exactly; this one:
        cmd = ["mpiexec", "-n", str(comm.size)] + cmd
    if o.get("micro_batches", 1) > 1:
        cmd += ["--micro-batches", str(o["micro_batches"])]
    if os.path.normpath(prefix_of(path)) != os.path.normpath(o["model_prefix"]):
        cmd += ["--model-prefix", o["model_prefix"]]
    if os.path.normpath(os.path.dirname(o["model_prefix"]) or ".") != os.path.normpath(o["output_dir"]):
        cmd += ["--output-dir", o["output_dir"]]
    for key in ("data_dir", "device", "gpus"):  # not stored for reuse: give them again
        if o.get(key) is not None and not (key == "device" and o[key] == "cpu"):
            cmd += [f"--{key.replace('_', '-')}", str(o[key])]
    return shlex.join(cmd)


class _QuietPipe:
    """A stream that stops writing once its reader is gone (``... | head -1``): the training
    goes on and its checkpoints are written; only the console output is dropped."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def _broke(self):
        self.broken = True
        try:  # the interpreter flushes the real stream at exit: point it at /dev/null
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        if not self.broken:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._broke()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv=None):
    """Parse the command line and train; returns the exit status (0, 1, 2, 130 or 143)."""
    args = parse_args(argv)  # usage errors: argparse prints one line and exits with 2
    try:  # --gpus 0,1,..: this process only starts the ranks
        if distributed.should_spawn(args.dist or "auto", args.gpus):
            return distributed.spawn(args.gpus, [os.path.abspath(__file__)]
                                     + list(sys.argv[1:] if argv is None else argv))
    except distributed.DistError as e:  # e.g. --gpus x
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _QuietPipe(sys.stdout), _QuietPipe(sys.stderr)

    def body():
        opts, ckpt = resolve_options(args)
        return train(opts, ckpt, download=args.download, overwrite=args.overwrite)
    try:
        return run_command(body)  # errors: one line, exit 1 or 2 (see --help)
    finally:
        sys.stdout, sys.stderr = saved


def train(o, ckpt=None, download=False, overwrite=False):
    print("Configuration: " + " ".join(f"{k}={v}" for k, v in sorted(o.items())))

    # ---- device: the model and every batch go there; the code below is the same for all ------
    device = o["device"]
    try:
        ig.backend.get_array_module(device)  # fails here, clearly, without CuPy or a GPU
        # the ranks: MPI, NCCL or this process alone; threads per rank; a GPU per rank
        comm = distributed.init(o["dist"], gpus=o["gpus"] if device == "cuda" else None)
        if comm.size == 1 and device == "cuda" and o["gpus"]:
            ig.backend.cupy_module().cuda.Device(int(o["gpus"].split(",")[0])).use()
    except (RuntimeError, ValueError) as e:
        raise OptionError(f"--device {device} --gpus {o['gpus']} --dist {o['dist']}: {e}") from None
    if not comm.is_root:  # rank 0 alone writes the console lines (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    data_parallel = comm.size > 1 or o["micro_batches"] > 1
    if data_parallel:
        print(f"Data parallel: {comm.size} {comm.kind} rank(s) x {o['micro_batches']} "
              f"micro-batch(es) of the global batch {o['batch_size']}, "
              f"{ig.ops.parallel.THREADS} thread(s) per rank")

    # a quick answer before loading data: is the output folder usable (writable, no other run)?
    # (rank 0's folder: the others write nothing)
    distributed.root_first(comm, lambda: check_run_folder(
        o["output_dir"], o["model_prefix"], ckpt, overwrite), (RunFolderError, OSError))

    # ---- data ---------------------------------------------------------------------------------
    try:
        if o["dataset"] == "imagenet":  # JPEGs streamed from disk (igc_np/app/imagenet.py)
            ds = load_imagenet(imagenet_dir(o["data_dir"]), subset=o["subset"], image_size=o["image_size"],
                               workers=o.get("workers") or default_workers())
        else:
            ds = load_dataset(o["dataset"], o["data_dir"], download=download, subset=o["subset"])
    except DatasetNotFoundError as e:
        stored = ckpt.args.get("data_dir") if ckpt is not None else None
        if isinstance(stored, str) and stored != o["data_dir"]:  # a hint only: never used as a path
            raise DatasetNotFoundError(f"{e}\n(the checkpoint was trained with --data-dir "
                                       f"{stored!r}: give --data-dir again to resume)") from None
        raise
    print(f"Data: {ds}")
    dtype = np.dtype(o["dtype"])
    if o["dataset"] == "imagenet":
        data = ImageNetTrainingData(ds, o["batch_size"], dtype, device)
    else:
        data = TrainingData(ds, o["batch_size"], dtype, device)

    # ---- network ------------------------------------------------------------------------------
    # two independent random streams: the initialisation, and the data order/augmentation
    # (only the latter is saved in checkpoints; the former is replaced by the saved weights)
    init_seed, data_seed = np.random.SeedSequence(o["rand_seed"]).spawn(2)
    try:
        if o["network"] in IMAGENET_LM:
            model = ig.nets.imagenet_model(o["network"], num_classes=ds.num_classes,
                                           rng=np.random.default_rng(init_seed))
        else:
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
    optimizer = ig.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], nesterov=True,
                             weight_decay=o["wd"])
    schedule = ig.optim.MultiStepLR(optimizer, o["lr_steps"], factor=o["lr_factor"])

    # ---- the loop: the step is train_step; Run restores a checkpoint and writes every file ----
    run = Run(o, model, optimizer, data, ckpt, rng=np.random.default_rng(data_seed),
                       resume_command=lambda path: resume_command(o, path, comm),
                       overwrite=overwrite, comm=comm)
    with run:
        for epoch in run.epochs():
            lr = schedule.step(epoch)
            for x, y in run.batches(epoch):
                if data_parallel:  # x, y: this rank's slice; reduction over ranks, the same step
                    run.after_step(distributed.dp_step(model, optimizer, x, y, comm,
                                                       o["micro_batches"],
                                                       stop=run.interrupt.requested,
                                                       global_batch=run.batch_rows))
                    continue
                loss, logits = train_step(model, optimizer, x, y)
                run.after_batch(loss, logits, y)  # metrics stay on the device; Ctrl-C checked
            run.end_epoch(epoch, lr)              # test, log.jsonl, curves, checkpoint
    return run.status


if __name__ == "__main__":
    sys.exit(main())
