"""examples/minimal_train.py: the first example a newcomer reads must run and learn."""
import importlib.util
from pathlib import Path

import numpy as np

import igc_np as ig
from igc_np import functional as F, training

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "minimal_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("minimal_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minimal_train_learns_the_digits(capsys):
    accuracy = _load().main(epochs=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("epoch 1")
    assert accuracy > 0.9  # chance is 0.1; two epochs reach ~0.97


def test_minimal_train_stays_minimal():
    code = [line for line in SCRIPT.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 50, len(code)


def test_train_step_is_the_minimal_loops_step():
    """training.train_step (the trainer's step) == forward, loss, zero_grad, backward, step."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    nets = [ig.nets.get_network("resnet_igc", 8, num_classes=4, primary_partition=2,
                                secondary_partition=2, rng=1) for _ in range(2)]
    opts = [ig.optim.SGD(n.parameters()) for n in nets]
    loss_a, _ = training.train_step(nets[0], opts[0], ig.Tensor(x), ig.Tensor(y))
    loss_b = F.cross_entropy(nets[1](ig.Tensor(x)), ig.Tensor(y))
    opts[1].zero_grad()
    loss_b.backward()
    opts[1].step()
    assert loss_a.item() == loss_b.item()
    for (n, a), (_, b) in zip(nets[0].state_dict().items(), nets[1].state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=n)


def _run(*args):
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent.parent))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_minimal_train_help_prints_usage_and_does_not_train():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--epochs" in r.stdout
    assert "epoch 0" not in r.stdout  # it used to ignore --help and train


def test_minimal_train_refuses_unknown_and_bad_arguments():
    r = _run("--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    r = _run("--epochs", "0")
    assert r.returncode == 2 and "--epochs must be >= 1" in r.stderr
    assert "Traceback" not in r.stderr
