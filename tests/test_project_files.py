"""Files a user or a cluster reads: valid, consistent with what the code does."""

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_ray_cluster_yaml_is_valid_yaml_with_a_cluster_name():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert cfg["cluster_name"] == "mirage" and "provider" in cfg


def test_readme_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    intro = text.split("```bash", 1)[0]  # the first screen says what the project is, then the commands
    assert all(word in intro for word in ("video", "camera", "memory", "Ray", "MLflow")), intro
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the README's test command


def test_no_torchvision_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert not [d for d in deps if "torchvision" in d]


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_wheel_ships_every_package_of_the_three_layers_and_the_resources():
    from setuptools import find_packages

    listed = _pyproject()["tool"]["setuptools"]["packages"]
    code = sorted(find_packages(str(ROOT), include=["mirage_model*", "pipeline*", "jobs*"]))
    assert sorted(p for p in listed if not p.startswith("mirage_resources")) == code
    mapped = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapped == {"mirage_resources.configs": "configs", "mirage_resources.assets": "assets"}
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for package, folder in mapped.items():  # every file of configs/ and assets/ matches a package-data glob
        files = [p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*") if p.is_file()]
        assert files and all(any(f.match(g.replace("**/", "")) for g in data[package]) for f in files), folder


def test_every_imported_package_is_declared():
    """Each third-party module the shipped code imports belongs to a declared dependency."""
    import ast
    import re
    import sys
    from importlib.metadata import packages_distributions

    imported = set()
    for layer in ("mirage_model", "pipeline", "jobs"):
        for path in (ROOT / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"mirage_model", "pipeline", "jobs"}
    declared = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in _pyproject()["project"]["dependencies"]}
    dists = packages_distributions()
    missing = {m: dists.get(m) for m in third_party
               if not {d.lower().replace("_", "-") for d in dists.get(m, [])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert all(re.search(r"[<>=]", d) for d in _pyproject()["project"]["dependencies"])  # every one bounded


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pip_install_dot_then_the_quick_demo_runs_from_another_directory(tmp_path):
    """`pip install .` (a wheel, not editable) into a fresh venv, then `mirage demo --quick` from a
    directory that is not the checkout: the configs and the world come with the package. The venv
    borrows this one's third-party packages through a path file (no download; this package's own
    editable hook is a .pth of this venv's site-packages, which a path entry does not run)."""
    import shutil
    import site
    import subprocess
    import sys
    import sysconfig

    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "mirage_model", "pipeline", "jobs", "configs", "assets"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # pip and setuptools:
    # this venv's, through the path file (the ones ensurepip bundles cannot build a wheel without `wheel`)
    fresh_site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print("
                                      "sysconfig.get_paths()['purelib'])"], check=True, capture_output=True,
                                     text=True).stdout.strip())
    (fresh_site / "_borrowed.pth").write_text("\n".join([sysconfig.get_paths()["purelib"], *site.getsitepackages()])
                                              + "\n")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "-q", str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (fresh_site / "mirage_resources" / "assets" / "world" / "world.json").is_file()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import jobs.resources as r; print(r.RESOURCE_ROOT)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where) == fresh_site / "mirage_resources"  # not the checkout
    demo = subprocess.run([str(venv / "bin" / "mirage"), "demo", "--quick", "--out", "demo"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=540)
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-4000:]
    assert (work / "demo" / "report.html").is_file()
