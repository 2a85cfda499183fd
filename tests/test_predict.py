"""Using a trained model: igc_np.app.predict (load_trained, predict) and `python -m igc_np`."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import igc_np as ig
from igc_np.__main__ import main as igc_np_main
from igc_np import training
from igc_np.app.predict import (CIFAR100_CLASSES, InputSpec, PredictError, input_spec, load_images,
                                load_trained, predict, top_k)
from igc_np.data import load_dataset

import commands

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("IGC_NP_DEBUG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


# the trainer runs in this process (tests/commands.py: as `python examples/cifar10_igc.py ...`),
# on 640 of the digits' training images (10 batches an epoch): the start-up of a second Python
# and most of the training time saved, the same trainer checkpoints
SUBSET = ["--subset", "640"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real trainer checkpoint: resnet_igc-8 on the digits after 2 epochs (running BN tested)."""
    out = tmp_path_factory.mktemp("run")
    assert commands.train(["--num-epochs", "2", "--output-dir", out, "--eval-bn", "running"]
                          + SUBSET) == 0
    return out / "model-0002.npz"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One epoch (10 updates): the trainer tests with precise BN statistics (young running ones)."""
    out = tmp_path_factory.mktemp("short")
    assert commands.train(["--num-epochs", "1", "--output-dir", out] + SUBSET) == 0
    return out / "model-0001.npz"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_load_trained_rebuilds_the_network_in_eval_mode(checkpoint):
    model = load_trained(checkpoint)
    ckpt = training.load_checkpoint(checkpoint)
    assert not model.training and all(not m.training for m in model.modules())
    state = model.state_dict()
    assert state.keys() == ckpt.model_state.keys()
    for k, v in ckpt.model_state.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    assert model.input_spec.dataset == "digits" and model.input_spec.image_size == 8
    assert model.input_spec.classes == tuple("0123456789")


def test_predict_gives_the_trainers_test_accuracy(checkpoint, digits):
    """predict on the raw test images == the trainer's evaluation (running BN statistics)."""
    model = load_trained(checkpoint)
    probs = predict(model, digits.test_x)
    assert probs.shape == (360, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    m = training.evaluate(model, digits.test_x, digits.test_y, digits.mean, digits.std)
    assert (probs.argmax(axis=1) == digits.test_y).mean() == pytest.approx(m.top1, abs=0)
    last = training.load_checkpoint(checkpoint).history[-1]
    assert m.top1 == pytest.approx(last["test_top1"], abs=0)  # the logged number, eval-bn running


def test_batch_of_one_equals_the_same_image_inside_a_batch(checkpoint, digits):
    model = load_trained(checkpoint)
    batch = predict(model, digits.test_x[:64])
    for i in (0, 17, 63):
        alone = predict(model, digits.test_x[i:i + 1])
        # eval mode: BN uses stored statistics, so the other images cannot change a row; the
        # batched matmuls may still round differently (float32): bound by the rounding of p <= 1
        np.testing.assert_allclose(alone[0], batch[i], rtol=0, atol=1e-6)
        assert alone[0].argmax() == batch[i].argmax()


def test_npy_files_and_png_files_of_any_size(checkpoint, digits, tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    model = load_trained(checkpoint)
    x = digits.test_x[:3]
    np.save(tmp_path / "one.npy", x[0])                      # (3, 8, 8) uint8: used as it is
    np.save(tmp_path / "many.npy", x)                        # (N, 3, 8, 8): three images
    np.save(tmp_path / "hwc.npy", x[1].transpose(1, 2, 0).astype(np.float32))
    expected = predict(model, x)
    got = predict(model, [tmp_path / "one.npy", str(tmp_path / "many.npy"), tmp_path / "hwc.npy"])
    # the same images (a batch of 5 against one of 3: float32 rounding of probabilities <= 1)
    np.testing.assert_allclose(got, expected[[0, 0, 1, 2, 1]], rtol=0, atol=1e-6)
    # a PNG at the data set's size, greyscale, gives the same input image
    Image.fromarray(x[0, 0]).save(tmp_path / "d.png")
    # and a big colour JPEG of the same digit (nearest upscale 8x, 64x80 with a margin) still reads
    big = np.kron(x[2, 0], np.ones((8, 8), np.uint8))
    canvas = np.zeros((64, 80, 3), np.uint8)
    canvas[:, 8:72] = big[..., None]
    Image.fromarray(canvas).save(tmp_path / "d.jpg", quality=95)
    images, names = load_images([tmp_path / "d.png", tmp_path / "d.jpg"], model.input_spec)
    assert images.shape == (2, 3, 8, 8) and names == [str(tmp_path / "d.png"), str(tmp_path / "d.jpg")]
    np.testing.assert_array_equal(images[0], x[0])
    p = predict(model, [tmp_path / "d.png", tmp_path / "d.jpg"])
    np.testing.assert_allclose(p[0], expected[0], rtol=0, atol=1e-6)
    assert p.shape == (2, 10) and np.isfinite(p).all()


def test_errors_name_the_file(checkpoint, tmp_path):
    model = load_trained(checkpoint)
    (tmp_path / "notes.png").write_text("not an image")
    np.save(tmp_path / "flat.npy", np.zeros(7))
    np.save(tmp_path / "neg.npy", -np.ones((3, 8, 8)))
    cases = {tmp_path / "missing.png": "no such file", tmp_path: "is a folder",
             tmp_path / "notes.png": "not an image", tmp_path / "flat.npy": "is not an image",
             tmp_path / "neg.npy": "0..255"}
    for path, words in cases.items():
        with pytest.raises(PredictError, match=words) as e:
            predict(model, [path])
        assert str(path) in str(e.value)
    with pytest.raises(PredictError, match="no input_spec"):
        predict(ig.nets.get_network("resnet_igc", 8, 10, 4, 4), np.zeros((1, 3, 8, 8)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_or_a_device_as_an_image_is_refused_not_read(checkpoint, tmp_path):
    """A FIFO with no writer would block the read forever, /dev/zero would read until memory
    runs out: both are refused by kind, naming the file (before: a FIFO was "no such file")."""
    model = load_trained(checkpoint)
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.npy")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    cases = {"pipe.png": "FIFO", "pipe.npy": "FIFO", "zero.png": "character device"}
    for name, words in cases.items():
        with pytest.raises(PredictError, match=words) as e:
            predict(model, [tmp_path / name])
        assert name in str(e.value)
    (tmp_path / "one.png").write_bytes(b"")  # an empty file: an image error, not a hang
    with pytest.raises(PredictError, match="one.png"):
        predict(model, [tmp_path / "one.png"])


def test_load_trained_refuses_what_is_not_a_trainer_checkpoint(tmp_path):
    net = ig.nets.get_network("resnet_igc", 8, 10, 4, 4)
    ig.save(net.state_dict(), tmp_path / "weights.npz")
    with pytest.raises(training.CheckpointError, match="weights.npz") as e:
        load_trained(tmp_path / "weights.npz")
    # a state dict says what it is and how to load it (before: "format 'missing'")
    assert "not a trainer checkpoint" in str(e.value) and "load_state_dict(ig.load" in str(e.value)
    assert "g0_conv_weight" in str(e.value)
    with pytest.raises(training.CheckpointError, match="MXNet .params.*load_released"):
        load_trained(tmp_path / "seed-0120.params")


def test_top_k_and_class_names():
    probs = np.array([0.1, 0.5, 0.05, 0.35])
    assert top_k(probs, "abcd", k=2) == [("b", 0.5), ("d", 0.35)]
    assert len(top_k(probs, "abcd", k=10)) == 4
    assert len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    spec = input_spec("cifar10", 10)
    assert spec.image_size == 32 and spec.classes[0] == "airplane" and not spec.grey
    assert input_spec("imagenet", 5, image_size=64).classes == tuple(f"class {i}" for i in range(5))
    assert isinstance(spec, InputSpec)


def test_python_m_igc_np_predict(checkpoint, digits, tmp_path):
    np.save(tmp_path / "a.npy", digits.test_x[0])
    r = _run("-m", "igc_np", "predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.npy"),
             "--top-k", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(tmp_path / "a.npy") and len(lines) == 4
    model = load_trained(checkpoint)
    (name, p), = top_k(predict(model, digits.test_x[:1])[0], model.input_spec.classes, 1)
    assert lines[1].split() == ["1.", name, f"{p:.4f}"]



def test_python_m_igc_np_predict_errors(checkpoint, tmp_path, capsys):
    """The same main() as `python -m igc_np`, in this process: errors are one line."""
    assert igc_np_main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "no.png")]) == 1
    err = capsys.readouterr().err
    assert "no.png: no such file" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as usage:
        igc_np_main(["predict", str(tmp_path / "a.npy")])
    assert usage.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as topk:
        igc_np_main(["predict", "--checkpoint", str(checkpoint), "x.npy", "--top-k", "0"])
    assert topk.value.code == 2 and "--top-k must be >= 1" in capsys.readouterr().err


def test_python_m_igc_np_reports_the_machine():
    r = _run("-m", "igc_np")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"igc_np {ig.__version__} ")
    for device in ("cpu", "cuda", "emu"):
        assert any(line.split()[:1] == [device] for line in out.splitlines()), out
    cuda = next(line for line in out.splitlines() if line.split()[:1] == ["cuda"])
    assert ("yes" in cuda.split()[1]) == ig.backend.cuda_available()
    if not ig.backend.cuda_available():
        assert "CuPy" in cuda or "unusable" in cuda  # says why not
    assert "threads:" in out and "MPI:" in out


def test_python_m_igc_np_train_and_evaluate_run_the_scripts(checkpoint, tmp_path, capsys):
    r = _run("-m", "igc_np", "train", "--help")
    assert r.returncode == 0 and "--num-epochs" in r.stdout
    r = _run("-m", "igc_np", "evaluate", "--checkpoint", str(checkpoint))
    assert r.returncode == 0, r.stderr
    assert "Test digits: 360 images" in r.stdout
    # the error cases through the same main(), in this process
    assert igc_np_main(["evaluate", "--checkpoint", str(tmp_path / "none.npz")]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as bogus:
        igc_np_main(["bogus"])
    assert bogus.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_short_run_predicts_as_well_as_its_logged_test(short_run, digits):
    """The trainer logged its test with precise BN statistics: load_trained keeps those (computed
    again on the same training batches), so predict reproduces the logged accuracy; the stored
    running statistics alone would not."""
    last = training.load_checkpoint(short_run).history[-1]
    assert last["eval_bn"].startswith("precise")
    acc = {}
    for bn in ("as-tested", "running", "precise"):
        probs = predict(load_trained(short_run, bn_statistics=bn), digits.test_x)
        acc[bn] = (probs.argmax(axis=1) == digits.test_y).mean()
    assert acc["as-tested"] == acc["precise"] == pytest.approx(last["test_top1"], abs=0)
    assert acc["running"] < acc["precise"], acc  # what load_trained gave before
    ckpt = training.load_checkpoint(short_run)  # the file is unchanged
    for k, v in load_trained(short_run, bn_statistics="running").state_dict().items():
        np.testing.assert_array_equal(v, ckpt.model_state[k], err_msg=k)


def test_precise_statistics_without_the_data_say_what_to_do(short_run, monkeypatch):
    from igc_np.app import predict as predict_module
    from igc_np.app.data import DatasetNotFoundError

    def missing(*args, **kwargs):
        raise DatasetNotFoundError("no digits here")
    monkeypatch.setattr(predict_module, "load_dataset", missing)
    with pytest.raises(training.CheckpointError, match="--data-dir.*--bn-statistics running"):
        load_trained(short_run)
    monkeypatch.undo()
    load_trained(short_run, bn_statistics="running")  # needs no training batches
    with pytest.raises(ValueError, match="bn_statistics"):
        load_trained(short_run, bn_statistics="best")
