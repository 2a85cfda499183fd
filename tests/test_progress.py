"""Progress lines: every --log-iters batches, and at least every ~10 s when no bar shows progress."""
import importlib.util
from pathlib import Path

import pytest

from igc_np.app import progress
from igc_np.app.progress import PROGRESS_SECONDS, ProgressLines

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Advances ``step`` seconds each time it is read."""

    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_lines_every_log_iters_batches_and_every_ten_seconds():
    clock = FakeClock(3.0)  # each batch reads the clock once: 3 s per batch
    lines = ProgressLines(log_iters=5, timed=True, clock=clock)
    lines.start()
    due = {b: lines.due(b) for b in range(1, 12)}
    # 3 s per batch: 10 s have passed at batch 4 (12 s); then the interval at 5 resets the clock
    assert {b: k for b, k in due.items() if k} == {4: "clock", 5: "interval", 9: "clock", 10: "interval"}
    assert PROGRESS_SECONDS == 10.0


def test_no_clock_lines_on_a_terminal_with_a_bar():
    lines = ProgressLines(log_iters=5, timed=False, clock=FakeClock(100.0))
    assert [b for b in range(1, 12) if lines.due(b)] == [5, 10]


def test_fast_batches_print_only_at_the_interval():
    lines = ProgressLines(log_iters=50, timed=True, clock=FakeClock(0.01))
    assert [b for b in range(1, 120) if lines.due(b)] == [50, 100]


def test_each_epoch_starts_its_own_ten_seconds():
    clock = FakeClock(1.0)
    lines = ProgressLines(log_iters=1000, timed=True, clock=clock)
    clock.t += 50  # the test pass between two epochs took 50 s
    lines.start()
    assert lines.due(1) is None  # not a line at once because the last one is old


def test_bad_log_iters():
    with pytest.raises(ValueError, match="log_iters"):
        ProgressLines(0, timed=True)


def _trainer():
    spec = importlib.util.spec_from_file_location("cifar10_igc_progress",
                                                  ROOT / "examples" / "cifar10_igc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trainer_prints_timed_lines_into_a_log_file(tmp_path, monkeypatch, capsys):
    """stdout captured (not a terminal): with 3 s per batch and --log-iters 100, a line comes
    after 10 s (batch 4 of each 5-batch epoch), not only every 100 batches."""
    monkeypatch.setattr(progress, "_clock", FakeClock(3.0))
    status = _trainer().main(["--network", "resnet_igc", "--depth", "8", "--primary-partition", "2",
                              "--secondary-partition", "2", "--batch-size", "32", "--subset", "160",
                              "--log-iters", "100", "--num-epochs", "2",
                              "--output-dir", str(tmp_path / "run")])
    assert status == 0
    out = capsys.readouterr().out
    batch_lines = [line.split("\t")[0] for line in out.splitlines() if "Speed:" in line]
    assert batch_lines == ["Epoch[0] Batch [4]", "Epoch[1] Batch [4]"], out


@pytest.mark.parametrize("eval_bn,shown", [("running", "[test BN: running]"),
                                           ("precise", "[test BN: precise (5 training batches; asked for)]"),
                                           ("auto", "[test BN: precise (5 training batches; the running statistics are young after 5 updates)]")])
def test_the_epoch_line_says_which_statistics_were_used(tmp_path, capsys, eval_bn, shown):
    status = _trainer().main(["--network", "resnet_igc", "--depth", "8", "--primary-partition", "2",
                              "--secondary-partition", "2", "--batch-size", "32", "--subset", "160",
                              "--num-epochs", "1", "--eval-bn", eval_bn,
                              "--output-dir", str(tmp_path / "run")])
    assert status == 0
    epoch_line = next(line for line in capsys.readouterr().out.splitlines()
                      if line.startswith("Epoch[0] lr"))
    assert epoch_line.endswith(shown), epoch_line
