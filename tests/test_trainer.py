"""The training job end to end: examples/cifar10_igc.py and examples/evaluate.py.

Most tests call the scripts' ``main(argv)`` in this process (fast); the command line itself and a
real Ctrl-C are checked once each in a subprocess. Data: the embedded digits (``--subset``) and a
miniature CIFAR written here in the official binary layout.
"""
import json
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import igc_np as ig
from igc_np.app import checkpoint, cli, evaluation, options, progress, run_folder

import commands

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = ROOT / "examples" / "cifar10_igc.py"
EVAL_SCRIPT = ROOT / "examples" / "evaluate.py"



# tests/test_robustness.py reaches the scripts through these two names: their command lines, and
# the option functions behind them (the scripts are run as commands, never imported)
trainer = SimpleNamespace(main=commands.train, parse_args=options.parse_args,
                          resolve_options=cli.resolve_options,
                          default_output_dir=options.default_output_dir)
evaluator = SimpleNamespace(main=commands.evaluate)

# a tiny resnet_igc (C = 4) on 160 digits in 5 batches: one epoch takes a fraction of a second
TINY = ["--network", "resnet_igc", "--depth", "8", "--primary-partition", "2",
        "--secondary-partition", "2", "--batch-size", "32", "--subset", "160", "--log-iters", "2"]


def run(tmp_path, *extra, name="run"):
    """main() with the output in tmp_path/name; returns (exit status, output folder)."""
    out = tmp_path / name
    return commands.train(TINY + ["--output-dir", str(out)] + [str(a) for a in extra]), out


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_same_checkpoint(a, b):
    """Every model and optimizer array, the epoch and the data rng state bit-identical."""
    with np.load(a) as za, np.load(b) as zb:
        keys = [k for k in za.files if k.startswith(("model/", "optimizer/"))]
        assert keys and sorted(keys) == sorted(k for k in zb.files if k.startswith(("model/", "optimizer/")))
        for k in keys:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
        for k in ("epoch", "batch", "rng_state"):
            assert za[k] == zb[k], k


def write_cifar(root, name="cifar10", n_train=40, n_test=12, seed=0):
    """A miniature CIFAR-10 (or -100) in the official binary layout: 5 train files + test."""
    rng = np.random.default_rng(seed)
    classes, folder, head = ((10, "cifar-10-batches-bin", 1) if name == "cifar10"
                             else (100, "cifar-100-binary", 2))
    folder = root / folder
    folder.mkdir(parents=True)

    def records(n):
        x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, classes, (n, 1), dtype=np.uint8)
        heads = labels if head == 1 else np.concatenate([labels // 5, labels], axis=1)  # coarse, fine
        return np.concatenate([heads, x], axis=1).tobytes()

    if name == "cifar10":
        for i in range(1, 6):
            (folder / f"data_batch_{i}.bin").write_bytes(records(n_train // 5))
        (folder / "test_batch.bin").write_bytes(records(n_test))
    else:
        (folder / "train.bin").write_bytes(records(n_train))
        (folder / "test.bin").write_bytes(records(n_test))
    return root


# ---------------------------------------------------------------------------------------------
def test_help_lists_every_option():
    for script in (TRAIN_SCRIPT, EVAL_SCRIPT):
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert "usage:" in r.stdout
    r = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--help"], capture_output=True, text=True)
    for option in ("--network", "--depth", "--primary-partition", "--secondary-partition",
                   "--dataset", "--data-dir", "--download", "--batch-size", "--num-epochs", "--lr",
                   "--lr-factor", "--lr-steps", "--rand-seed", "--log-iters", "--model-prefix",
                   "--load-epoch", "--checkpoint-every", "--output-dir", "--device", "--gpus",
                   "--subset", "--dtype", "--resume", "--dist", "--micro-batches"):
        assert option in r.stdout, option
    # --gpus with several ids starts one process per GPU (help lines wrap anywhere: join them)
    assert "one process per GPU" in " ".join(r.stdout.split())


@pytest.mark.parametrize("network,depth", [("plain", 5), ("resnet", 8), ("plain_igc", 5),
                                           ("resnet_igc", 8)])
def test_each_network_trains_and_writes_its_outputs(tmp_path, capsys, network, depth):
    status, out = run(tmp_path, "--network", network, "--depth", depth, "--num-epochs", 1)
    assert status == 0
    text = capsys.readouterr().out
    assert "Parameters: " in text and "Configuration: " in text and str(out) in text
    assert "Epoch[0] Batch [2]\tSpeed: " in text and "samples/sec\tloss: " in text and "top1: " in text
    (record,) = read_log(out)
    for key in ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "elapsed"):
        assert key in record
    assert 0 <= record["test_top1"] <= 1 and np.isfinite(record["train_loss"])
    assert (out / "model-0001.npz").is_file()
    assert (out / "loss.png").is_file() and (out / "accuracy.png").is_file()
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_binary_fixture_one_epoch(tmp_path, capsys, dataset):
    data_dir = write_cifar(tmp_path / "data", dataset)
    out = tmp_path / "out"
    status = commands.train(["--dataset", dataset, "--data-dir", str(data_dir), "--network",
                           "resnet_igc", "--depth", "8", "--primary-partition", "2",
                           "--secondary-partition", "2", "--batch-size", "16", "--num-epochs", "1",
                           "--output-dir", str(out)])
    assert status == 0
    (record,) = read_log(out)
    assert ("test_top5" in record) == (dataset == "cifar100")  # top-5 for 100+ classes
    assert "Data: Dataset('%s', train=(40, 3, 32, 32)" % dataset in capsys.readouterr().out


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """2 epochs straight == 1 epoch, then --load-epoch 1 for the second (CIFAR: augmentation too)."""
    data_dir = write_cifar(tmp_path / "data")
    common = ["--dataset", "cifar10", "--data-dir", str(data_dir), "--network", "resnet_igc",
              "--depth", "8", "--primary-partition", "2", "--secondary-partition", "2",
              "--batch-size", "16", "--lr-steps", "1", "--checkpoint-every", "1", "--rand-seed", "3"]
    assert commands.train(common + ["--num-epochs", "2", "--output-dir", str(tmp_path / "a")]) == 0
    assert commands.train(common + ["--num-epochs", "1", "--output-dir", str(tmp_path / "b")]) == 0
    assert commands.train(["--load-epoch", "1", "--num-epochs", "2", "--data-dir", str(data_dir),
                         "--model-prefix", str(tmp_path / "b" / "model")]) == 0
    assert_same_checkpoint(tmp_path / "a" / "model-0002.npz", tmp_path / "b" / "model-0002.npz")
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["test_loss"] for r in a] == [r["test_loss"] for r in b]
    assert [r["lr"] for r in b] == pytest.approx([0.1, 0.01])  # the schedule came back from the checkpoint


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """A SIGINT during epoch 1 -> <prefix>-interrupted.npz, exit 130; --resume it == never stopped."""
    args = ["--num-epochs", "2", "--lr-steps", "1", "--checkpoint-every", "1"]
    assert run(tmp_path, *args, name="straight")[0] == 0
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN when pytest runs in the background

    real_step, calls = ig.optim.SGD.step, []

    def step_then_ctrl_c(self):
        real_step(self)
        calls.append(1)
        if len(calls) == 7:  # epoch 1, batch 2 of 5: deliver a real SIGINT to this process
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(ig.optim.SGD, "step", step_then_ctrl_c)
    status, out = run(tmp_path, *args, name="stopped")
    monkeypatch.setattr(ig.optim.SGD, "step", real_step)
    assert status == 130
    err = capsys.readouterr().err
    assert f"python examples/cifar10_igc.py --resume {out / 'model-interrupted.npz'}" in err or \
        f"--resume {out / 'model-interrupted.npz'}" in err
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    stopped = out / "model-interrupted.npz"
    with np.load(stopped) as z:
        assert (int(z["epoch"]), int(z["batch"])) == (1, 2)
    assert not (out / "model-0002.npz").exists() and not list(out.glob(".*tmp*"))

    assert commands.train(["--resume", str(stopped)]) == 0
    assert_same_checkpoint(tmp_path / "straight" / "model-0002.npz", out / "model-0002.npz")
    assert not stopped.exists()  # obsolete once resumed and model-0002.npz is written
    straight, resumed = read_log(tmp_path / "straight"), read_log(out)
    assert [r["train_loss"] for r in straight] == [r["train_loss"] for r in resumed]


def test_ctrl_c_during_the_test_pass_saves_the_finished_epoch(tmp_path, monkeypatch):
    real_evaluate = evaluation.evaluate_batches

    def evaluate_then_ctrl_c(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_batches", evaluate_then_ctrl_c)
    status, out = run(tmp_path, "--num-epochs", "3", "--checkpoint-every", "2")
    assert status == 130
    ckpt = checkpoint.load_checkpoint(out / "model-0001.npz")  # an ordinary epoch checkpoint
    assert (ckpt.epoch, ckpt.batch, len(ckpt.history)) == (1, 0, 1)
    assert not (out / "model-interrupted.npz").exists()


@pytest.mark.parametrize("signum,status,name", [(signal.SIGINT, 130, "Ctrl-C"),
                                                (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_in_a_real_process_saves_and_exits(tmp_path, signum, status, name):
    """Ctrl-C, and SIGTERM (what batch schedulers send): finish the batch, save, print the
    resume command, release the folder lock."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-u", str(TRAIN_SCRIPT)] + TINY + [
        "--num-epochs", "50", "--log-iters", "1", "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until training is under way
            if "Batch [1]" in line:
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert (out / "model-interrupted.npz").is_file() and "Saved" in err and name in err
    assert f"python examples/cifar10_igc.py --resume {out / 'model-interrupted.npz'}" in err \
        or f"cifar10_igc.py --resume {out / 'model-interrupted.npz'}" in err
    assert checkpoint.load_checkpoint(out / "model-interrupted.npz").epoch == 0
    assert not (out / run_folder.LOCK_NAME).exists()


def test_bad_checkpoints_give_errors_naming_the_file(tmp_path, capsys):
    status, out = run(tmp_path, "--num-epochs", "1")
    assert status == 0
    good = out / "model-0001.npz"
    capsys.readouterr()

    def resume_error(path, *extra):
        assert commands.train(["--resume", str(path), "--num-epochs", "2", *extra]) == 1
        return capsys.readouterr().err

    # missing: the message lists what is there
    err = commands.train(["--load-epoch", "7", "--model-prefix", str(out / "model")])
    assert err == 1
    msg = capsys.readouterr().err
    assert "model-0007.npz: no such file" in msg and "model-0001.npz" in msg

    garbage = out / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    assert "garbage.npz: not a readable .npz file" in resume_error(garbage)

    truncated = out / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated.npz" in resume_error(truncated)

    # a parameter of the wrong shape is named
    with np.load(good) as z:
        entries = dict(z)
    entries["model/fc_weight"] = np.zeros((3, 3), np.float32)
    np.savez(out / "badshape.npz", **entries)
    err = resume_error(out / "badshape.npz")
    assert "badshape.npz" in err and "fc_weight" in err and "(3, 3)" in err

    # an option that changes the network cannot change on resume
    err = resume_error(good, "--primary-partition", "4")
    assert "model-0001.npz" in err and "--primary-partition" in err

    # evaluate.py reports the same errors
    assert commands.evaluate(["--checkpoint", str(garbage)]) == 1
    assert "garbage.npz" in capsys.readouterr().err


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path, capsys):
    status, out = run(tmp_path, "--num-epochs", "1")
    good = out / "model-0001.npz"
    before = good.read_bytes()
    status = commands.train(["--resume", str(good), "--num-epochs", "30", "--lr", "1e6"])
    assert status == 1
    err = capsys.readouterr().err
    assert "Epoch[" in err and "Batch [" in err and "nan" in err.lower()
    assert "learning rate" in err and "model-0001.npz" in err
    assert good.read_bytes() == before
    checkpoint.load_checkpoint(good)


def test_evaluate_reproduces_the_logged_test_accuracy(tmp_path, capsys):
    status, out = run(tmp_path, "--num-epochs", "2")
    assert status == 0
    last = read_log(out)[-1]
    capsys.readouterr()
    assert commands.evaluate(["--checkpoint", str(out / "model-0002.npz")]) == 0
    text = capsys.readouterr().out
    assert "Parameters: " in text
    assert f"loss {last['test_loss']:.4f}  top1 {last['test_top1']:.4f}" in text


@pytest.mark.parametrize("device", ["emu", pytest.param("cuda", marks=pytest.mark.skipif(
    not ig.cuda_available(), reason="device 'cuda' needs CuPy and an NVIDIA GPU; none here"))])
def test_other_devices_train_like_the_cpu(tmp_path, device):
    """Same command with --device: the same code path, the same numbers up to rounding."""
    assert run(tmp_path, "--num-epochs", "1", name="cpu")[0] == 0
    status, out = run(tmp_path, "--num-epochs", "1", "--device", device, name=device)
    assert status == 0
    cpu, dev = read_log(tmp_path / "cpu")[0], read_log(out)[0]
    assert dev["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-3)
    assert dev["test_loss"] == pytest.approx(cpu["test_loss"], rel=1e-2)
    assert commands.evaluate(["--checkpoint", str(out / "model-0001.npz"), "--device", device]) == 0


def test_curves_are_skipped_with_a_notice_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    monkeypatch.setattr(progress, "_matplotlib_missing_noted", False)
    history = [dict(epoch=0, train_loss=1.0, test_loss=1.0, train_top1=0.5, test_top1=0.5)]
    assert progress.plot_curves(history, tmp_path) is False
    assert progress.plot_curves(history, tmp_path) is False
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1  # one line, once
    assert not list(tmp_path.iterdir())


def test_metrics_top1_top5():
    logits = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]], dtype=np.float32)
    m = evaluation.Metrics()
    m.update(0.5, logits, np.array([6, 5]))    # row 0: top-1 hit; row 1: 6th best, a miss
    m.update(1.5, logits, np.array([2, 4]))    # row 0: 5th best, a top-5 hit; row 1: 5th best
    assert (m.count, m.loss, m.top1, m.top5) == (4, 1.0, 0.25, 0.75)


# ---- newcomer habits ---------------------------------------------------------------------------
def test_dataset_alone_trains_the_authors_cifar_network_on_the_cpu():
    o, ckpt = cli.resolve_options(options.parse_args(["--dataset", "cifar10"]))
    assert ckpt is None
    assert (o["network"], o["depth"], o["primary_partition"], o["secondary_partition"]) == \
        ("resnet_igc", 20, 24, 2)
    assert o["device"] == "cpu" and o["num_epochs"] == 400 and o["lr_steps"] == [200, 300, 350]
    assert o["output_dir"] == str(Path("runs") / "cifar10-resnet_igc20-L24M2")
    o, _ = cli.resolve_options(options.parse_args([]))  # the digits toy net stays the default
    assert (o["dataset"], o["depth"], o["primary_partition"]) == ("digits", 8, 4)


def test_pytorch_style_aliases_and_optimizer_options(tmp_path):
    args = options.parse_args(["--epochs", "3", "--seed", "5", "--momentum", "0.5", "--wd", "0",
                               "--weight-decay", "0.001"])
    o, _ = cli.resolve_options(args)
    assert (o["num_epochs"], o["rand_seed"], o["momentum"], o["wd"]) == (3, 5, 0.5, 0.001)
    status, out = run(tmp_path, "--epochs", "1", "--momentum", "0", "--wd", "0")
    assert status == 0
    stored = checkpoint.load_checkpoint(out / "model-0001.npz")
    assert (stored.args["momentum"], stored.args["wd"]) == (0, 0)
    # momentum 0 keeps no velocities
    assert all(v.size == 0 for k, v in stored.optimizer_state.items() if k.startswith("velocity"))


def test_young_bn_statistics_are_recalibrated_for_the_test_pass_only(tmp_path):
    """plain nets (BN momentum 0.99): after a few updates the running statistics are mostly their
    initial values; the test pass recalibrates a copy, the training and its files are unchanged."""
    common = ["--network", "plain_igc", "--depth", "5", "--num-epochs", "2", "--lr-steps", "1"]
    assert run(tmp_path, *common, "--eval-bn", "running", name="running")[0] == 0
    assert run(tmp_path, *common, name="auto")[0] == 0
    running, auto = read_log(tmp_path / "running"), read_log(tmp_path / "auto")
    assert [r["eval_bn"] for r in running] == ["running", "running"]
    assert all(r["eval_bn"].startswith("precise (5 training batches") for r in auto)
    assert [r["train_loss"] for r in running] == [r["train_loss"] for r in auto]
    assert auto[-1]["test_loss"] < running[-1]["test_loss"]
    assert_same_checkpoint(tmp_path / "running" / "model-0002.npz",
                           tmp_path / "auto" / "model-0002.npz")
    # the long-run protocol is the authors': old statistics are used as they are
    net = ig.nets.get_network("plain_igc", 5, primary_partition=2, secondary_partition=2)
    assert evaluation.stale_statistics(net, 100) and not evaluation.stale_statistics(net, 1000)


def test_curves_name_the_run_and_mark_the_lr_steps(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    figures, real_savefig = [], Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    record = dict(train_loss=1.0, test_loss=1.0, train_top1=0.5, test_top1=0.5)
    progress.plot_curves([dict(record, epoch=0)], tmp_path, title="my run")
    ax = figures[-1].axes[0]
    assert ax.get_title() == "my run" and list(ax.get_xticks()) == [0]  # one epoch: one tick
    history = [dict(record, epoch=e) for e in range(4)]
    progress.plot_curves(history, tmp_path, title="my run", lr_steps=[2, 3])
    ax = figures[-1].axes[0]
    steps = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in steps] == [1.5, 2.5]
    assert "lr step" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png", "loss.png"]


def test_metrics_stay_on_the_device_until_read():
    m = evaluation.Metrics()
    logits = ig.Tensor(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
    m.update(ig.Tensor(np.float32(0.5)), logits, ig.Tensor(np.array([1, 1])))
    assert m._pending is not None and not m._host.any()  # nothing brought to the host yet
    assert (m.count, m.loss, m.top1) == (2, 0.5, 0.5) and m._pending is None


# ---- examples/igc_anatomy.py ----------------------------------------------------------------


def test_anatomy_takes_the_trainers_option_names(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert commands.anatomy(["--primary-partition", "2", "--secondary-partition", "3",
                             "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "composition.png", "connectivity.png", "masks.png", "permutation.png", "widths.md"]
    assert "Wider at equal parameters" in capsys.readouterr().out  # the table is printed
    assert commands.anatomy(["--L", "2", "--M", "2", "--out", str(tmp_path / "old")]) == 0  # old names
    assert (tmp_path / "old" / "masks.png").is_file()


@pytest.mark.parametrize("argv,needle", [(["--primary-partition", "0"], "--primary-partition must be in 1.."),
                                         (["--M", "-1"], "--secondary-partition must be in 1.."),
                                         (["--L", "100", "--M", "100"], "at most 512")])
def test_anatomy_refuses_impossible_partitions(tmp_path, capsys, argv, needle):
    assert commands.anatomy(argv + ["--output-dir", str(tmp_path / "a")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_anatomy_palette_tells_100_partitions_apart():
    pytest.importorskip("matplotlib")
    # a drawing helper of the script, not a library function: read from the script's namespace
    palette = runpy.run_path(str(commands.ANATOMY_SCRIPT), run_name="igc_anatomy")["palette"]
    for n in (4, 16, 100):
        colours = np.array(palette(n))
        assert colours.shape == (n, 3) and len({tuple(np.round(c, 3)) for c in colours}) == n
        # neighbouring partitions (adjacent blocks of the picture) differ clearly
        assert np.abs(np.diff(colours, axis=0)).sum(axis=1).min() > 0.15


def test_the_checkpoint_is_written_before_the_curves(tmp_path, monkeypatch):
    """On a nearly full disk the curves (redrawn from the history at every epoch) must not take the
    space of the checkpoint (not redrawable): before, a 120 KB file system held both PNGs and no
    checkpoint at all. Each epoch's curves are drawn once its checkpoint is on disk."""
    from igc_np.app import run as run_module
    seen = []

    def plot(history, out_dir, **kw):
        seen.append((len(history), sorted(p.name for p in Path(out_dir).glob("model-*.npz"))))
        return True
    monkeypatch.setattr(run_module, "plot_curves", plot)
    status, out = run(tmp_path, "--num-epochs", "2", "--checkpoint-every", "1")
    assert status == 0
    assert seen == [(1, ["model-0001.npz"]), (2, ["model-0001.npz", "model-0002.npz"])]


def test_a_full_disk_gives_the_curves_space_to_the_checkpoint(tmp_path, monkeypatch, capsys):
    """The disk is full while the curves of an earlier epoch are there (the default saves every
    other epoch, the curves every epoch): they are removed (drawn again from the history) and the
    checkpoint written. Before, the final save failed: exit 1, nothing trained kept."""
    import errno as errno_module
    from igc_np.app import run as run_module
    real = run_module.save_checkpoint

    def full_disk(path, *a, **kw):
        if (Path(path).parent / "loss.png").exists():
            raise OSError(errno_module.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **kw)
    monkeypatch.setattr(run_module, "save_checkpoint", full_disk)
    monkeypatch.setattr(run_module, "plot_curves", lambda history, out_dir, **kw: [
        (Path(out_dir) / name).write_bytes(b"png") for name in ("loss.png", "accuracy.png")])
    status, out = run(tmp_path, "--num-epochs", "2")
    err = capsys.readouterr().err
    assert status == 0, err
    assert (out / "model-0002.npz").is_file() and "removed loss.png, accuracy.png" in err
    assert checkpoint.load_checkpoint(out / "model-0002.npz").epoch == 2
