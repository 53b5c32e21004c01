"""The ``mirage`` console script and the quick memory benchmark behind the README's main command."""

import json
import subprocess
import sys

import pytest

from mirage_model.cli import main
from mirage_model.geometry.formats import read_re10k


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "mirage_model.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for cmd in ("demo", "bench-memory", "trajectory"):
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


@pytest.mark.slow
def test_quick_memory_benchmark_runs_and_meets_its_structural_targets(tmp_path):
    """A short run of the README's main command: the targets that do not depend on timing noise."""
    assert main(["bench-memory", "--mode", "quick", "--chunks", "2", "--rgb-chunks", "1",
                 "--growth-chunks", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    growth = result["growth"]
    assert growth["return_leg_growth_points"] == 0
    assert growth["mean_growth_mib_per_chunk"] <= 0.25
    assert [r["chunk"] for r in result["rows"]] == [1, 2]
    assert result["rows"][0]["rgb_read_s"] > 0 and result["rows"][1]["rgb_read_s"] is None
    assert result["summary"]["read_speedup_median"] > 1  # the RGB twin's render + encode is slower
