"""``python -m igc_np``: what this machine can run, and the train / evaluate / predict commands.

    python -m igc_np                      # version, devices (and why one is unusable), threads, MPI
    python -m igc_np train [OPTIONS]      # examples/cifar10_igc.py (python -m igc_np train --help)
    python -m igc_np evaluate --checkpoint runs/digits-resnet_igc8-L4M4/model-0020.npz
    python -m igc_np predict --checkpoint runs/.../model-0020.npz digit.png x.npy --top-k 5

Installed as the console command ``igc_np`` too. Errors are one line (exit 1; 2 for a bad usage);
IGC_NP_DEBUG=1 shows the traceback.
"""
import argparse
import importlib.metadata
import os
import platform
import runpy
import shutil
import sys

import numpy as np

import igc_np as ig
from igc_np.app.cli import run_command
from igc_np.app.predict import (BN_STATISTICS, PredictError, load_images, load_trained, predict,
                                 top_k)
from igc_np.emu import loader as emu_loader
from igc_np.ops import parallel

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPTS = {"train": "cifar10_igc.py", "evaluate": "evaluate.py"}


# ---- the report ---------------------------------------------------------------------------------
def _distribution(prefix):
    """'name version' of the installed distributions whose name starts with ``prefix``."""
    found = sorted({f"{d.metadata['Name']} {d.version}" for d in importlib.metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith(prefix)})
    return ", ".join(found)


def device_report():
    """[(device, usable, detail)] for cpu, cuda and emu: what runs here, and why not."""
    rows = [("cpu", True, f"NumPy {np.__version__}, {parallel.THREADS} threads "
                          "(IGC_NP_THREADS sets them)")]
    cupy = _distribution("cupy")
    if not cupy:
        rows.append(("cuda", False, "CuPy is not installed: pip install -e '.[cuda]' "
                                    "(cupy-cuda12x[ctk]) on a machine with an NVIDIA GPU"))
    else:
        reason = ig.backend.cuda_unavailable_reason()  # compiles and runs a probe kernel once
        rows.append(("cuda", reason is None, f"{cupy}" + (f": {reason}" if reason else
                                                          ": a probe kernel ran")))
    try:
        cxx = emu_loader._compiler()  # the emulator's C++ compiler ($CXX or g++), Linux only
        version = emu_loader._compiler_version(cxx).splitlines()
        rows.append(("emu", True, f"{cxx} ({version[0] if version else 'version unknown'}); "
                                  "slow: for reading and testing the .cu kernels"))
    except Exception as e:  # EmulatorCompileError names what is missing
        rows.append(("emu", False, str(e)))
    return rows


def mpi_report():
    """One line: can this machine start data-parallel ranks?"""
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    mpi4py = _distribution("mpi4py")
    if mpi4py and mpiexec:
        return f"{mpi4py}, {mpiexec}: mpiexec -n 2 python examples/cifar10_igc.py"
    missing = [what for what, have in (("mpi4py", mpi4py), ("mpiexec", mpiexec)) if not have]
    return f"not available ({' and '.join(missing)} missing): pip install -e '.[dist]'"


def report():
    print(f"igc_np {ig.__version__} (Python {platform.python_version()}, NumPy {np.__version__}, "
          f"{platform.system()} {platform.machine()})")
    print("devices:")
    for device, ok, detail in device_report():
        print(f"  {device:5s} {'yes' if ok else 'no '}  {detail}")
    print(f"threads: {parallel.THREADS} (of {os.cpu_count()} cores)")
    print(f"MPI: {mpi_report()}")
    print("commands: python -m igc_np train | evaluate | predict  (each with --help)")
    return 0


# ---- the commands -------------------------------------------------------------------------------
def run_script(name, argv):
    """Run examples/<script> with ``argv`` as its arguments; its exit status."""
    path = os.path.join(EXAMPLES, SCRIPTS[name])
    if not os.path.isfile(path):
        print(f"error: python -m igc_np {name} runs {path}, which is not there: the examples/ "
              "folder comes with a source checkout (git clone, then pip install -e .)",
              file=sys.stderr)
        return 1
    saved = sys.argv
    sys.argv = [f"python -m igc_np {name}", *argv]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _predict(args):
    try:
        model = load_trained(args.checkpoint, device=args.device, data_dir=args.data_dir,
                             bn_statistics=args.bn_statistics)
        spec = model.input_spec
        x, names = load_images(args.images, spec)  # errors name the file
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    probs = predict(model, x)
    width = max(len(c) for c in spec.classes)
    for name, row in zip(names, probs):
        print(name)
        for rank, (cls, p) in enumerate(top_k(row, spec.classes, args.top_k), start=1):
            print(f"  {rank}. {cls:<{width}s}  {p:.4f}")
    return 0


def parser():
    p = argparse.ArgumentParser(
        prog="python -m igc_np", description="igc_np: Interleaved Group Convolutions from scratch. "
        "Without a command: the version, the devices this machine can use (and why not), threads, MPI.")
    sub = p.add_subparsers(dest="command", metavar="{train,evaluate,predict}")
    sub.add_parser("train", help="train a network (examples/cifar10_igc.py; its options after "
                                 "'train', see 'train --help')", add_help=False)
    sub.add_parser("evaluate", help="evaluate a checkpoint on its test set (examples/evaluate.py)",
                   add_help=False)
    pr = sub.add_parser("predict", help="classify image files (PNG/JPEG, any size) or .npy arrays "
                                        "with a trained model")
    pr.add_argument("--checkpoint", required=True, metavar="FILE",
                    help="a model-NNNN.npz written by the trainer")
    pr.add_argument("images", nargs="+", metavar="IMAGE",
                    help="PNG/JPEG files (resized to the data set's size) or .npy arrays on 0..255")
    pr.add_argument("--top-k", type=int, default=5, help="classes shown per image [5]")
    pr.add_argument("--device", choices=ig.backend.DEVICES, default="cpu", help="[cpu]")
    pr.add_argument("--bn-statistics", choices=BN_STATISTICS, default="as-tested",
                    help="BatchNorm statistics: those of the trainer's last test pass (precise ones "
                         "are recomputed on training images), the stored running ones, or precise "
                         "[as-tested]")
    pr.add_argument("--data-dir", help="where the run's data set is, for precise statistics "
                                       "[$IGC_NP_DATA or ./data; the digits need none]")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SCRIPTS:  # every option (and --help) goes to the script itself
        return run_script(argv[0], argv[1:])
    args = parser().parse_args(argv)  # exit 2 with usage on a bad command line
    if args.command is None:
        return report()
    if args.top_k < 1:
        parser().error(f"--top-k must be >= 1, got {args.top_k}")
    return run_command(lambda: _predict(args))  # errors: one line, exit 1 (2 for options)


if __name__ == "__main__":
    sys.exit(main())
