"""examples/igc_tutorial.ipynb: stored without outputs, and runs top to bottom (nbclient + ipykernel)."""
import json
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "igc_tutorial.ipynb"


def test_tutorial_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 6
    for c in code:
        assert c.get("outputs") == [] and c.get("execution_count") is None, \
            "clear the outputs before committing (jupyter nbconvert --clear-output --inplace)"
    text = "".join("".join(c["source"]) for c in nb["cells"])
    for topic in ("interleave_permutation", "four_branch_conv", "use_reference", "backward()",
                  "gradcheck", "load_dataset(\"digits\")", "plt.show()"):
        assert topic in text, topic


def test_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbclient)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[test]' (ipykernel)")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits it: no display needed
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "finite differences agree with backward()" in text
    assert "epoch 3:" in text
    # budget: under a minute on an idle laptop; generous here (shared CI cores)
    assert elapsed < 300, elapsed
