"""Where igc_np finds libnvrtc (igc_np/kernels/nvrtc.py): NVIDIA's cuda.pathfinder, every wheel layout.

CUDA 12's wheel puts libnvrtc in ``site-packages/nvidia/cuda_nvrtc/lib``, CUDA 13's in
``site-packages/nvidia/cu13/lib`` beside ``libnvrtc-builtins.so.13.x``, which libnvrtc needs at
its first compile. The CUDA 13 test builds a fresh virtual environment holding only the CUDA 13
wheel and cuda-pathfinder (pip, from the index or its cache; skipped when pip cannot fetch them).
"""
import os
import subprocess
import sys

import pytest

from igc_np.kernels import nvrtc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVRTC_PY = os.path.join(ROOT, "igc_np", "kernels", "nvrtc.py")
KERNEL = 'extern "C" __global__ void fill(float* x) { x[threadIdx.x] = 1.0f; }'

pathfinder = pytest.importorskip("cuda.pathfinder", reason="cuda-pathfinder is in the test extra")


def test_libnvrtc_is_the_one_cuda_pathfinder_finds_and_it_compiles():
    try:
        expect = pathfinder.load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception as e:  # no NVRTC wheel at all: nothing to compare
        pytest.skip(f"no libnvrtc installed: {e}")
    lib = nvrtc.load()
    assert lib is not None, nvrtc.why_not()
    assert lib._igc_path == expect and lib._igc_found_by.startswith("cuda.pathfinder")
    ptx, _, _ = nvrtc.compile_ptx(KERNEL, "compute_80")
    assert ".entry fill" in ptx


def test_without_any_nvrtc_the_error_names_what_to_install(monkeypatch):
    monkeypatch.setattr(nvrtc, "_lib", None)
    monkeypatch.setattr(pathfinder, "load_nvidia_dynamic_lib",
                        lambda name: (_ for _ in ()).throw(pathfinder.DynamicLibNotFoundError(
                            f"Failure finding {name}")))
    assert nvrtc.load() is None and "Failure finding nvrtc" in nvrtc.why_not()
    with pytest.raises(nvrtc.NVRTCError, match="cuda.pathfinder found no libnvrtc.*pip install "
                                               "cuda-pathfinder and one of nvidia-cuda-nvrtc"):
        nvrtc.compile_ptx(KERNEL)


PROBE = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("nvrtc", {NVRTC_PY!r})
nvrtc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nvrtc)
lib = nvrtc.load()
if lib is None:
    sys.exit("no libnvrtc: " + str(nvrtc.why_not()))
ptx, _, _ = nvrtc.compile_ptx({KERNEL!r}, "compute_90")
print(lib._igc_path, nvrtc.version(), ".entry fill" in ptx)
"""


def test_the_cuda13_wheel_layout_is_found_with_its_builtins(tmp_path):
    """A venv with only nvidia-cuda-nvrtc 13 (nvidia/cu13/lib) and cuda-pathfinder: libnvrtc.so.13
    is found and compiles (the old folder list found nothing there; libnvrtc loaded alone fails on
    libnvrtc-builtins.so.13.x at the first compile)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--disable-pip-version-check", "--retries", "0", "--timeout", "20", "--target", site,
                              "nvidia-cuda-nvrtc>=13,<14", "cuda-pathfinder>=1.3.4"],
                             capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("pip took over 300 s to fetch the CUDA 13 NVRTC wheel")
    if got.returncode != 0:
        pytest.skip(f"pip cannot fetch the CUDA 13 NVRTC wheel here: {got.stderr.strip()[-300:]}")
    assert os.path.isdir(os.path.join(site, "nvidia", "cu13", "lib"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH",
                                                            "CUDA_HOME", "CUDA_PATH")}
    r = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    path, rest = r.stdout.strip().split(" ", 1)
    assert path.startswith(os.path.join(site, "nvidia", "cu13", "lib")), r.stdout
    assert rest.startswith("(13,") and rest.endswith("True"), r.stdout

