#!/usr/bin/env python
"""What a reader follows: project files and lines that run for one training step, one conv
forward (CPU, and the GPU path through the emulator), one short trainer run; the longest units.

    python benchmarks/code_counts.py                    # this checkout
    python benchmarks/code_counts.py --root ../igc_np-before  # another checkout (e.g. a worktree of the commit before a change)

"Files" are the project's .py files (igc_np/, examples/) with functions that ran (and, in
brackets, all those imported); "lines" the lines of the distinct functions that ran (their whole
span: what a reader opens and reads), counted with sys.settrace (pool threads started before the
count are not traced: both sides of a comparison are counted the same way). Units: every function and class of igc_np/ and examples/ by its line span (AST).
"""
import argparse
import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path


def _traced(root, body):
    """(files, functions) of the project whose code ran in ``body()``."""
    ran = set()
    prefixes = (str(Path(root) / "igc_np"), str(Path(root) / "examples"))

    def tracer(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code.co_filename.startswith(prefixes):
                ran.add(code)
        return None
    sys.settrace(tracer)
    import threading
    threading.settrace(tracer)
    try:
        body()
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return _summary(ran)


def _summary(ran):
    imported = {c.co_filename for c in ran}
    # a file's import and a class statement's body are not units a reader follows: functions only
    ran = {c for c in ran if c.co_flags & inspect.CO_OPTIMIZED}
    files = {c.co_filename for c in ran}
    spans = {}
    for c in ran:
        lines = [line for _, _, line in c.co_lines() if line is not None] or [c.co_firstlineno]
        spans[(c.co_filename, c.co_firstlineno)] = max(lines) - c.co_firstlineno + 1
    return files, spans, imported


def _report(name, root, files, spans, imported):
    rel = sorted(os.path.relpath(f, root) for f in files)
    print(f"{name}: {len(files)} files with functions that ran ({len(imported)} imported), "
          f"{len(spans)} functions, {sum(spans.values())} lines")
    print("   " + " ".join(rel))


def scenario_step(root):
    """One training step of the default digits network (batch 64): forward, loss, backward,
    update, and the metrics update of the loop."""
    import numpy as np
    import igc_np as ig
    from igc_np import functional as F
    from igc_np.training import Metrics
    model = ig.nets.get_network("resnet_igc", 8, 10, 4, 4, rng=0)
    opt = ig.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = ig.Tensor(rng.standard_normal((64, 3, 8, 8)).astype(np.float32))
    y = ig.Tensor(rng.integers(0, 10, 64))
    m = Metrics()

    def step():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update(loss, logits, y)
    step()  # warm: first-call imports and caches are not the step
    return _traced(root, step)


def scenario_conv(root, device):
    import numpy as np
    import igc_np as ig
    from igc_np import functional as F
    rng = np.random.default_rng(0)
    x = ig.Tensor(rng.standard_normal((8, 16, 8, 8)).astype(np.float32), device=device)
    w = ig.Tensor(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), device=device)
    F.conv2d(x, w, padding=1)  # warm (the emulator compiles the kernels once)
    return _traced(root, lambda: F.conv2d(x, w, padding=1))


def scenario_trainer(root, tmp, trace=True):
    """The trainer script, one epoch of 2 batches on 64 digits, as a command in this process."""
    import runpy
    script = str(Path(root) / "examples" / "cifar10_igc.py")
    argv = [script, "--subset", "64", "--batch-size", "32", "--num-epochs", "1",
            "--output-dir", str(tmp), "--overwrite"]

    def run():
        saved = sys.argv
        sys.argv = argv
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit:
            pass
        finally:
            sys.argv = saved
    return _traced(root, run) if trace else run()


def scenario_loop_step(root, tmp):
    """One iteration of the trainer's loop (batch 2 of 2): from the end of the first
    ``Run.after_batch`` to the end of the second; the functions the loop body calls."""
    import igc_np.training as training
    calls, real = [], training.Run.after_batch

    def marked(self, *args):
        result = real(self, *args)
        calls.append(1)
        if len(calls) == 1:
            sys.settrace(tracer)
            threading.settrace(tracer)
        elif len(calls) == 2:
            sys.settrace(None)
            threading.settrace(None)
        return result
    import threading
    ran = set()
    prefixes = (str(Path(root) / "igc_np"), str(Path(root) / "examples"))

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(prefixes):
            ran.add(frame.f_code)
        return None
    training.Run.after_batch = marked
    try:
        scenario_trainer(root, tmp, trace=False)
    finally:
        training.Run.after_batch = real
    return _summary(ran)


def units(root, top=12):
    """(span, 'file:line name') of every function and class, longest first."""
    found = []
    for base in ("igc_np", "examples"):
        for path in sorted((Path(root) / base).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    span = node.end_lineno - node.lineno + 1
                    kind = "class" if isinstance(node, ast.ClassDef) else "def"
                    found.append((span, f"{path.relative_to(root)}:{node.lineno} {kind} {node.name}"))
    found.sort(reverse=True)
    return found[:top], sum(1 for s, u in found if (" def " in u and s > 60) or (" class " in u and s > 200))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--only", choices=("step", "conv-cpu", "conv-emu", "trainer", "loop-step", "units"))
    args = p.parse_args(argv)
    root = str(Path(args.root).resolve())
    if args.only is None:  # each scenario in a fresh process: imports are part of what runs
        for only in ("step", "conv-cpu", "conv-emu", "trainer", "loop-step", "units"):
            subprocess.run([sys.executable, __file__, "--root", root, "--only", only], check=False)
        return 0
    sys.path.insert(0, root)
    os.environ["PYTHONPATH"] = root
    if args.only == "units":
        longest, over = units(root)
        print(f"units over the limits (def > 60, class > 200 lines): {over}; the longest:")
        for span, unit in longest:
            print(f"   {span:4d}  {unit}")
        return 0
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        result = {"step": lambda: scenario_step(root),
                  "conv-cpu": lambda: scenario_conv(root, "cpu"),
                  "conv-emu": lambda: scenario_conv(root, "emu"),
                  "trainer": lambda: scenario_trainer(root, Path(tmp) / "run"),
                  "loop-step": lambda: scenario_loop_step(root, Path(tmp) / "run")}[args.only]()
        _report(args.only, root, *result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
