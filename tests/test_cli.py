"""The ``mirage`` console script: subcommands, one config loader for every job, errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main
from mirage_model.geometry.formats import read_re10k

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for cmd in ("demo", "preprocess", "train", "generate-batch", "generate", "trajectory", "submit"):
        assert cmd in out


def test_trajectory_command_writes_a_camera_file(tmp_path, capsys):
    out = tmp_path / "cams.txt"
    assert main(["trajectory", "pan-and-return", "--frames", "33", "--height", "176", "--width", "320",
                 "--out", str(out)]) == 0
    traj = read_re10k(out, (176, 320))
    assert len(traj) == 33


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["trajectory", "orbit", "--frames", "0", "--out", str(tmp_path / "x.txt")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("job,required", [
    ("preprocess", ["--source", "v", "--output", "o"]),
    ("train", ["--config", "configs/train/tiny.yaml"]),
    ("generate-batch", ["--config", "configs/generate_batch/default.yaml"]),
    ("eval-memory", ["--config", "configs/eval_memory/default.yaml", "--checkpoint", "ckpt"]),
    ("demo", ["--quick"]),
])
def test_every_job_prints_its_resolved_config_with_the_same_overrides(job, required, capsys, tmp_path, monkeypatch):
    """One loader: --config, shortcut flags and --set KEY=VALUE (YAML values) mean the same for every job;
    the printed YAML loads back into the same config."""
    import yaml

    from jobs.config import JOB_CONFIGS
    from mirage_model.config import load_config, to_yaml

    monkeypatch.chdir(ROOT)
    argv = [job, *required, "--print-config", "--set", "mlflow.experiment=x-exp", "--set", "mlflow.log_videos=3",
            "--address", "ray://head:10001"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert data["mlflow"]["experiment"] == "x-exp" and data["mlflow"]["log_videos"] == 3
    assert data["ray_address"] == "ray://head:10001"
    printed = tmp_path / "printed.yaml"
    printed.write_text(text)
    assert to_yaml(load_config(JOB_CONFIGS[job], printed)) == text  # a resolved config reloads unchanged


def test_job_config_errors_name_the_key(capsys):
    assert main(["train", "--config", "configs/train/tiny.yaml", "--set", "optim.batchsize=2", "--print-config"]) == 2
    assert "batchsize" in capsys.readouterr().err
    assert main(["train", "--config", "configs/train/tiny.yaml", "--set", "stages.7.lr=1", "--print-config"]) == 2
    assert "stages.7.lr" in capsys.readouterr().err
    assert main(["preprocess", "--source", "v", "--output", "o", "--set", "noequals", "--print-config"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_shortcut_flags_and_set_apply_in_order(capsys):
    assert main(["train", "--config", "configs/train/tiny.yaml", "--workers", "3", "--set", "scaling.num_workers=5",
                 "--set", "stages.1.lr=2e-4", "--shards", "s3://b/shards", "--print-config"]) == 0
    import yaml

    data = yaml.safe_load(capsys.readouterr().out)
    assert data["scaling"]["num_workers"] == 5 and data["stages"][1]["lr"] == 2e-4
    assert data["data"]["shards"] == "s3://b/shards" and data["mlflow"]["experiment"] == "mirage-train"


def test_every_argument_of_every_command_has_help():
    """``mirage <cmd> --help`` explains every flag and positional, subcommands of subcommands included."""
    import argparse

    from jobs.cli import build_parser

    def missing(parser, path):
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += missing(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return out

    parser = build_parser()
    assert missing(parser, "mirage") == []
    n_commands = len(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    assert n_commands >= 15  # the walk really went through the subcommands
