"""The trainer against careless and hostile use: data loss, lost work, hostile files, silent
garbage, raw tracebacks. Each test makes its own small fixtures (a tiny net on 160 digits).

Classes (issue 10): resume and tampered paths never write outside the command line's folder;
a finished run is never replaced without --overwrite; one trainer per folder; a failed save
(full disk: a real tmpfs where the machine allows) keeps training; BrokenPipe and SIGTERM;
bounded, validated checkpoint loading (with a property test over byte corruption); option
errors are one line with exit 2.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import igc_np as ig
from igc_np import serialization, training
from igc_np.app import checkpoint
from igc_np.serialization import SerializationError
from timeouts import fails_after
from igc_np.training import CheckpointError

from test_trainer import TINY, TRAIN_SCRIPT, EVAL_SCRIPT, evaluator, read_log, run, trainer



def rewrite(src, dst, **changes):
    """Copy checkpoint ``src`` to ``dst`` with some entries replaced (None: removed)."""
    with np.load(src) as z:
        entries = dict(z)
    for k, v in changes.items():
        if v is None:
            entries.pop(k, None)
        else:
            entries[k] = v
    np.savez(dst, **entries)
    return dst


def stored(path, key):
    with np.load(path) as z:
        return json.loads(str(z[key]))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run with a checkpoint after each epoch (read-only for the tests)."""
    tmp = tmp_path_factory.mktemp("finished")
    status, out = run(tmp, "--num-epochs", "2", "--checkpoint-every", "1")
    assert status == 0
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---- data loss ------------------------------------------------------------------------------
def test_resume_into_a_new_folder_leaves_the_old_one_alone(finished, tmp_path):
    a = copy_run(finished, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    b = tmp_path / "b"
    assert trainer.main(["--resume", str(a / "model-0001.npz"), "--output-dir", str(b)]) == 0
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before
    assert (b / "model-0002.npz").is_file() and len(read_log(b)) == 2


def test_tampered_paths_in_a_checkpoint_are_never_used(finished, tmp_path, monkeypatch):
    """A checkpoint naming other folders (absolute or relative) writes only beside itself."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    args = stored(finished / "model-0001.npz", "args")
    args.update(output_dir=str(victim), model_prefix=str(victim / "precious"),
                data_dir=str(victim / "data"))
    folder = tmp_path / "t"
    folder.mkdir()
    bad = rewrite(finished / "model-0001.npz", folder / "model-0001.npz",
                  args=np.array(json.dumps(args)))
    monkeypatch.chdir(tmp_path)  # relative stored paths would resolve here
    assert trainer.main(["--resume", str(bad)]) == 0
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (folder / "model-0002.npz").is_file()
    assert stored(folder / "model-0002.npz", "args")["output_dir"] == str(folder)


def test_a_finished_run_is_not_replaced_without_overwrite(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    log = (out / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert trainer.main(TINY + ["--output-dir", str(out), "--num-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and str(out) in err
    assert (out / "log.jsonl").read_bytes() == log and (out / "model-0002.npz").is_file()
    # --overwrite deletes the old run's files: no mix of two runs' checkpoints
    assert trainer.main(TINY + ["--output-dir", str(out), "--num-epochs", "1", "--overwrite"]) == 0
    assert len(read_log(out)) == 1 and not (out / "model-0002.npz").exists()


def test_overwrite_never_deletes_the_checkpoint_being_resumed(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    first = (out / "model-0001.npz").read_bytes()
    assert trainer.main(["--resume", str(out / "model-0001.npz"), "--num-epochs", "3",
                         "--overwrite"]) == 0
    assert (out / "model-0001.npz").read_bytes() == first
    assert [r["epoch"] for r in read_log(out)] == [0, 1, 2]


def test_resuming_an_earlier_checkpoint_does_not_replace_later_ones(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    later = (out / "model-0002.npz").read_bytes()
    assert trainer.main(["--resume", str(out / "model-0001.npz")]) == 2
    assert "model-0002.npz" in capsys.readouterr().err
    assert (out / "model-0002.npz").read_bytes() == later


def test_a_live_lock_is_refused_naming_the_process(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": sleeper.pid, "host": __import__("socket").gethostname(),
                "started": "2026-01-01 10:00:00", "command": "cifar10_igc.py --other"}
        (out / training.LOCK_NAME).write_text(json.dumps(info))
        assert trainer.main(TINY + ["--output-dir", str(out), "--num-epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert f"pid {sleeper.pid}" in err and "2026-01-01 10:00:00" in err and "in use" in err
    finally:
        sleeper.kill()
        sleeper.wait()
    # the process is gone now: its lock is stale and taken over with a note
    assert trainer.main(TINY + ["--output-dir", str(out), "--num-epochs", "1"]) == 0
    assert "stale lock" in capsys.readouterr().err
    assert not (out / training.LOCK_NAME).exists()  # released at the end


def test_temporary_names_are_unique_and_cleaned_up(tmp_path):
    target = tmp_path / "log.jsonl"
    with serialization.atomic_write(target, "w") as f1, serialization.atomic_write(target, "w") as f2:
        assert f1.name != f2.name  # two writers never share a temporary file
        f1.write("one\n")
        f2.write("two\n")
    assert target.read_text() == "one\n"  # the last rename wins, and each file is whole
    with pytest.raises(ZeroDivisionError):
        with serialization.atomic_write(target) as f:
            f.write(b"half")
            1 / 0
    assert target.read_text() == "one\n" and sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~serialization._UMASK)


# ---- work lost after the work is done ----------------------------------------------------------
def test_an_unwritable_model_prefix_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    status = trainer.main(TINY + ["--output-dir", str(tmp_path / "out"), "--model-prefix",
                                  str(blocker / "model"), "--num-epochs", "1"])
    assert status == 2
    err = capsys.readouterr().err
    assert "--model-prefix" in err and "cannot write" in err and "Epoch[" not in err


def test_a_failed_save_says_where_the_retry_goes(tmp_path, monkeypatch, capsys):
    real, calls = checkpoint.write_npz, []

    def full_disk_once(path, arrays):  # full for the epoch-2 save, removing the curves or not
        calls.append(Path(path).name)
        if Path(path).name == "model-0002.npz":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, arrays)

    monkeypatch.setattr(checkpoint, "write_npz", full_disk_once)
    status, out = run(tmp_path, "--num-epochs", "3", "--checkpoint-every", "2")
    assert status == 0
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left" in err and "model-0002.npz" in err
    assert "retries with" in err and "model-0003.npz" in err
    # the full disk first costs the curves (tried again at once), then the failed epoch-2 save is
    # retried at the end of epoch 3 (not only at the next multiple)
    assert "removed loss.png, accuracy.png" in err
    assert calls == ["model-0002.npz", "model-0002.npz", "model-0003.npz"]
    assert ig.training.load_checkpoint(out / "model-0003.npz").epoch == 3
    assert not list(out.glob(".*tmp*"))


def _small_tmpfs(path, size):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'not root'}); the "
                    "disk-full case is covered with a simulated ENOSPC above")


def test_a_real_full_disk_stops_cleanly_with_no_temporary_files(tmp_path, capsys):
    disk = tmp_path / "disk"
    _small_tmpfs(disk, "100k")  # room for the log and one 55 KB checkpoint, not two
    try:
        status = trainer.main(TINY + ["--output-dir", str(disk / "run"), "--num-epochs", "3",
                                      "--checkpoint-every", "1"])
        err = capsys.readouterr().err
        assert status == 1, err
        assert "could not write" in err and "final checkpoint" in err
        assert "Traceback" not in err
        names = [p.name for p in (disk / "run").iterdir()]
        assert not [n for n in names if n.endswith(".tmp")], names
        for p in (disk / "run").glob("model-*.npz"):
            ig.training.load_checkpoint(p)  # whatever is there is whole
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_broken_pipe_does_not_lose_the_run(tmp_path):
    """``cifar10_igc.py | head -1``: the reader leaves, the training and its files go on."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT)] + TINY + [
        "--num-epochs", "1", "--output-dir", str(out)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # like head -1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert ig.training.load_checkpoint(out / "model-0001.npz").epoch == 1


def test_sigkill_never_leaves_a_broken_named_checkpoint(tmp_path):
    """Kill -9 at varying moments, around the saves (bounded: 2 kills, each within seconds)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-u", str(TRAIN_SCRIPT)] + TINY + [
        "--num-epochs", "400", "--checkpoint-every", "1", "--output-dir", str(out)]
    for i, delay in enumerate((0.02, 0.3)):
        resume = sorted(out.glob("model-0*.npz"))
        extra = ["--resume", str(resume[-1])] if resume else (["--overwrite"] if i else [])
        proc = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        for line in proc.stdout:
            if line.startswith("Saved"):
                break
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30)
        for p in out.glob("model-*.npz"):
            ig.training.load_checkpoint(p)
    assert list(out.glob("model-0*.npz"))


# ---- hostile or corrupt files ------------------------------------------------------------------
def _npy_header(shape, dtype="<f8"):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    header = header.encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_a_huge_declared_array_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/w.npy", _npy_header((10 ** 12,)) + b"\0" * 64)
    with pytest.raises(SerializationError, match=r"model/w.*header says \(1000000000000,\)"):
        serialization.read_npz(path)


def test_a_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/w.npy", _npy_header((4 << 20,), "|u1") + bytes(4 << 20))
    assert path.stat().st_size < 20_000
    with pytest.raises(SerializationError, match="zip bomb"):
        serialization.read_npz(path)
    with pytest.raises(SerializationError, match="limit"):
        serialization.read_npz(path, max_member_bytes=1 << 20, max_ratio=10 ** 6)


def test_only_known_members_are_read(finished, tmp_path):
    """A checkpoint with an extra (object-dtype) member loads: the member is never read."""
    evil = tmp_path / "evil.npz"
    shutil.copy(finished / "model-0001.npz", evil)
    with zipfile.ZipFile(evil, "a") as zf:
        zf.writestr("payload.npy", _npy_header((1,), "|O") + b"\x80\x04N.")
    ckpt = ig.training.load_checkpoint(evil)
    assert "payload" not in ckpt.model_state
    with pytest.raises(SerializationError, match="payload.*dtype object"):
        ig.load(evil)  # ig.load reads every member: objects are refused, never unpickled


@pytest.mark.parametrize("content,message", [
    (None, "single-array .npy file"), (b"\x80\x04\x95", "pickle"),
    (b"PK\x03\x04garbage", "not a readable .npz")])
def test_not_an_npz_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "model-0001.npz"
    if content is None:
        np.save(tmp_path / "a.npy", np.zeros(3))
        os.replace(tmp_path / "a.npy", path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        ig.training.load_checkpoint(path)


@pytest.mark.parametrize("field,value,message", [
    ("epoch", np.int64(-2), "'epoch' must be an integer in 0"),
    ("epoch", np.float64(1.0), "'epoch' must be an integer"),
    ("batch", np.int64(-1), "'batch'"),
    ("rng_state", np.array("not json"), "'rng_state' is not valid JSON"),
    ("rng_state", np.array('{"bit_generator": "os", "state": {}}'), "'rng_state' is not a NumPy"),
    ("rng_state", np.array('{"bit_generator": "PCG64", "state": {"state": "x"}}'), "'rng_state'"),
    ("train_sums", np.array([np.nan, 0, 0, 0]), "'train_sums'"),
    ("train_sums", np.array([1.0, 10, 11, 11]), "'train_sums'"),
    ("history", np.array("[]"), "'history' has 0 records for 1"),
    ("history", np.array('[{"epoch": 0, "test_loss": -1}]'), "test_loss must be a finite"),
    ("format", np.array("something/else"), "format"),
    ("format", None, "format"),
    ("args", np.array('{"network": "evil"}'), "--network must be one of"),
    ("args", np.array('{"lr": -1}'), r"--lr must be in"),
    ("args", np.array('{"dataset": "../../etc"}'), "--dataset must be one of"),
    ("args", np.array('[1, 2]'), "'args' must be a JSON dict"),
    ("optimizer/lr", np.float64(np.inf), "optimizer/lr"),
])
def test_every_stored_field_is_validated(finished, tmp_path, field, value, message):
    bad = rewrite(finished / "model-0001.npz", tmp_path / "bad.npz", **{field: value})
    with pytest.raises(CheckpointError, match=message) as e:
        ig.training.load_checkpoint(bad)
    assert "bad.npz" in str(e.value)


@pytest.mark.parametrize("batch,sums,message", [(99, [10.0, 99 * 32, 0, 0], "'batch' is 99"),
                                                (2, [10.0, 50, 0, 0], "counts 50 samples")])
def test_a_mid_epoch_position_must_fit_the_data(finished, tmp_path, capsys, batch, sums, message):
    bad = rewrite(finished / "model-0001.npz", tmp_path / "model-0001.npz",
                  batch=np.int64(batch), train_sums=np.array(sums))
    assert trainer.main(["--resume", str(bad)]) == 1
    assert message in capsys.readouterr().err


def test_nan_weights_are_refused_for_resume_and_flagged_by_evaluate(finished, tmp_path, capsys):
    with np.load(finished / "model-0001.npz") as z:
        w = z["model/fc_weight"].copy()
    w[0, 0] = np.nan
    bad = rewrite(finished / "model-0001.npz", tmp_path / "model-0001.npz", **{"model/fc_weight": w})
    capsys.readouterr()
    assert trainer.main(["--resume", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "fc_weight" in err and "earlier checkpoint" in err
    assert evaluator.main(["--checkpoint", str(bad)]) == 0
    assert "WARNING" in capsys.readouterr().err


def test_a_non_finite_model_is_never_written(tmp_path):
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=2, secondary_partition=2, rng=0)
    opt = ig.optim.SGD(net.parameters())
    net.parameters()[0].data[...] = np.inf
    with pytest.raises(CheckpointError, match="not written: NaN/inf"):
        ig.training.save_checkpoint(tmp_path / "m.npz", net, opt, epoch=0, batch=0,
                                    rng_state=np.random.default_rng().bit_generator.state,
                                    train_sums=np.zeros(4), history=[], args={})
    assert not list(tmp_path.iterdir())


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_corruption_loads_the_original_or_raises_checkpoint_error(finished, tmp_path, data):
    """Flip, overwrite or cut bytes anywhere: the loader returns the exact values or refuses."""
    original = (finished / "model-0001.npz").read_bytes()
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        i = data.draw(st.integers(0, len(raw) - 1), label="offset")
        raw[i] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw)), label="length")]
    path = tmp_path / "corrupt.npz"
    path.write_bytes(bytes(raw))
    good = ig.training.load_checkpoint(finished / "model-0001.npz")
    try:
        got = ig.training.load_checkpoint(path)
    except CheckpointError:
        return
    assert got.epoch == good.epoch and got.batch == good.batch and got.args == good.args
    assert got.history == good.history and got.rng_state == good.rng_state
    assert sorted(got.model_state) == sorted(good.model_state)
    for k, v in good.model_state.items():
        np.testing.assert_array_equal(got.model_state[k], v, err_msg=k)
    for k, v in good.optimizer_state.items():
        np.testing.assert_array_equal(got.optimizer_state[k], v, err_msg=k)


def test_save_and_load_round_trip_state_dicts(tmp_path):
    net = ig.nets.get_network("resnet_igc", 8, primary_partition=2, secondary_partition=2, rng=1)
    ig.save(net.state_dict(), tmp_path / "m.npz")
    other = ig.nets.get_network("resnet_igc", 8, primary_partition=2, secondary_partition=2, rng=2)
    other.load_state_dict(ig.load(tmp_path / "m.npz"))
    for (n, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    with pytest.raises(TypeError, match="dict of arrays"):
        ig.save([1, 2], tmp_path / "x.npz")
    with pytest.raises(SerializationError, match="no such file"):
        ig.load(tmp_path / "missing.npz")


# ---- silent garbage and raw tracebacks ----------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["--lr", "-1"], "--lr must be in (0"),
    (["--lr", "nan"], "--lr must be a finite"),
    (["--lr-factor", "-1"], "--lr-factor must be in (0, 1]"),
    (["--lr-steps", "-3"], "--lr-steps must be epochs >= 1"),
    (["--lr-steps", "a,b"], "--lr-steps must be comma-separated"),
    (["--rand-seed", "-1"], "--rand-seed must be in 0.."),
    (["--primary-partition", "100000"], "--primary-partition must be in 1..4096"),
    (["--primary-partition", "1000", "--secondary-partition", "1000"], "at most 4096"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--wd", "-0.1"], "--wd must be in [0"),
    (["--batch-size", "0"], "--batch-size must be in 1.."),
    (["--depth", "7"], "cannot build resnet_igc-7"),
    (["--batch-size", "8", "--micro-batches", "9"], "--micro-batches 9 is more than --batch-size 8"),
    (["--gpus", "x"], "--gpus must be comma-separated GPU ids"),
])
def test_bad_options_are_one_line_with_exit_2(tmp_path, capsys, argv, needle):
    status = trainer.main(TINY + ["--output-dir", str(tmp_path / "o")] + argv)
    err = capsys.readouterr().err
    assert status == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written for a refused command


def test_odd_lr_steps_are_said_not_silently_rewritten(tmp_path, capsys):
    """--lr-steps 3,1 is read sorted, and a step at or after the last epoch never happens: both said."""
    o, _ = trainer.resolve_options(trainer.parse_args(
        TINY + ["--output-dir", str(tmp_path / "o"), "--num-epochs", "2", "--lr-steps", "3,1"]))
    assert o["lr_steps"] == [1, 3]
    err = capsys.readouterr().err
    assert "--lr-steps 3,1 read as 1,3" in err and "--lr-steps 3 at or after --num-epochs 2" in err


def test_imagenet_run_folder_is_named_by_the_model():
    o = dict(dataset="imagenet", network="igc_l4m32", depth=18, primary_partition=4, secondary_partition=32)
    assert trainer.default_output_dir(o) == os.path.join("runs", "imagenet-igc_l4m32")


def test_cli_errors_in_subprocesses_have_no_traceback(tmp_path):
    env = dict(os.environ, IGC_NP_THREADS="abc")
    r = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--num-epochs", "1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "IGC_NP_THREADS" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(EVAL_SCRIPT), "--checkpoint", "x.npz",
                        "--batch-size", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--batch-size" in r.stderr and "Traceback" not in r.stderr
    notnpz = tmp_path / "notes.txt"
    notnpz.write_text("hello")
    r = subprocess.run([sys.executable, str(EVAL_SCRIPT), "--checkpoint", str(notnpz)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--checkpoint" in r.stderr and "notes.txt" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unexpected_exception_is_one_line_unless_debugging(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise ZeroDivisionError("something deep")

    monkeypatch.setattr(ig.optim.SGD, "step", broken)
    status, out = run(tmp_path, "--num-epochs", "1")
    err = capsys.readouterr().err
    assert status == 1 and "unexpected ZeroDivisionError: something deep" in err
    assert "IGC_NP_DEBUG=1" in err
    monkeypatch.setenv("IGC_NP_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run(tmp_path, "--num-epochs", "1", name="debug")
    assert not (tmp_path / "debug" / training.LOCK_NAME).exists()  # the lock is released


def test_evaluate_refuses_a_checkpoint_of_another_dataset(finished, capsys):
    assert evaluator.main(["--checkpoint", str(finished / "model-0001.npz"),
                           "--dataset", "svhn"]) == 1
    err = capsys.readouterr().err
    assert "trained on digits" in err and "svhn" in err


def test_nan_stop_prints_no_numpy_warnings(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning would fail the run
        status = trainer.main(["--resume", str(out / "model-0002.npz"), "--num-epochs", "30",
                               "--lr", "1e6"])
    assert status == 1
    err = capsys.readouterr().err
    assert "RuntimeWarning" not in err
    assert "loss is nan" in err.lower() or "loss is inf" in err.lower()
    assert "--log-iters" in err and "model-0002.npz (untouched)" in err


# ---- files that are not regular files (issue 18) ----------------------------------------------
@pytest.mark.parametrize("kind,message", [
    ("fifo", "is a FIFO"), ("devzero", "is a character device"), ("loop", "symbolic link loop"),
    ("folder", "is a folder"), ("missing", "no such file"), ("long", "too long")])
def test_ig_load_refuses_what_is_not_a_regular_file_at_once(tmp_path, kind, message):
    path = tmp_path / "m.npz"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "long":
        path = tmp_path / ("x" * 300 + ".npz")

    with fails_after(20, "ig.load"):
        with pytest.raises(SerializationError, match=message) as e:
            ig.load(path)
    assert str(path)[:60] in str(e.value)
    assert isinstance(e.value, OSError)  # also what `except OSError` around file reading expects


def test_open_regular_checks_the_opened_descriptor(tmp_path, monkeypatch):
    """A name swapped for a FIFO between the check and the open is caught by fstat."""
    fifo = tmp_path / "swap"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(serialization.os, "stat",
                        lambda p, *a, **k: real_stat(tmp_path) if str(p) == str(fifo) else real_stat(p, *a, **k))
    monkeypatch.setattr(serialization, "_kind_problem",
                        lambda mode, real=serialization._kind_problem: None if mode == real_stat(tmp_path).st_mode
                        else real(mode))
    with pytest.raises(serialization.NotRegularFileError, match="swap: is a FIFO"):
        serialization.open_regular(fifo, "file")


# ---- signals during a save (issue 18) ----------------------------------------------------------

from igc_np.app import run_folder, signals  # noqa: E402


def _tiny_state():
    model = ig.nets.get_network("resnet_igc", depth=8, primary_partition=2, secondary_partition=2, rng=0)
    return model, ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)


def _save(path, model, opt):
    checkpoint.save_checkpoint(path, model, opt, epoch=1, batch=0,
                               rng_state=np.random.default_rng(0).bit_generator.state,
                               train_sums=np.zeros(4), history=[{"epoch": 0}], args={})


def _trace_lines(fn, signal_at=None, signum=signal.SIGINT):
    """fn() traced: returns how many 'line' events it makes (the points a signal can arrive
    between); with ``signal_at=k``, ``signum`` is sent to this process at the k-th of them."""
    count = [0]

    def tracer(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] == signal_at:
                os.kill(os.getpid(), signum)
        return tracer
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count[0]


def test_a_second_ctrl_c_at_any_moment_of_a_save_quits_after_it_cleanly(tmp_path):
    """The first Ctrl-C asked for a save; the second arrives at one of ~60 points spread over
    the save (zipfile, fsync, rename included): always KeyboardInterrupt (exit 130), never
    "Can't close the ZIP file", the previous checkpoint intact, no temporary left, the target
    absent, the old file or the complete new one."""
    model, opt = _tiny_state()
    previous = tmp_path / "model-0001.npz"
    _save(previous, model, opt)
    before = previous.read_bytes()
    total = _trace_lines(lambda: _save(tmp_path / "probe.npz", model, opt))
    (tmp_path / "probe.npz").unlink()
    assert total > 200
    points = sorted(set(list(range(1, 30)) + list(range(30, total + 1, max(1, total // 60)))))
    for k in points:
        target = tmp_path / ("model-interrupted.npz" if k % 2 else "model-0001.npz")
        interrupt = signals.GracefulInterrupt(quiet=True)
        with interrupt:
            interrupt.requested = True  # the first Ctrl-C: this save is the one it asked for
            with pytest.raises(KeyboardInterrupt):
                _trace_lines(lambda: _save(target, model, opt), signal_at=k)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, (k, leftovers)
        if target.name == "model-0001.npz":
            checkpoint.load_checkpoint(target)  # the old one or the new one, whole
        else:
            assert previous.read_bytes() == before
            if target.exists():
                checkpoint.load_checkpoint(target)
                target.unlink()
        previous.write_bytes(before)


def test_deferred_signals_deliver_in_order_after_the_block_and_nest():
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: got.append("usr1"))
    try:
        with signals.deferred_signals():
            with signals.deferred_signals():
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.01)
                assert got == []
            assert got == []
        assert got == ["usr1"]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sighup_is_treated_like_sigterm_unless_ignored_by_nohup():
    assert signal.SIGHUP in signals.GracefulInterrupt.SIGNALS
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as from a terminal, even when pytest runs under nohup
    try:
        interrupt = signals.GracefulInterrupt(quiet=True)
        with interrupt:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.01)
        assert interrupt.requested and interrupt.exit_status == 129 and interrupt.name == "SIGHUP"
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        interrupt = signals.GracefulInterrupt(quiet=True)
        with interrupt:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.01)
        assert not interrupt.requested and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_sighup_saves_the_interrupted_state(tmp_path):
    """A closed terminal (SIGHUP) saves model-interrupted.npz and exits 129, like SIGTERM."""
    out = tmp_path / "out"
    # SIGHUP at its default first: a child inherits an ignored SIGHUP (pytest under nohup), and
    # the trainer rightly leaves an ignored SIGHUP alone
    from_a_terminal = ("import runpy, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                       "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-u", "-c", from_a_terminal, str(TRAIN_SCRIPT)] + TINY + [
        "--num-epochs", "50", "--output-dir", str(out)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("Epoch[0] Batch"):
            break
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert checkpoint.load_checkpoint(out / "model-interrupted.npz").batch > 0


# ---- the run folder: every folder written is locked and checked (issue 18) ----------------------
import socket  # noqa: E402


@pytest.fixture
def live_run(tmp_path):
    """A folder A holding a finished run's checkpoints and the lock of a live process."""
    a = tmp_path / "A"
    status, _ = run(tmp_path, "--num-epochs", "1", name="A")
    assert status == 0
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (a / run_folder.LOCK_NAME).write_text(json.dumps(
        {"pid": sleeper.pid, "host": socket.gethostname(), "started": "2026-01-01 10:00:00",
         "command": "cifar10_igc.py (run A)"}))
    yield a, sleeper
    sleeper.kill()
    sleeper.wait()


def test_a_model_prefix_into_a_live_runs_folder_is_refused(live_run, tmp_path, capsys):
    a, sleeper = live_run
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    for extra in ([], ["--overwrite"]):
        status = trainer.main(TINY + ["--output-dir", str(tmp_path / "B"), "--model-prefix",
                                      str(a / "model"), "--num-epochs", "1"] + extra)
        err = capsys.readouterr().err
        assert status == 2, err
        assert f"--model-prefix {a} is in use by another trainer: pid {sleeper.pid}" in err
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before  # nothing written or deleted


def test_the_prefix_folder_is_locked_while_a_run_writes_there(tmp_path):
    out, elsewhere = tmp_path / "B", tmp_path / "A"
    out.mkdir()
    lock = run_folder.RunLock(out)
    lock.acquire()
    try:
        run_folder.check_run_folder(out, elsewhere / "model", delete=True)
        assert json.loads((elsewhere / run_folder.LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(run_folder.RunFolderError, match="in use"):  # a second run there
            _other_process_lock(elsewhere)
    finally:
        lock.release()
    assert not (elsewhere / run_folder.LOCK_NAME).exists() and not (out / run_folder.LOCK_NAME).exists()


def _other_process_lock(folder):
    """Try to take ``folder``'s lock from another process (raises RunFolderError if refused)."""
    code = ("import sys; from igc_np.app import run_folder\n"
            f"try:\n    run_folder.RunLock({str(folder)!r}).acquire()\n"
            "except run_folder.RunFolderError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if r.returncode == 3:
        raise run_folder.RunFolderError(r.stdout.strip())
    assert r.returncode == 0, r.stderr


def test_overwrite_removes_only_files_the_trainer_wrote(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    np.savez(out / "model-0007.npz", mine=np.arange(3))         # the user's own file, same pattern
    (out / "model-notes.npz").write_bytes(b"x")                 # not a checkpoint name at all
    assert run(tmp_path, "--num-epochs", "1", "--overwrite", name="run")[0] == 0
    err = capsys.readouterr().err
    assert "kept model-0007.npz (not written by the trainer)" in err
    assert np.load(out / "model-0007.npz")["mine"].tolist() == [0, 1, 2]
    assert (out / "model-notes.npz").read_bytes() == b"x"
    assert not (out / "model-0002.npz").exists()  # the earlier run's own checkpoint is gone


def test_a_prefix_with_glob_characters_is_matched_exactly(finished, tmp_path, capsys):
    """model[v2]: the guard against replacing later checkpoints must see model[v2]-0002."""
    out = tmp_path / "run"
    out.mkdir()
    for p in finished.iterdir():
        name = p.name.replace("model-", "model[v2]-")
        if p.is_file():
            shutil.copy(p, out / name)
    later = (out / "model[v2]-0002.npz").read_bytes()
    assert [p.name for p in run_folder.checkpoint_files(out / "model[v2]")] == \
        ["model[v2]-0001.npz", "model[v2]-0002.npz"]
    (out / "modelv-0009.npz").write_bytes(b"")  # what the glob model[v2]-*.npz would match
    assert [p.name for p in run_folder.checkpoint_files(out / "model[v2]")][-1] == "model[v2]-0002.npz"
    assert trainer.main(["--resume", str(out / "model[v2]-0001.npz")]) == 2
    assert "model[v2]-0002.npz" in capsys.readouterr().err
    assert (out / "model[v2]-0002.npz").read_bytes() == later


def test_a_prefix_too_long_for_its_temporary_is_refused_before_training(tmp_path, capsys):
    """244 bytes: model-0001.npz fits NAME_MAX (255), its temporary does not."""
    prefix = tmp_path / "out" / ("m" * 244)
    with pytest.raises(run_folder.RunFolderError, match=r"temporary name of \d+ bytes.*NAME_MAX"):
        run_folder.check_run_folder(tmp_path / "out", prefix)
    status = trainer.main(TINY + ["--model-prefix", str(prefix), "--num-epochs", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "NAME_MAX" in err and "please report" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    ok = name_max - serialization.TEMPORARY_EXTRA - len("-interrupted.npz")
    run_folder.check_run_folder(tmp_path / "out", tmp_path / "out" / ("m" * ok))  # the longest that fits


def test_a_path_over_path_max_is_a_clear_error(tmp_path, capsys):
    deep = tmp_path.joinpath(*["d" * 200] * 25)  # ~5000 bytes
    status = trainer.main(TINY + ["--output-dir", str(deep), "--num-epochs", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "PATH_MAX" in err and "please report" not in err and "Traceback" not in err


def test_temporaries_of_killed_processes_are_removed_when_a_run_opens_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = serialization.host_tag()
    stale = out / f".model-0003.npz.{here}-{dead.pid}.abcd1234.tmp"
    alive = out / f".model-0003.npz.{here}-{os.getppid()}.abcd1234.tmp"
    foreign = out / f".model-0003.npz.{serialization.host_tag('elsewhere')}-{dead.pid}.abcd1234.tmp"
    users = out / ".notes.tmp"
    for p in (stale, alive, foreign, users):
        p.write_bytes(b"half a checkpoint")
    assert run(tmp_path, "--num-epochs", "1", name="run")[0] == 0
    assert f"removed {stale}" in capsys.readouterr().err
    assert not stale.exists() and alive.exists() and foreign.exists() and users.exists()


def test_a_folder_without_a_checkpoint_is_started_not_protected(tmp_path, capsys):
    """A run that failed before its first checkpoint left an empty log.jsonl: the rerun starts."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text("")
    assert run(tmp_path, "--num-epochs", "1", name="run")[0] == 0
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "nothing to resume" in err
    assert len(read_log(out)) == 1 and (out / "model-0001.npz").exists()


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_a_lock_file_that_is_a_fifo_or_device_is_refused_naming_it(tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / run_folder.LOCK_NAME
    os.mkfifo(lock) if kind == "fifo" else lock.symlink_to("/dev/zero")

    with fails_after(60, "the lock file"):
        status = trainer.main(TINY + ["--output-dir", str(out), "--num-epochs", "1"])
    err = capsys.readouterr().err
    assert status == 2 and f"unreadable lock file {lock}" in err
    assert ("FIFO" if kind == "fifo" else "character device") in err


# ---- resuming (issue 18) -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_resume_from_a_fifo_or_device_says_what_it_is(tmp_path, capsys, kind):
    path = tmp_path / "model-0003.npz"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")

    with fails_after(30, "--resume"):
        status = trainer.main(["--resume", str(path)])
    err = capsys.readouterr().err
    assert status == 1 and ("is a FIFO" if kind == "fifo" else "is a character device") in err
    assert "no such file" not in err


def test_a_missing_checkpoint_lists_its_neighbours_exactly(tmp_path):
    for name in ("model[v2]-0001.npz", "model[v2]-0002.npz", "modelv-0003.npz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no such file; in .* there are: "
                                              r"model\[v2\]-0001.npz, model\[v2\]-0002.npz$"):
        checkpoint.load_checkpoint(tmp_path / "model[v2]-0009.npz")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b))
def test_a_printed_command_gives_the_same_bytes_back_when_pasted(name):
    """shell_quote of any file name (undecodable bytes included, as os.fsdecode gives them):
    pasted into bash, the argument is those bytes."""
    text = os.fsdecode(b"runs/" + name)
    line = checkpoint.shell_join(["printf", "%s", text])
    assert "\\udc" not in line  # never the surrogate escapes of Python
    r = subprocess.run(["bash", "-c", line], capture_output=True, timeout=30)
    assert r.stdout == b"runs/" + name


def test_resume_options_say_what_a_resume_keeps_or_changes():
    stored = dict(num_epochs=40, lr_steps=[20, 30, 35], lr=0.1, batch_size=64, output_dir="x")
    fill, notes = checkpoint.resume_options(stored, {"num_epochs": 80}, skip=("output_dir",))
    assert fill["lr_steps"] == [40, 60, 70] and "output_dir" not in fill and fill["lr"] == 0.1
    assert notes == ["resume: --num-epochs 80 (was 40): the default lr steps recomputed as "
                     "40,60,70 (were 20,30,35)"]
    stored["lr_steps"] = [10, 15]  # given explicitly by the run: kept
    fill, notes = checkpoint.resume_options(stored, {"num_epochs": 80, "lr": 0.05})
    assert fill["lr_steps"] == [10, 15] and "lr" not in fill
    assert "the lr steps 10,15 given to the run are kept" in notes[-1]
    assert "resume: --lr 0.05 (the checkpoint's was 0.1)" in notes
    assert checkpoint.resume_options(stored, {})[1] == []  # the same length: nothing to say


# ---- the trainer's side of these classes (igc_np/app/cli.py, run.py) ----------------------------

def test_a_closed_stdout_still_trains(tmp_path):
    out = tmp_path / "out"
    cmd = " ".join([sys.executable, str(TRAIN_SCRIPT)] + TINY + ["--num-epochs", "1", "--output-dir", str(out)])
    r = subprocess.run(["bash", "-c", cmd + " >&-"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert "AttributeError" not in r.stderr and (out / "model-0001.npz").exists()


def test_a_data_error_during_training_saves_first_and_names_the_file(tmp_path, capsys, monkeypatch):
    from igc_np.app import datasets
    from igc_np.app.data import DatasetError
    real = datasets.TrainingData.batches

    def failing(self, rng, start_batch=0, part=None):
        for b, batch in enumerate(real(self, rng, start_batch, part)):
            if b == 2:
                raise DatasetError("train/n01/n01_7.JPEG (class 'n01', image 7): cannot decode")
            yield batch
    monkeypatch.setattr(datasets.TrainingData, "batches", failing)
    status, out = run(tmp_path, "--num-epochs", "2")
    err = capsys.readouterr().err
    assert status == 1 and "n01_7.JPEG" in err and "model-interrupted.npz" in err
    assert checkpoint.load_checkpoint(out / "model-interrupted.npz").batch == 2


def test_a_non_utf8_output_folder_prints_a_resume_command_that_works_pasted(tmp_path):
    """Ctrl-C in runs/caf\xe9 (Latin-1 bytes): the printed command, pasted into bash, names
    the very file saved (not caf\\udce9)."""
    out = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    proc = subprocess.Popen([os.fsencode(sys.executable), b"-u", os.fsencode(str(TRAIN_SCRIPT))]
                            + [a.encode() for a in TINY] + [b"--num-epochs", b"50", b"--output-dir", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    for line in proc.stdout:
        if line.startswith(b"Epoch[0] Batch"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    command = [l for l in err.splitlines() if l.strip().startswith(b"python")][-1].strip()
    r = subprocess.run([b"bash", b"-c", b"set -- " + command + b"; printf %s \"$4\""], capture_output=True)
    assert r.stdout == out + b"/model-interrupted.npz", command
    assert os.path.exists(r.stdout)


def test_a_resume_with_another_num_epochs_says_what_happens_to_the_lr_steps(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    assert trainer.main(["--resume", str(out / "model-0002.npz"), "--num-epochs", "4"]) == 0
    assert "resume: --num-epochs 4 (was 2): the default lr steps recomputed as 2,3 (were 1)" \
        in capsys.readouterr().out


def test_a_negative_worker_count_is_a_usage_error(tmp_path, capsys):
    status = trainer.main(["--dataset", "imagenet", "--workers", "-1", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and "--workers must be in 1.." in err and "unexpected" not in err


def test_two_trainers_starting_together_in_one_folder_one_is_refused_cleanly(tmp_path, monkeypatch):
    """Both prove the folder writable with the same probe name: the other process may replace and
    remove ours between our rename and our unlink. Before: "cannot write there (no such file)"
    (exit 2 with a wrong reason, found with two trainers started at once); the lock then decides."""
    import contextlib
    real = run_folder.atomic_write

    @contextlib.contextmanager
    def raced(path, *a, **kw):
        with real(path, *a, **kw) as f:
            yield f
        os.unlink(path)  # the second trainer's unlink of the shared name, just after our rename
    monkeypatch.setattr(run_folder, "atomic_write", raced)
    run_folder.check_writable(tmp_path / "race", "--output-dir")
    assert not list((tmp_path / "race").iterdir())
