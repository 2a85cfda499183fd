"""The docs run: every ```python block and every shell command of README.md and docs/*.md.

Rules for the pages (what this test enforces):
- A ```python block runs by itself, verbatim, in a process of its own (imports included).
- Shell commands live in ```bash blocks (an unlabelled or ```text block is output: no command in it).
- A block that needs what a test machine lacks is marked by an HTML comment on the line before its
  fence, ``<!-- needs: gpu -->`` (or ``internet``, ``data: CIFAR-10``, ``torch``, ``cluster``, ...):
  it is skipped with that reason. Everything else runs here, in page order, in a scratch folder,
  except the commands CI itself runs (``ELSEWHERE``).
- A ```python block that needs what the page's commands made (a checkpoint) is marked
  ``<!-- after: ... -->``: it runs in the scratch folder after the commands before it.
- The README's sample output has the shape of what its main command prints (numbers aside).
- Every repository path and relative link the pages name exists.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from igc_np.app import options

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SHELL = {"bash", "sh", "shell", "console"}
OUTPUT = {"", "text", "output"}
NEEDS = re.compile(r"<!--\s*(needs|after):\s*(.+?)\s*-->")
# commands CI runs itself (.ci/run): installing, and the whole test suite
ELSEWHERE = {
    'python -m pip install -e ".[examples]"': ".ci/run installs it",
    'python -m pip install -e ".[test]"': ".ci/run installs it",
    "python -m pytest -q": ".ci/run runs the suite (this test is part of it)",
}
# blocks of pages another engineer owns, waiting for their marker (first code line -> why)
PENDING = {
    ("kernels.md", "import igc_np.kernels as K"):
        "docs/kernels.md (kernels): K.conv.conv2d_forward on 'cuda' with x and W undefined; needs "
        "<!-- needs: gpu --> or an 'emu' example",
}


def blocks(path):
    """[(language, line number of the fence, code, needs or None)] of a markdown page."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2).lower(), i
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        need = NEEDS.search(before)
        body, i = [], i + 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        mark = None if not need else (need.group(2) if need.group(1) == "needs" else "after")
        out.append((lang, start + 1, "\n".join(body) + "\n", mark))
        i += 1
    return out


def commands(code):
    """Shell commands of a bash block: continuation lines joined, comments and blanks dropped."""
    text = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _case_id(path, line):
    return f"{path.relative_to(ROOT)}:{line}"


PYTHON = [(p, line, code, need) for p in PAGES for lang, line, code, need in blocks(p)
          if lang == "python"]


@pytest.mark.parametrize("path,line,code,need", PYTHON,
                         ids=[_case_id(p, line) for p, line, _, _ in PYTHON])
def test_python_block_runs(path, line, code, need, tmp_path):
    if need == "after":
        pytest.skip("runs after the page's commands (test_shell_commands_run)")
    if need:
        pytest.skip(f"needs {need}")
    first = (path.name, code.strip().splitlines()[0])
    if first in PENDING:
        pytest.skip(f"pending: {PENDING[first]}")
    # a process of its own: a block may change global state (a data set registered, a seed)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("IGC_NP_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{_case_id(path, line)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def test_output_blocks_hold_no_commands():
    """A command in an unlabelled fence would escape the shell-command test below."""
    for path in PAGES:
        for lang, line, code, _ in blocks(path):
            if lang in OUTPUT:
                for text in code.splitlines():
                    assert not re.match(r"^\s*(\$ |python |pip |mpiexec |env )", text), \
                        f"{_case_id(path, line)}: a command in an output block: {text!r} (use ```bash)"


def test_no_indented_commands():
    """An indented (4-space) code block is invisible to this test: commands go in ```bash."""
    for path in PAGES:
        fenced = False
        for n, text in enumerate(path.read_text().splitlines(), start=1):
            if re.match(r"^\s*```", text):
                fenced = not fenced
            elif not fenced and re.match(r"^ {4,}(python|pip|env|mpiexec|mpirun|srun) ", text):
                assert False, f"{_case_id(path, n)}: an indented command {text.strip()!r} (use ```bash)"


def test_python_blocks_are_found():
    assert len(PYTHON) >= 3 and all(p.exists() for p in PAGES)
    langs = {lang for p in PAGES for lang, *_ in blocks(p)}
    assert langs <= SHELL | OUTPUT | {"python"}, langs  # a new language needs a rule here


def _scratch(tmp_path):
    """A folder where the pages' relative paths (examples/, benchmarks/) resolve, outputs stay."""
    for name in ("examples", "benchmarks", "igc_np"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("IGC_NP_DEBUG", None)
    return env


def _shape(line):
    """A printed line with its numbers blanked: what must stay as the README shows it."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", line.strip())


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_shell_commands_run(path, tmp_path):
    """Every unmarked command of the page, in page order, in one scratch folder, exits 0."""
    env = _scratch(tmp_path)
    ran, skipped = [], []
    page = blocks(path)
    for k, (lang, line, code, need) in enumerate(page):
        if lang == "python" and need == "after":
            r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{_case_id(path, line)}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            ran.append(f"python block at line {line}")
            continue
        if lang not in SHELL:
            continue
        for cmd in commands(code):
            if need or cmd in ELSEWHERE:
                skipped.append((cmd, need or ELSEWHERE[cmd]))
                continue
            r = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600, executable="/bin/bash")
            assert r.returncode == 0, f"{_case_id(path, line)}: {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            ran.append(cmd)
            nxt = page[k + 1] if k + 1 < len(page) else None
            if nxt and nxt[0] in OUTPUT and len(commands(code)) == 1:
                _check_sample(path, nxt, r.stdout, cmd)
    if not ran and not skipped:
        pytest.skip("no shell commands on this page")


def _check_sample(path, block, stdout, cmd):
    """The sample output printed after a one-command block: its first line is the command's first
    line, and every other shown line (but '...') has the shape of a printed line."""
    _, line, sample, _ = block
    shown = [s for s in sample.splitlines() if s.strip() and s.strip() != "..."]
    printed = [_shape(s) for s in stdout.splitlines() if s.strip()]
    assert shown and printed, f"{_case_id(path, line)}: nothing to compare for {cmd}"
    assert _shape(shown[0]) == printed[0], \
        f"{_case_id(path, line)}: the sample's first line is not what {cmd} prints first:\n" \
        f"  shown:   {shown[0]}\n  printed: {stdout.splitlines()[0]}"
    for s in shown[1:]:
        assert _shape(s) in printed, f"{_case_id(path, line)}: {cmd} prints no line like {s!r}"


PATH_RE = re.compile(r"`((?:igc_np|examples|tests|docs|benchmarks)/[\w./*-]*)`")
LINK_RE = re.compile(r"\]\(([^)#:]+)(?:#[^)]*)?\)")


# recipes name the files a reader is about to create (igc_np/ops/foo.py): their links are checked
RECIPES = {"add_an_op.md", "add_a_dataset.md"}


def test_named_paths_and_links_exist():
    """`igc_np/nn.py`, `tests/test_nn.py`, [text](docs/x.md): a renamed file must not leave the
    docs pointing at nothing (globs like `igc_np/kernels/*.cu` must match something)."""
    missing = []
    for path in PAGES:
        text = path.read_text()
        for name in ([] if path.name in RECIPES else PATH_RE.findall(text)):
            name = name.rstrip(".")
            if not list(ROOT.glob(name)) and not (ROOT / name).exists():
                missing.append(f"{path.relative_to(ROOT)}: `{name}`")
        for link in LINK_RE.findall(text):
            if not (path.parent / link).exists():
                missing.append(f"{path.relative_to(ROOT)}: link {link}")
    assert not missing, "\n".join(missing)


def test_the_options_page_is_the_option_table():
    """docs/options.md ends with `python -m igc_np.app.options --markdown`, verbatim."""
    page = (ROOT / "docs" / "options.md").read_text()
    assert page.endswith(options.markdown()), \
        "docs/options.md is stale: python -m igc_np.app.options --markdown, and paste it at its end"


def test_no_page_waits_to_be_filled():
    """A `<!-- TO FILL ... -->` left in a page is a hole a reader falls into."""
    holes = [f"{p.relative_to(ROOT)}:{n}" for p in PAGES
             for n, text in enumerate(p.read_text().splitlines(), start=1) if "TO FILL" in text]
    assert not holes, f"pages with a TO FILL place: {holes}"


def test_reference_means_only_the_reference_tier():
    """The MXNet code of the paper's authors is "the authors' code", never "the reference code"."""
    word = re.compile(r"reference (code|protocol|implementation|trainer|MXNet|networks?)\b", re.I)
    found = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)}" for p in PAGES
             for n, text in enumerate(p.read_text().splitlines(), start=1) for m in word.finditer(text)]
    assert not found, "\n".join(found)


# the PyTorch habits the README's short table must name (issue 19), each as the table writes it
README_HABITS = ["print(model)", "padding='same'", "AdaptiveAvgPool2d", "Flatten", "clone()", "requires_grad_()",
                 "backward(gradient=", "print(t)", "param_groups[0][\"lr\"]", "Adam", "AdamW", "MultiStepLR",
                 "state_dict()", "clip_grad_norm_", "load_trained", "prefix=\"model/\"", "load_released",
                 "python -m igc_np"]


def test_the_readme_table_covers_the_pytorch_habits():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Coming from PyTorch"):]
    table = table[:table.index("\n## ")]
    missing = [h for h in README_HABITS if h not in table]
    assert not missing, f"README's 'Coming from PyTorch' table lacks {missing}"
    assert "docs/pytorch.md" in table
