"""benchmarks/gpu_check.sh and bench_gpu.py's results: the one-shot GPU check works before any GPU.

``--dry-run`` runs every stage of the script on tests/fake_cupy.py's CuPy stand-in (our kernels in
the CPU emulator); the real run differs only in what each stage launches. Checked here: every
stage passes, the results come back as at most 8 files of at most 16 MiB, the JSON holds every
figure, a stage over its time limit is cut and recorded while the rest of the run goes on, and
the benchmark writes its JSON after every row and goes on past a failing one.
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import fake_cupy  # noqa: E402


def _run(out, *args, **env):
    e = dict(os.environ, OUT=str(out), **env)
    e.pop("PYTHONPATH", None)  # the script puts the checkout first itself
    t0 = time.monotonic()
    p = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=e, timeout=900)
    return p, time.monotonic() - t0


def test_dry_run_passes_every_stage_and_returns_few_small_files(tmp_path):
    p, seconds = _run(tmp_path, "--dry-run")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert seconds < 8 * 60
    files = sorted(os.listdir(tmp_path))
    assert files == ["bench.json", "gpu_check.json", "gpu_check.log"]
    assert all(os.path.getsize(tmp_path / f) <= 16 << 20 for f in files)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = {s["name"]: s["status"] for s in data["stages"]}
    assert set(stages) == {"probe", "gpu_tests", "memcheck_cifar", "memcheck_imagenet", "racecheck_cifar",
                           "racecheck_imagenet", "bench", "train", "launches", "nccl"}
    assert all(s == "ok" or s.startswith("skipped") for s in stages.values()), stages
    assert data["dry_run"] and data["probe"]["cuda_works"] and data["probe"]["cupy"] == "stand-in"
    rows = data["bench"]["results"]
    assert data["bench"]["complete"] and rows and all("error" not in r for r in rows)
    assert all(r["ours_ms"] > 0 and r["ours_cpu_us"] > 0 for r in rows)
    assert data["train"]["images_per_s"] > 0 and data["train"]["host_copies_in_steps"] == 0
    assert data["launches"]["launches"] > 200 and data["launches"]["syncs"] == 0
    for shape in ("cifar", "imagenet"):
        # every version at the CIFAR shape; the default ones (9 launches) at the ImageNet shape
        assert data[f"memcheck_{shape}"]["failed"] == []
        assert data[f"memcheck_{shape}"]["kernels_run"] > (20 if shape == "cifar" else 8)
    # the log has everything that was printed, stage by stage
    log = (tmp_path / "gpu_check.log").read_text()
    assert "=== bench: ok" in log and "all stages passed" in log


def test_a_stage_over_the_time_budget_is_cut_and_the_json_says_so(tmp_path):
    """BUDGET_S=25: the probe runs, the test stage is cut by `timeout`, the rest are skipped for
    lack of time; the JSON after each stage keeps the probe's figures; exit status 1."""
    # a python whose pytest runs take 60 s: the test stage always outlasts what is left of 25 s,
    # however fast this machine is (the budget, not the load, must decide)
    slow = tmp_path / "slow_python"
    slow.write_text(f'#!/bin/sh\n[ "$1 $2" = "-m pytest" ] && sleep 60\nexec {sys.executable} "$@"\n')
    slow.chmod(0o755)
    p, seconds = _run(tmp_path, "--dry-run", BUDGET_S="25", PYTHON=str(slow))
    assert p.returncode == 1
    assert seconds < 60
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = {s["name"]: s["status"] for s in data["stages"]}
    assert stages["probe"] == "ok" and data["probe"]["cuda_works"]
    assert stages["gpu_tests"] == "timeout"
    assert stages["bench"] == "skipped (no time left)"
    assert "FAILED stages: gpu_tests" in p.stdout


def test_the_script_installs_nothing_when_cupy_imports():
    text = open(SCRIPT).read()
    body = text[text.index("install_if_no_cupy() {"):]
    body = body[:body.index("\n}\n")]
    # the only pip call is after the `import cupy` check, offline, from the wheel folder
    assert body.index('-c "import cupy"') < body.index("return 0") < body.index("pip install")
    assert "--no-index" in body and text.count("pip install") == 1
    assert "PYTHONUNBUFFERED=1" in text and "timeout -k" in text


@pytest.fixture
def bench(monkeypatch):
    fake_cupy.install(monkeypatch)
    import importlib
    bench = importlib.import_module("bench_gpu")
    monkeypatch.setattr(bench, "SHAPES", [("tiny L2M4", 1, 8, 5, 2)])
    monkeypatch.setattr(bench, "find_cudnn", lambda: (None, "no PyTorch with CUDA here"))
    return bench


def test_the_benchmark_writes_its_json_after_every_row_and_goes_on_past_a_failure(bench, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "bench.json"
    seen, real = [], bench.event_timer

    def timer(cupy, fn, loop, repeat):  # the third row fails as a refused launch would
        seen.append(len(json.loads(out.read_text())["results"]))  # the file so far, before the row
        if len(seen) == 3:
            raise RuntimeError("cudaErrorInvalidValue: invalid argument")
        return real(cupy, fn, loop, repeat)
    monkeypatch.setattr(bench, "event_timer", timer)
    results = bench.main(["--loop", "1", "--repeat", "1", "--json", str(out)])
    assert seen[:4] == [0, 1, 2, 3]  # rewritten after each row
    data = json.loads(out.read_text())
    assert data["complete"] and data["results"] == json.loads(json.dumps(results, default=float))
    failed = [r for r in data["results"] if "error" in r]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: cudaErrorInvalidValue: invalid argument"
    assert len(data["results"]) > 10 and all("ours_cpu_us" in r for r in data["results"] if "error" not in r)
