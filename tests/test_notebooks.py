"""The notebooks in notebooks/: stored clean, and each one runs top to bottom at tiny settings.

Each notebook's cell tagged ``parameters`` is replaced by the small settings below (papermill's convention)
and the notebook is executed with nbclient. The kernel is started from a kernelspec written into a temp
directory whose argv is this interpreter (``sys.executable -m ipykernel_launcher``): a ``python3`` spec
found on the Jupyter path may belong to another Python that does not have this checkout installed.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# the dev extra installs these; a missing one is an error, not a skip, so CI cannot pass without the notebooks
import ipykernel  # noqa: F401 - the kernel the spec below starts
import nbclient
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Seconds one cell may run: the slowest cell at the settings below takes a few seconds.
CELL_TIMEOUT_S = 120
KERNEL_NAME = "xaudit-test-python"

#: Tiny settings for every notebook; each must set every name its parameters cell sets.
SMALL: dict[str, str] = {
    "quickstart.ipynb": """
EPOCHS = 1
N_EXPLAIN = 2
METHODS = ["saliency", "integrated_gradients"]
QUALITY = "fast"
REPORT_DIR = "xaudit-report"
""",
    "sequences.ipynb": """
EPOCHS = 1
N_EXPLAIN = 2
METHODS = ["saliency", "integrated_gradients"]
""",
    "audit.ipynb": """
EPOCHS = 1
GRID = {"weight_decay": [0.0, 1e-3]}
REPEATS = 1
N_TRAIN = 200
N_TEST = 100
BACKEND = "sequential"
RUN_DIR = "sweep-run"
N_EXPLAIN = 2
METHODS = ["saliency"]
QUALITY = "fast"
JUNIT_PATH = "xaudit-audit.xml"
""",
}


def _stored() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _parameters_cell(nb: Any) -> Any:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one code cell tagged 'parameters'"
    return cells[0]


def _assigned(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_the_three_notebooks_are_there():
    assert [p.name for p in _stored()] == sorted(SMALL)


@pytest.mark.parametrize("path", _stored(), ids=lambda p: p.name)
def test_notebook_is_stored_clean_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has stored outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    params = _parameters_cell(nb)
    assert params.cell_type == "code"
    assert nb.cells.index(params) <= 2, "the parameters cell comes first (after at most the title and its note)"
    # the small settings must cover every parameter, or the CI run would silently use the full ones
    assert _assigned(params.source) == _assigned(SMALL[path.name])
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec that runs the kernel on this very interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    spec_dir = root / KERNEL_NAME
    spec_dir.mkdir()
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "xaudit tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


def _run(name: str, specs: KernelSpecManager, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # the kernel inherits the environment: one torch thread (as in conftest) and the private cache
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _parameters_cell(nb).source = SMALL[name].strip()
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    # what a reader would see in red: no warning may leak into a notebook (tqdm's "IProgress not found",
    # raised by captum's and shap's imports in a kernel without ipywidgets, was one)
    stderr = [out.get("text", "") for cell in nb.cells for out in cell.get("outputs", [])
              if out.get("name") == "stderr"]
    assert not any("Warning" in text for text in stderr), stderr
    return nb


def _html(nb: Any) -> list[str]:
    return [out["data"]["text/html"] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if "text/html" in out.get("data", {})]


def _text(nb: Any) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _has_card(html: list[str], method: str) -> bool:
    # an Explanation's card: scoped styles, the method's heading and an embedded gallery
    return any('class="xaudit-report"' in h and f"<h3>{method} " in h and 'src="data:image/png;base64,' in h
               for h in html)


def test_quickstart_runs(kernel_specs, tmp_path, monkeypatch):
    nb = _run("quickstart.ipynb", kernel_specs, tmp_path, monkeypatch)
    html = _html(nb)
    assert _has_card(html, "saliency") and _has_card(html, "integrated_gradients")
    assert any("Cost of each method" in h and "Explanation methods" in h for h in html), "no inline report"
    assert all("<html" not in h for h in html)
    assert (tmp_path / "xaudit-report" / "report.html").is_file()
    assert "wall_s_per_sample" in _text(nb)


def test_sequences_runs(kernel_specs, tmp_path, monkeypatch):
    nb = _run("sequences.ipynb", kernel_specs, tmp_path, monkeypatch)
    html = _html(nb)
    assert _has_card(html, "integrated_gradients") and _has_card(html, "saliency")
    text = _text(nb)
    assert "XauditError: deeplift does not support recurrent models" in text
    assert "analytic (rnn: LSTM)" in text, "the LSTM's FLOPs are not labelled analytic"
    # the refusal table lists the methods whose capability flag says so
    assert any("deeplift" in h and "guided_backprop" in h and "recurrent_reason" not in h for h in html)


def test_audit_runs(kernel_specs, tmp_path, monkeypatch):
    nb = _run("audit.ipynb", kernel_specs, tmp_path, monkeypatch)
    html = _html(nb)
    assert any("xaudit sweep: cnn on digits" in h and "Recommendation" in h for h in html), "no inline sweep"
    assert any("Overfitting diagnostics" in h and "reliability diagram" in h for h in html)
    assert (tmp_path / "xaudit-audit.xml").read_text().lstrip().startswith("<")
