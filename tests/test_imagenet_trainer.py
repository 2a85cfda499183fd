"""examples/cifar10_igc.py --dataset imagenet and examples/evaluate.py on ImageNet, end to end on
a tiny image folder made here (CPU; the models are the full-size ImageNet ones, so these are the
slow ImageNet tests: a few training steps of ResNet-18 at 32x32 crops)."""
import signal

import commands
import igc_np as ig
from igc_np import mxnet_io
from igc_np.app import options
from test_imagenet_data import make_folders
from test_trainer import assert_same_checkpoint



def test_train_on_imagenet_folders_then_resume_mid_epoch_and_evaluate(tmp_path, monkeypatch, capsys):
    """--dataset imagenet (ResNet-18 C=64 at 32x32 crops, CPU: the fastest of the five to train
    here) on a tiny folder; a Ctrl-C after batch 2 of 3, resumed with --resume, ends bit-identical
    to a run never stopped; evaluate.py reads the result."""
    data = make_folders(tmp_path / "d", per_class=2)
    common = ["--dataset", "imagenet", "--network", "resnet18_c64", "--data-dir", str(data), "--image-size", "32",
              "--batch-size", "2",
              "--num-epochs", "1", "--lr", "0.01", "--workers", "2", "--eval-bn", "running"]
    assert commands.train(common + ["--output-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "Network: resnet18_c64 on cpu" in out and "lr_steps=[30, 60, 90]" in out

    real_step, calls = ig.optim.SGD.step, []

    def step_then_ctrl_c(self):
        real_step(self)
        calls.append(1)
        if len(calls) == 2:  # epoch 0, batch 2 of 3
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(ig.optim.SGD, "step", step_then_ctrl_c)
    assert commands.train(common + ["--output-dir", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(ig.optim.SGD, "step", real_step)
    stopped = tmp_path / "b" / "model-interrupted.npz"
    assert commands.train(["--resume", str(stopped), "--data-dir", str(data)]) == 0
    assert_same_checkpoint(tmp_path / "a" / "model-0001.npz", tmp_path / "b" / "model-0001.npz")

    capsys.readouterr()
    assert commands.evaluate(["--checkpoint", str(tmp_path / "a" / "model-0001.npz"), "--data-dir", str(data)]) == 0
    assert "Test imagenet: 6 images" in capsys.readouterr().out


def test_the_trainer_refuses_mixed_networks_and_data(tmp_path, capsys):
    assert set(options.IMAGENET_LM) == set(ig.nets.IMAGENET_CONFIGS) <= set(options.NETWORKS)
    assert commands.train(["--dataset", "imagenet", "--network", "resnet_igc", "--output-dir", str(tmp_path)]) == 2
    assert "train on --dataset imagenet" in capsys.readouterr().err
    assert commands.train(["--dataset", "digits", "--network", "igc_l4m32", "--output-dir", str(tmp_path)]) == 2
    assert commands.train(["--dataset", "imagenet", "--network", "igc_l4m32", "--primary-partition", "8",
                         "--output-dir", str(tmp_path)]) == 2
    assert "igc_l4m32 has primary partition 4" in capsys.readouterr().err


def test_evaluate_a_released_params_file(tmp_path, capsys):
    root = make_folders(tmp_path / "d", per_class=1)
    weights = tmp_path / "seed-0001.params"
    mxnet_io.save_params(ig.nets.imagenet_model("igc_l100m2", num_classes=3, rng=0), weights)
    assert commands.evaluate(["--dataset", "imagenet", "--model", "igc_l100m2", "--weights", str(weights),
                           "--data-dir", str(root), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "Test imagenet: 3 images" in out and "top5 1.0000" in out
    weights.write_bytes(weights.read_bytes()[:1000])
    assert commands.evaluate(["--model", "igc_l100m2", "--weights", str(weights), "--data-dir", str(root)]) == 1
    assert "seed-0001.params" in capsys.readouterr().err
