"""The import contracts (pyproject.toml ``[tool.importlinter]``): mirage_model <- pipeline <- jobs <- benchmarks,
and no cycles between sibling modules.

CI runs ``lint-imports`` on the tree (``make lint``); these tests show that the contract holds and
that it catches an upward import, including one hidden inside a function.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("mirage_model", "pipeline", "jobs", "benchmarks")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e .[dev])")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))  # the copy's packages win over the installed ones
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _copy_tree(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_its_layers():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("module,line", [
    ("mirage_model/vae.py", "\n\ndef _upward():\n    from pipeline import storage  # noqa\n"),
    ("pipeline/clips.py", "\nimport jobs.tracking  # noqa\n"),
])
def test_an_upward_import_breaks_the_layers(tmp_path, module, line):
    tree = _copy_tree(tmp_path)
    with open(tree / module, "a") as f:
        f.write(line)
    r = _lint(tree)
    assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout + r.stderr
    assert module.replace("/", ".").removesuffix(".py") in r.stdout


def test_a_cycle_between_sibling_packages_breaks_the_other_contract(tmp_path):
    """memory <- generation already; memory importing generation back (even lazily) is a cycle."""
    tree = _copy_tree(tmp_path)
    with open(tree / "mirage_model/memory/projection.py", "a") as f:
        f.write("\n\ndef _cycle():\n    from mirage_model.generation import generator  # noqa\n")
    r = _lint(tree)
    assert r.returncode != 0 and "no import cycles between sibling modules BROKEN" in r.stdout, r.stdout + r.stderr
