"""xaudit.models public surface: exactly the curated names, no import-time side effects, no upward imports."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import xaudit.models as models

PACKAGE = Path(models.__file__).parent


def test_all_is_exactly_the_public_names():
    public = {
        name
        for name, value in vars(models).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(models.__all__) == public
    assert len(models.__all__) == len(set(models.__all__))
    assert all(hasattr(models, name) for name in models.__all__)


def test_no_imports_from_explain_or_reports():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        # the one exception: a result's _repr_html_ imports the notebook renderer when a notebook asks for it
        display = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "_repr_html_"
                   for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and n.module == "xaudit.reports._notebook"}
        for node in ast.walk(tree):
            if id(node) in display:
                continue
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any("explain" in n or "reports" in n for n in names), f"{path.name} imports {names}"


def test_import_is_light_and_side_effect_free():
    code = (
        "import sys, xaudit.models; "
        "heavy = [m for m in ('matplotlib', 'mnist1d', 'sklearn', 'captum', 'shap') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""
