"""The trainer's option table (igc_np/app/options.py) and what derives from it: the command line,
the checks, a resumed run's options, the README's table, the run folder's name."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import commands
from igc_np.app import cli, options
from igc_np.app.checkpoint import CheckpointError, load_checkpoint
from igc_np.app.options import BY_NAME, OPTIONS, OptionError, check_options
from test_trainer import TINY, assert_same_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ROUND2 = Path(__file__).resolve().parent / "fixtures" / "trainer_round2"


def resolve(argv):
    return cli.resolve_options(options.parse_args(argv))


# ---- the table drives argparse, the checks and the markdown -------------------------------------
def test_the_command_line_is_the_table():
    parser = options.parser()
    actions = [a for a in parser._actions if a.dest != "help"]
    assert sorted(a.dest for a in actions) == sorted(BY_NAME)
    for a in actions:
        o = BY_NAME[a.dest]
        assert a.option_strings == [o.flag, *o.aliases]
        if isinstance(o.valid, (tuple, dict)) and o.type is str:
            assert tuple(a.choices) == tuple(o.valid)


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.type in (int, float)],
                         ids=lambda o: o.name)
def test_every_numeric_range_is_checked_at_both_ends(option):
    lo, hi = option.valid[:2]
    closed = option.valid[2] if option.type is float else "[]"
    inside = {"[": lo, "(": lo + (hi - lo) / 2}[closed[0]], {"]": hi, ")": hi - (hi - lo) / 2}[closed[1]]
    for v in inside:
        check_options({option.name: option.type(v)})
    step = 1 if option.type is int else 0
    outside = [lo - step if closed[0] == "[" else lo, hi + step if closed[1] == "]" else hi]
    if option.type is float:
        outside = [v if c in "()" else v - 1e-3 * (1 if v == lo else -1)
                   for v, c in zip(outside, closed)]
    for v in outside:
        with pytest.raises(OptionError, match=f"{option.flag} must be in"):
            check_options({option.name: v})


def test_choices_and_types_are_checked_with_the_flag():
    with pytest.raises(OptionError, match="--eval-bn must be one of auto, running, precise"):
        check_options({"eval_bn": "sometimes"})
    with pytest.raises(OptionError, match="--depth must be an integer"):
        check_options({"depth": 8.5})
    with pytest.raises(OptionError, match="--lr-factor must be in \\(0, 1\\].*divides it by 10"):
        check_options({"lr_factor": -0.1})


def test_markdown_has_a_row_per_option_and_runs_as_a_command():
    table = options.markdown()
    rows = [r for r in table.splitlines() if r.startswith("| `--")]
    assert len(rows) == len(OPTIONS)
    assert "| `--num-epochs`, `--epochs` | digits 20, cifar10 400" in table
    assert "1/2, 3/4, 7/8 of --num-epochs; imagenet 30,60,90" in table
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "igc_np.app.options", "--markdown"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == table
    r = subprocess.run([sys.executable, "-m", "igc_np.app.options"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--markdown" in r.stderr and "Traceback" not in r.stderr


# ---- resume: the table's resume column ---------------------------------------------------------
def test_the_resume_column_decides_what_a_checkpoint_gives():
    ckpt = load_checkpoint(ROUND2 / "model-0001.npz")
    path = ckpt.path
    for option in OPTIONS:
        if option.resume == "fixed" and option.name in ckpt.args:
            o = {option.name: "other"}
            with pytest.raises(CheckpointError, match=f"trained with {option.flag}"):
                cli._take_from_checkpoint(o, ckpt, path)
    o = {"lr": 0.5}
    cli._take_from_checkpoint(o, ckpt, path)
    assert o["lr"] == 0.5 and o["momentum"] == ckpt.args["momentum"]  # kept: given wins, else stored
    assert "output_dir" not in o and "device" not in o  # command line: never from a file
    assert set(o) == {k for k in ckpt.args if k in options.FROM_CHECKPOINT}


def test_a_round2_checkpoint_resumes_bit_identically(tmp_path):
    """model-0001.npz written by the trainer before the split (round 2), resumed here for one
    more epoch, equals the model-0002.npz the old trainer wrote in the same run."""
    shutil.copy(ROUND2 / "model-0001.npz", tmp_path / "model-0001.npz")
    assert commands.train(["--resume", tmp_path / "model-0001.npz"]) == 0
    assert_same_checkpoint(ROUND2 / "model-0002.npz", tmp_path / "model-0002.npz")
    new = load_checkpoint(tmp_path / "model-0002.npz")
    assert set(new.args) == set(load_checkpoint(ROUND2 / "model-0002.npz").args)


# ---- issue 19: the run folder and the label of the baselines and of float64 --------------------
def test_baselines_are_named_by_their_width_with_a_classic_default():
    o, _ = resolve(["--network", "resnet"])
    assert (o["primary_partition"], o["secondary_partition"]) == (16, 1)  # ResNet's C = 16
    assert o["output_dir"] == os.path.join("runs", "digits-resnet8-W16")
    assert options.network_label(o) == "resnet-8 width 16"
    o, _ = resolve(["--network", "plain", "--primary-partition", "8", "--secondary-partition", "2"])
    assert o["output_dir"] == os.path.join("runs", "digits-plain8-W16") and \
        options.network_label(o) == "plain-8 width 16"
    o, _ = resolve(["--network", "resnet", "--dataset", "cifar10"])  # C = 48, as IGC-L24M2's
    assert o["output_dir"] == os.path.join("runs", "cifar10-resnet20-W48")
    o, _ = resolve([])  # the IGC nets keep L and M in the name
    assert o["output_dir"] == os.path.join("runs", "digits-resnet_igc8-L4M4")
    assert options.network_label(o) == "resnet_igc-8 L=4 M=4"


def test_the_dtype_is_in_the_default_folder_unless_float32():
    assert resolve(["--dtype", "float64"])[0]["output_dir"] == \
        os.path.join("runs", "digits-resnet_igc8-L4M4-float64")
    assert resolve(["--dtype", "float32"])[0]["output_dir"] == \
        os.path.join("runs", "digits-resnet_igc8-L4M4")


def test_float32_and_float64_runs_of_one_network_train_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick = [a for a in TINY if a not in ("--network", "resnet_igc")] + ["--num-epochs", "1"]
    quick[quick.index("--primary-partition") + 1] = "4"
    assert commands.train(["--network", "resnet"] + quick) == 0
    assert commands.train(["--network", "resnet", "--dtype", "float64"] + quick) == 0
    out = capsys.readouterr().out
    assert "Network: resnet-8 width 8 on cpu, float32" in out
    assert "Network: resnet-8 width 8 on cpu, float64" in out
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["digits-resnet8-W8", "digits-resnet8-W8-float64"]
    for run in runs:
        assert (tmp_path / "runs" / run / "model-0001.npz").is_file()
    assert np.load(tmp_path / "runs" / runs[1] / "model-0001.npz")["model/fc_weight"].dtype == np.float64


# ---- docs/add_a_dataset.md ----------------------------------------------------------------------
def test_the_dataset_recipe_runs(capsys):
    """The recipe's Python block, as written: one registry entry makes a data set trainable."""
    text = (ROOT / "docs" / "add_a_dataset.md").read_text()
    block = text.split("```python\nimport numpy")[1].split("```")[0]
    try:
        exec(compile("import numpy" + block, "docs/add_a_dataset.md", "exec"), {})
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"resnet_igc 5 {os.path.join('runs', 'stripes-resnet_igc8-L4M4')}"
        assert out[1].startswith("Dataset('stripes', train=(100, 3, 16, 16)")
        assert out[2] == "(64, 3, 16, 16) (64,)"
        assert "stripes" in options.parser().format_help()  # --dataset's choices are the registry
    finally:
        from igc_np.app import datasets
        datasets.REGISTRY.pop("stripes", None)
