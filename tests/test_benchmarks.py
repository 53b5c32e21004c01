"""Benchmark scripts stay runnable (tiny settings; their figures are not asserted: timings are noisy)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_generate_bench_runs(capsys):
    from benchmarks.generate_bench import main

    assert main(["--preset", "tiny", "--chunks", "2", "--steps", "2", "--height", "64", "--width", "96"]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "latent / rgb" in out


def test_quick_memory_benchmark_runs_and_meets_its_structural_targets(tmp_path):
    """A short run of the README's main command: the targets that do not depend on timing noise."""
    from benchmarks.memory_bench import main

    assert main(["--mode", "quick", "--chunks", "2", "--rgb-chunks", "1",
                 "--growth-chunks", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    growth = result["growth"]
    assert growth["return_leg_growth_points"] == 0
    assert growth["mean_growth_mib_per_chunk"] <= 0.25
    assert [r["chunk"] for r in result["rows"]] == [1, 2]
    assert result["rows"][0]["rgb_read_s"] > 0 and result["rows"][1]["rgb_read_s"] is None
    assert result["summary"]["read_speedup_median"] > 1  # the RGB twin's render + encode is slower


def test_dedup_benchmark_measures_coverage_and_growth_of_every_rule():
    from benchmarks.dedup_bench import figures, measure

    rows = measure((128, 160), chunks=3, seed=0)
    assert len(rows) == 4 and "pan-and-return, 3 chunks" in rows
    for r in rows.values():
        assert r["view"]["return_points"] == r["views"]["return_points"] == 0 < r["none"]["return_points"]
        assert r["view"]["points"] <= r["views"]["points"] < r["none"]["points"]
        assert 0.5 < r["view"]["coverage"] <= r["views"]["coverage"] <= r["none"]["coverage"] + 1e-9 <= 1.0 + 1e-9
    f = figures(rows, 3)
    assert f["return_points"] == 0 and 0 < f["view_over_none"] <= f["views_over_none"] < 1
    assert f["growth_view"] <= f["growth_views"] < f["growth_none"]
