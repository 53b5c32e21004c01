"""The training benchmark's branch-overhead part stays runnable (its timings are not asserted: noisy)."""

import re

import pytest


@pytest.mark.slow
def test_train_bench_overhead_runs(capsys):
    from benchmarks.train_bench import main

    assert main(["--device", "cpu", "--parts", "overhead", "--preset", "tiny", "--reps", "2",
                 "--overhead-warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "| lora stage, backbone alone |" in out and "| lora stage, backbone + branch |" in out
    ratio = re.search(r"backbone \+ branch / backbone alone\): \*\*([0-9.]+)x\*\*", out)
    assert ratio is not None and float(ratio.group(1)) > 0
