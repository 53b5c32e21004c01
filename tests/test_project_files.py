"""Files a user or a cluster reads: valid, consistent with what the code does."""

from pathlib import Path

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
