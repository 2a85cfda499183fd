"""The trainer's options: one table, from which everything else about them is derived.

``OPTIONS`` lists every option once: its name, type, default (per data set: ``datasets.REGISTRY``),
valid range, help, and what a resumed run may change. From it come the command line
(``parser()``), the check of a set of options (``check_options``, also run on a checkpoint's stored
options), the completion of what was not given (``complete``; a resumed run takes the checkpoint's
first: ``cli.resolve_options``) and the README's option list (``markdown()``, or ``python -m igc_np.app.options
--markdown``).

What a resume may change (``Option.resume``):

* ``fixed``: decides the parameter shapes or the data; taken from the checkpoint, and given
  again it must be equal;
* ``fixed mid-epoch``: as ``fixed`` when the checkpoint is in the middle of an epoch (the batch
  size: the epoch's batches must be the same), else free;
* ``kept``: taken from the checkpoint unless given again (then the new value wins);
* ``command line``: never taken from a checkpoint (paths, devices): a file being read must not
  decide where the run writes or reads, and the machine may have changed;
* ``command only``: what this command does (resume, download, overwrite); not stored.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from ..nets import IMAGENET_CONFIGS
from .datasets import REGISTRY

NETWORKS = ("plain", "resnet", "plain_igc", "resnet_igc") + tuple(IMAGENET_CONFIGS)  # + ImageNet's five
WITHOUT_IGC = ("plain", "resnet")  # their width is C = L*M; the name shows it as W<C>
# ImageNet models: depth, L and M are what the name says (only for the run folder and the log)
IMAGENET_LM = {"resnet18_c64": (64, 1), "resnet18_c69": (69, 1), "igc_l4m32": (4, 32),
               "igc_l16m16": (16, 16), "igc_l100m2": (100, 2)}
MAX_WIDTH = 4096  # C = L*M channels in the first stage (4C in the last)


class OptionError(ValueError):
    """An option that cannot work; the message names the option and the valid range."""


@dataclass(frozen=True)
class Option:
    """One row of the table. ``valid``: (lo, hi) for an int, (lo, hi, "[)") for a float (which
    ends are included), the choices for a str (a tuple, or the data set registry), None when
    anything goes (paths)."""
    name: str
    type: type
    default: object
    valid: object
    group: str
    resume: str
    help: str
    metavar: str = None
    aliases: tuple = ()
    hint: str = ""  # added to a range error
    shown: str = ""  # the default in words, when it is derived (not a value)

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


_I64 = 2 ** 63 - 1
_O = Option
OPTIONS = (
    # ---- network
    _O("network", str, None, NETWORKS, "network", "fixed",
       "architecture; the five ImageNet models' names fix depth, L and M"),
    _O("depth", int, None, (1, 2000), "network", "fixed",
       "number of layers (plain: 3n+2, resnet: 6n+2)", "N"),
    _O("primary_partition", int, None, (1, 4096), "network", "fixed",
       "primary partitions of every IGC conv; the first stage has C = L*M channels "
       "(plain/resnet: the width is L*M, shown as W<C>)", "L"),
    _O("secondary_partition", int, None, (1, 4096), "network", "fixed",
       "channels per primary partition = secondary partitions", "M"),
    # ---- data
    _O("dataset", str, "digits", REGISTRY, "data", "fixed",  # the registry itself: live
       "the data set (one entry each in igc_np/app/datasets.py)"),
    _O("data_dir", str, None, None, "data", "command line",
       "where the data sets live", "DIR", shown="$IGC_NP_DATA or ./data"),
    _O("download", bool, False, None, "data", "command only", "fetch a missing data set"),
    _O("subset", int, None, (1, 1 << 40), "data", "fixed",
       "train on the first N training images only (quick experiments; the test set stays "
       "complete)", "N", shown="all"),
    _O("image_size", int, None, (32, 1024), "data", "kept",
       "imagenet: the crop (the short sides scale with it)", "S"),
    _O("workers", int, None, (1, 1 << 12), "data", "kept",
       "imagenet: threads decoding and augmenting JPEGs", "W", shown="one per core"),
    # ---- optimisation
    _O("batch_size", int, 64, (1, 1 << 16), "optimisation", "fixed mid-epoch",
       "images per batch (the global batch when data parallel)", "B"),
    _O("num_epochs", int, None, (1, 100_000), "optimisation", "kept", "epochs to train", "E",
       aliases=("--epochs",)),
    _O("lr", float, 0.1, (0.0, 1e6, "(]"), "optimisation", "kept", "initial learning rate"),
    _O("lr_factor", float, 0.1, (0.0, 1.0, "(]"), "optimisation", "kept",
       "multiply the learning rate by this at each step",
       hint=" (it multiplies the learning rate at each step: 0.1 divides it by 10; a negative "
            "factor would climb the loss)"),
    _O("lr_steps", list, None, None, "optimisation", "kept",
       "comma-separated epochs at which to multiply by --lr-factor", "E1,E2,..",
       shown="1/2, 3/4, 7/8 of --num-epochs"),
    _O("momentum", float, 0.9, (0.0, 1.0, "[)"), "optimisation", "kept", "Nesterov momentum"),
    _O("wd", float, 1e-4, (0.0, 1.0, "[]"), "optimisation", "kept",
       "weight decay on every parameter", aliases=("--weight-decay",)),
    _O("rand_seed", int, 0, (0, _I64), "optimisation", "kept",
       "seed of the initialisation and the data order", "S", aliases=("--seed",)),
    _O("dtype", str, "float32", ("float32", "float64"), "optimisation", "fixed",
       "floating-point type of the parameters and batches"),
    _O("eval_bn", str, "auto", ("auto", "running", "precise"), "optimisation", "kept",
       "BN statistics for the test pass: running (the authors' code), precise (recalibrated on "
       "20 training batches, for a copy of the statistics only), auto: precise while the running "
       "ones still hold > 1% of their initial values (short runs of plain nets, BN momentum 0.99)"),
    # ---- output and checkpoints
    _O("log_iters", int, None, (1, 1 << 30), "output and checkpoints", "kept",
       "print speed and metrics every N batches", "N"),
    _O("output_dir", str, None, None, "output and checkpoints", "command line",
       "folder for log.jsonl, the curves and the checkpoints", "DIR",
       shown="the folder of --resume/--model-prefix, else runs/<dataset>-<network><depth>-L<L>M<M> "
             "(-W<C> for plain/resnet; -float64 unless float32)"),
    _O("model_prefix", str, None, None, "output and checkpoints", "command line",
       "checkpoints are <prefix>-<epoch:04d>.npz", "P", shown="<output-dir>/model"),
    _O("checkpoint_every", int, None, (1, 100_000), "output and checkpoints", "kept",
       "save every K epochs, and after the last one", "K"),
    _O("load_epoch", int, None, (0, 100_000), "output and checkpoints", "command only",
       "resume from <model-prefix>-<K:04d>.npz (exactly: same result as a run never stopped)",
       "K"),
    _O("resume", str, None, None, "output and checkpoints", "command only",
       "resume from a checkpoint file, e.g. <prefix>-interrupted.npz; the run goes on in FILE's "
       "folder unless --output-dir says otherwise", "FILE"),
    _O("overwrite", bool, False, None, "output and checkpoints", "command only",
       "start in a folder that holds an earlier run, deleting its log, curves and checkpoints "
       "(without it such a folder is refused)"),
    # ---- device and data parallel
    _O("device", str, None, ("cpu", "cuda", "emu"), "device", "command line",
       "cpu: NumPy; cuda: CuPy and our CUDA kernels; emu: the same kernels run by the CPU "
       "emulator (slow)", shown="cuda if --gpus is given, else cpu"),
    _O("gpus", str, None, None, "device", "command line",
       "GPU ids as in the authors' code, e.g. 0 or 0,1,2,3: with several ids one process per GPU "
       "is started (NCCL), each taking its slice of every batch; under mpiexec the rank with "
       "local rank i uses the i-th id", "IDS"),
    _O("dist", str, "auto", ("auto", "none", "mpi", "nccl"), "data parallel", "command line",
       "how ranks talk: mpi (mpi4py; start with mpiexec -n N or srun), nccl (one process per "
       "GPU), none; auto: nccl for several --gpus (one process each is started) or under "
       "mpiexec/srun with --gpus, mpi under mpiexec/srun without, else none. --batch-size stays "
       "the global batch, cut into near-equal slices, one per rank; gradients are summed (the "
       "mean loss of the whole batch, lr unchanged); BatchNorm per rank; rank 0 writes every file"),
    _O("micro_batches", int, 1, (1, 1 << 16), "data parallel", "command line",
       "cut every batch into K slices run one after another (BatchNorm per slice, gradients "
       "summed in slice order): on one process, the exact twin of K ranks, bit for bit", "K"),
)
BY_NAME = {o.name: o for o in OPTIONS}
STORED = tuple(o.name for o in OPTIONS if o.resume != "command only")  # a checkpoint's ``args``
FROM_CHECKPOINT = tuple(o.name for o in OPTIONS if o.resume in ("fixed", "fixed mid-epoch", "kept"))

DESCRIPTION = ("Train plain / resnet / plain_igc / resnet_igc networks (Interleaved Group "
               "Convolutions, ICCV 2017) on CIFAR-10/100, SVHN, the 8x8 digits, or ImageNet with "
               "its five released models.")
EPILOG = ("Defaults are in [brackets]. When resuming, options left out take the value stored in "
          "the checkpoint, except paths and devices (from this command line only). The console "
          "counts epochs from 0 like the authors' code: the checkpoint written after Epoch[k] is "
          "<prefix>-<k+1:04d>.npz. Ctrl-C or SIGTERM finishes the current batch, saves "
          "<prefix>-interrupted.npz (resume it exactly with --resume) and exits with status 130 "
          "(143 for SIGTERM); a second one quits without saving. Exit status 1: an error, or the "
          "loss became NaN/inf (noticed within --log-iters batches; earlier checkpoints stay "
          "intact). Exit status 2: a bad option. IGC_NP_DEBUG=1 shows the traceback of an "
          "unexpected error.")


# --------------------------------------------------------------------------------------------
# Defaults, as shown in --help and in the markdown table
# --------------------------------------------------------------------------------------------
def default_text(option):
    """'64; imagenet 256' or 'digits 20, cifar10 400, ...': the default, per data set where it
    differs; '' when derived (the help says how)."""
    per_set = {name: entry.defaults[option.name] for name, entry in REGISTRY.items()
               if option.name in entry.defaults and entry.defaults[option.name] is not None}
    if option.default is not None and option.type is not bool:
        others = [f"{n} {v}" for n, v in per_set.items() if v != option.default]
        return "; ".join([str(option.default)] + ([", ".join(others)] if others else []))
    if not per_set:
        return option.shown
    text = ", ".join(f"{n} {v}" for n, v in per_set.items())
    if option.shown:  # derived, except for some data sets
        text = f"{option.shown}; {text}"
    plain = [f"{n} {e.defaults_without_igc[option.name]}" for n, e in REGISTRY.items()
             if option.name in e.defaults_without_igc]
    return text + (f" (plain/resnet: {', '.join(plain)})" if plain else "")


def parser():
    """The argparse parser of the trainer, from ``OPTIONS``. None means "not given": filled in
    by ``resolve_options`` from the checkpoint or the defaults."""
    p = argparse.ArgumentParser(description=DESCRIPTION, epilog=EPILOG)
    groups = {}
    for o in OPTIONS:
        group = groups.get(o.group) or groups.setdefault(o.group, p.add_argument_group(o.group))
        default = default_text(o)
        text = (o.help + (f" [{default}]" if default and o.type is not bool else "")).replace("%", "%%")
        kw = dict(dest=o.name, help=text)
        if o.type is bool:
            kw.update(action="store_true", default=None)
        else:
            kw.update(type={list: str}.get(o.type, o.type), metavar=o.metavar)
            if isinstance(o.valid, (tuple, dict)) and o.type is str:
                kw["choices"] = o.valid
        group.add_argument(o.flag, *o.aliases, **kw)
    return p


def parse_args(argv=None):
    """The command line as an ``argparse.Namespace`` (usage errors exit 2, as argparse does)."""
    p = parser()
    args = p.parse_args(argv)
    if args.load_epoch is not None and args.resume:
        p.error("give --load-epoch or --resume, not both")
    if args.load_epoch is not None and args.load_epoch < 0:
        p.error(f"--load-epoch must be >= 0, got {args.load_epoch}")
    return args


# --------------------------------------------------------------------------------------------
# Checking: the command line's options and a checkpoint's stored copy
# --------------------------------------------------------------------------------------------
def _check_number(option, v, bad):
    if option.type is int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            bad(option, f"must be an integer, got {v!r}")
        lo, hi = option.valid
        if not lo <= v <= hi:
            bad(option, f"must be in {lo}..{hi}, got {v}")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        bad(option, f"must be a finite number, got {v!r}")
    lo, hi, ends = option.valid
    if not ((lo <= v) if ends[0] == "[" else (lo < v)) or not ((v <= hi) if ends[1] == "]" else (v < hi)):
        bad(option, f"must be in {ends[0]}{lo:g}, {hi:g}{ends[1]}, got {v:g}{option.hint}")


def check_options(o, where=""):
    """Raise OptionError (naming the option and its valid range) unless every option is sane.

    ``o`` is the resolved option dict of the trainer (or a checkpoint's stored copy); ``where``
    prefixes messages (a checkpoint). Options that are absent or None are not checked.
    """
    def bad(option, what):
        raise OptionError(f"{where}{option.flag} {what}")

    for option in OPTIONS:
        v = o.get(option.name)
        if option.valid is None or (v is None and option.type is not str) or option.name not in o:
            continue
        if option.type in (int, float):
            _check_number(option, v, bad)
        elif option.name in o and v not in option.valid:
            bad(option, f"must be one of {', '.join(option.valid)}, got {v!r}")
    _check_lr_steps(o.get("lr_steps"), lambda what: bad(BY_NAME["lr_steps"], what))
    K, B = o.get("micro_batches"), o.get("batch_size")
    if isinstance(K, int) and isinstance(B, int) and K > B:
        bad(BY_NAME["micro_batches"], f"{K} is more than --batch-size {B}: every micro-batch "
                                      "needs at least one image (and BatchNorm more than one)")
    L, M = o.get("primary_partition"), o.get("secondary_partition")
    if isinstance(L, int) and isinstance(M, int) and L * M > MAX_WIDTH:
        bad(BY_NAME["primary_partition"], f"x --secondary-partition = C = {L * M} channels in "
                                          f"the first stage ({4 * L * M} in the last); at most "
                                          f"{MAX_WIDTH}")


def _check_lr_steps(steps, bad):
    if steps is None:
        return
    if not isinstance(steps, list) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps):
        bad(f"must be a list of epochs, got {steps!r}")
    if any(s < 1 for s in steps):
        bad(f"must be epochs >= 1 (the step happens before that epoch), got "
            f"{','.join(map(str, steps))}")


# --------------------------------------------------------------------------------------------
# Resolving: what was not given comes from the checkpoint, else the defaults
# --------------------------------------------------------------------------------------------
def default_output_dir(o):
    """runs/<dataset>-<network><depth>-L<L>M<M>: W<C> for plain/resnet (their width C = L*M),
    the model's name alone for ImageNet's five, and -<dtype> unless float32."""
    if o["network"] in IMAGENET_LM:  # the model's name already says its depth, L and M
        name = f"{o['dataset']}-{o['network']}"
    elif o["network"] in WITHOUT_IGC:
        name = f"{o['dataset']}-{o['network']}{o['depth']}-W{o['primary_partition'] * o['secondary_partition']}"
    else:
        name = (f"{o['dataset']}-{o['network']}{o['depth']}-"
                f"L{o['primary_partition']}M{o['secondary_partition']}")
    if o.get("dtype", "float32") != "float32":
        name += f"-{o['dtype']}"
    return os.path.join("runs", name)


def network_label(o):
    """'resnet_igc-8 L=4 M=4', 'resnet-8 width 16' or 'igc_l4m32': what the console calls it."""
    if o["network"] in IMAGENET_LM:
        return o["network"]
    if o["network"] in WITHOUT_IGC:
        return f"{o['network']}-{o['depth']} width {o['primary_partition'] * o['secondary_partition']}"
    return f"{o['network']}-{o['depth']} L={o['primary_partition']} M={o['secondary_partition']}"


def prefix_of(checkpoint_file):
    """runs/x/model-0003.npz -> runs/x/model (the prefix a resume from that file writes with)."""
    head, name = os.path.split(str(checkpoint_file))
    stem = name[:-4] if name.endswith(".npz") else name
    return os.path.join(head, stem.rsplit("-", 1)[0] if "-" in stem else stem)


def complete(o):
    """Fill in what ``o`` (the given and the checkpoint's options) lacks from the defaults, read
    --lr-steps, check everything; returns ``o``. Raises OptionError naming the option."""
    _fill_defaults(o)
    o["lr_steps"] = _lr_steps(o)
    check_options(o)
    return o


def guess_output_dir(o):
    """The folder that ``o`` (options given so far) would train in: for --load-epoch K."""
    guess = dict(o)
    _dataset_defaults(guess)
    return guess.get("output_dir") or default_output_dir(guess)


def _dataset_defaults(o):
    o.setdefault("dataset", BY_NAME["dataset"].default)
    entry = REGISTRY[o["dataset"]]
    if o.get("network", entry.defaults.get("network")) in WITHOUT_IGC \
            and "primary_partition" not in o and "secondary_partition" not in o:
        for key, value in entry.defaults_without_igc.items():
            o.setdefault(key, value)
    for key, value in entry.defaults.items():  # first: ImageNet's batch 256 wins
        o.setdefault(key, value)
    for option in OPTIONS:
        if option.default is not None and option.resume != "command only":
            o.setdefault(option.name, option.default)


def _fill_defaults(o):
    _dataset_defaults(o)
    _imagenet_options(o)
    if "output_dir" not in o:
        o["output_dir"] = (os.path.dirname(o["model_prefix"]) or ".") if "model_prefix" in o \
            else default_output_dir(o)
    o.setdefault("model_prefix", os.path.join(o["output_dir"], "model"))
    o.setdefault("subset", None)
    o.setdefault("data_dir", None)
    o.setdefault("device", "cuda" if o.get("gpus") else "cpu")
    o.setdefault("gpus", None)


def _lr_steps(o):
    """--lr-steps as a sorted list of epochs: 1/2, 3/4 and 7/8 of the epochs unless given."""
    steps, n = o.get("lr_steps"), o["num_epochs"]
    if steps is None:
        return sorted({int(n * f) for f in (1 / 2, 3 / 4, 7 / 8)} - {0}) if isinstance(n, int) else []
    if not isinstance(steps, str):  # a checkpoint's list
        return steps
    try:
        given = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise OptionError(f"--lr-steps must be comma-separated epochs like 200,300,350, "
                          f"got {steps!r}") from None
    steps = sorted(set(given))
    if steps != given:
        print(f"note: --lr-steps {','.join(map(str, given))} read as {','.join(map(str, steps))}",
              file=sys.stderr)
    late = [e for e in steps if isinstance(n, int) and e >= n]
    if late:
        print(f"note: --lr-steps {','.join(map(str, late))} at or after --num-epochs "
              f"{n}: that step never happens in this run", file=sys.stderr)
    return steps


def _imagenet_options(o):
    """The five ImageNet models go with --dataset imagenet (and only there); their name fixes the
    depth and L, M: given options must agree with it."""
    name, imagenet = o["network"], o["dataset"] == "imagenet"
    if (name in IMAGENET_LM) != imagenet:
        raise OptionError(f"--network {name} with --dataset {o['dataset']}: the ImageNet models "
                          f"({', '.join(IMAGENET_LM)}) train on --dataset imagenet, the CIFAR "
                          "networks on the others")
    if not imagenet:
        return
    defaults = REGISTRY["imagenet"].defaults
    implied = dict(depth=18, primary_partition=IMAGENET_LM[name][0],
                   secondary_partition=IMAGENET_LM[name][1])
    for key, value in implied.items():
        if o.get(key) not in (None, value) and o[key] != defaults[key]:
            raise OptionError(f"--{key.replace('_', '-')} {o[key]}: {name} has "
                              f"{key.replace('_', ' ')} {value}")
        o[key] = value


# --------------------------------------------------------------------------------------------
# The README's option list
# --------------------------------------------------------------------------------------------
def _valid_text(option):
    if option.valid is None:
        return "flag" if option.type is bool else ("epochs >= 1" if option.type is list else "a path or text")
    if option.type is int:
        lo, hi = option.valid
        return f"{lo}..{hi}"
    if option.type is float:
        lo, hi, ends = option.valid
        return f"{ends[0]}{lo:g}, {hi:g}{ends[1]}"
    return ", ".join(option.valid)


def markdown():
    """The option table as markdown: flag, default (per data set), valid values, what a resume
    may change, help. The README links or includes it."""
    rows = ["| option | default | valid | on resume | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        flags = ", ".join(f"`{f}`" for f in (o.flag,) + o.aliases)
        cells = [flags, default_text(o) or ("off" if o.type is bool else "none"),
                 _valid_text(o), o.resume, o.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m igc_np.app.options --markdown
    if sys.argv[1:] != ["--markdown"]:
        print("usage: python -m igc_np.app.options --markdown  (the option table for the README)",
              file=sys.stderr)
        raise SystemExit(2)
    sys.stdout.write(markdown())
