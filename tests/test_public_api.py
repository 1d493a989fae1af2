"""The public surface: each package exports exactly its curated names, they exist, and import is side-effect free."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

PACKAGES = ["xaudit.explain", "xaudit.models", "xaudit.reports"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_public(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, f"{name} exports nothing"
    assert len(set(exported)) == len(exported), "duplicate names in __all__"
    for attr in exported:
        assert not attr.startswith("_"), f"{name}.__all__ exports private {attr}"
        assert hasattr(module, attr), f"{name}.__all__ names {attr}, which does not exist"
    public = {a for a, v in vars(module).items()
              if not a.startswith("_") and not isinstance(v, type(sys)) and a != "annotations"}
    assert public == set(exported), f"{name}: public names not in __all__: {sorted(public - set(exported))}"


def test_import_has_no_side_effects() -> None:
    code = (
        "import sys, torch, numpy as np\n"
        "torch.manual_seed(123); np.random.seed(7)\n"
        "a = torch.rand(1).item(); b = np.random.rand()\n"
        "torch.manual_seed(123); np.random.seed(7)\n"
        "import xaudit.explain, xaudit.models, xaudit.reports\n"
        "assert torch.rand(1).item() == a and np.random.rand() == b, 'import touched the RNG'\n"
        # captum.attr imports pyplot itself; what must not happen is a backend being forced on the user
        "import matplotlib\n"
        "assert matplotlib.rcParams._get_backend_or_none() is None, 'import selected a matplotlib backend'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_no_plain_top_level_packages_installed() -> None:
    # `python -m pytest` puts the repository root on sys.path, so only site-packages is checked here;
    # .ci/run checks the built wheel itself in a clean virtualenv.
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    for plain in ("models", "reports", "explain"):
        spec = importlib.util.find_spec(plain)
        origin = str(spec.origin) if spec else ""
        assert not any(origin.startswith(d) for d in site_dirs), f"{plain!r} installed at {origin}"


def test_cli_and_packages_import_no_explanation_library() -> None:
    # `xaudit --help` and every spawned sweep worker (which re-imports the CLI's module) pay for what these
    # imports pull in: captum, shap, lime and their plotting stacks are imported when a method first runs
    code = (
        "import sys\n"
        "import xaudit.explain, xaudit.models, xaudit.reports, xaudit.reports._cli\n"
        "heavy = [m for m in ('captum', 'shap', 'lime', 'sklearn', 'matplotlib', 'seaborn', 'scipy') "
        "if m in sys.modules]\n"
        "assert not heavy, f'imported at startup: {heavy}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
