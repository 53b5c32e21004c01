"""Benchmark scripts stay runnable (tiny settings; their figures are not asserted: timings are noisy)."""

import pytest

pytestmark = pytest.mark.slow


def test_generate_bench_runs(capsys):
    from benchmarks.generate_bench import main

    assert main(["--preset", "tiny", "--chunks", "2", "--steps", "2", "--height", "64", "--width", "96"]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "latent / rgb" in out
