"""examples/cifar10_igc.py --dataset imagenet and examples/evaluate.py on ImageNet, end to end on
a tiny image folder made here (CPU; the models are the full-size ImageNet ones, so these are the
slow ImageNet tests: a few training steps of ResNet-18 at 32x32 crops)."""
import importlib.util
import signal
from pathlib import Path


import igc_np as ig
from igc_np.app import options
from igc_np import mxnet_io
from test_imagenet_data import make_folders
from test_trainer import assert_same_checkpoint

def _scripts():
    root = Path(__file__).resolve().parent.parent

    def load(name, module):
        spec = importlib.util.spec_from_file_location(module, root / "examples" / name)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        return m
    return load("cifar10_igc.py", "cifar10_igc_imagenet"), load("evaluate.py", "evaluate_imagenet")


def test_train_on_imagenet_folders_then_resume_mid_epoch_and_evaluate(tmp_path, monkeypatch, capsys):
    """--dataset imagenet (ResNet-18 C=64 at 32x32 crops, CPU: the fastest of the five to train
    here) on a tiny folder; a Ctrl-C after batch 2 of 3, resumed with --resume, ends bit-identical
    to a run never stopped; evaluate.py reads the result."""
    trainer, evaluator = _scripts()
    data = make_folders(tmp_path / "d", per_class=2)
    common = ["--dataset", "imagenet", "--network", "resnet18_c64", "--data-dir", str(data), "--image-size", "32",
              "--batch-size", "2",
              "--num-epochs", "1", "--lr", "0.01", "--workers", "2", "--eval-bn", "running"]
    assert trainer.main(common + ["--output-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "Network: resnet18_c64-18 L=64 M=1" in out and "lr_steps=[30, 60, 90]" in out

    real_step, calls = ig.optim.SGD.step, []

    def step_then_ctrl_c(self):
        real_step(self)
        calls.append(1)
        if len(calls) == 2:  # epoch 0, batch 2 of 3
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(ig.optim.SGD, "step", step_then_ctrl_c)
    assert trainer.main(common + ["--output-dir", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(ig.optim.SGD, "step", real_step)
    stopped = tmp_path / "b" / "model-interrupted.npz"
    assert trainer.main(["--resume", str(stopped), "--data-dir", str(data)]) == 0
    assert_same_checkpoint(tmp_path / "a" / "model-0001.npz", tmp_path / "b" / "model-0001.npz")

    capsys.readouterr()
    assert evaluator.main(["--checkpoint", str(tmp_path / "a" / "model-0001.npz"), "--data-dir", str(data)]) == 0
    assert "Test imagenet: 6 images" in capsys.readouterr().out


def test_the_trainer_refuses_mixed_networks_and_data(tmp_path, capsys):
    trainer, _ = _scripts()
    assert set(trainer.IMAGENET_LM) == set(ig.nets.IMAGENET_CONFIGS) <= set(options.NETWORKS)
    assert trainer.main(["--dataset", "imagenet", "--network", "resnet_igc", "--output-dir", str(tmp_path)]) == 2
    assert "train on --dataset imagenet" in capsys.readouterr().err
    assert trainer.main(["--dataset", "digits", "--network", "igc_l4m32", "--output-dir", str(tmp_path)]) == 2
    assert trainer.main(["--dataset", "imagenet", "--network", "igc_l4m32", "--primary-partition", "8",
                         "--output-dir", str(tmp_path)]) == 2
    assert "igc_l4m32 has primary partition 4" in capsys.readouterr().err


def test_evaluate_a_released_params_file(tmp_path, capsys):
    _, evaluator = _scripts()
    root = make_folders(tmp_path / "d", per_class=1)
    weights = tmp_path / "seed-0001.params"
    mxnet_io.save_params(ig.nets.imagenet_model("igc_l100m2", num_classes=3, rng=0), weights)
    assert evaluator.main(["--dataset", "imagenet", "--model", "igc_l100m2", "--weights", str(weights),
                           "--data-dir", str(root), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "Test imagenet: 3 images" in out and "top5 1.0000" in out
    weights.write_bytes(weights.read_bytes()[:1000])
    assert evaluator.main(["--model", "igc_l100m2", "--weights", str(weights), "--data-dir", str(root)]) == 1
    assert "seed-0001.params" in capsys.readouterr().err
