"""Preprocessing throughput with 1 and with 2 CPU workers, side by side in one run.

    python -m benchmarks.pipeline_bench [--videos 4] [--frames 33] [--write-docs]

Renders a synthetic video set once, then runs ``mirage preprocess`` on it twice, on a fresh local
Ray with ``num_cpus=1`` and with ``num_cpus=2`` (fresh output each time; Ray start-up excluded).
Prints end-to-end frames/s, per-stage frames/s (frames / seconds spent in that stage, summed over
workers), the dominant stage and the 2-vs-1 scaling ratio (target >= 1.7).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._measure import machine_line, write_docs_section

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
STAGES = ("decode", "poses", "depth", "masks", "latents")


def run_once(videos: Path, out: Path, workers: int, frames: int) -> dict:
    import ray

    from jobs.preprocess import run_preprocess
    from pipeline.config import PreprocessConfig

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        config = PreprocessConfig.model_validate({
            "source": str(videos), "output": str(out), "clip": {"frames": frames, "max_clips": 1},
            "depth": {"num_depths": 32, "scale": 0.5, "every": 4}, "inputs_per_shard": 1})
        t0 = time.perf_counter()
        summary = run_preprocess(config)
        summary["wall_s"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=33, help="frames per clip (4n + 1)")
    parser.add_argument("--seed", type=int, default=1,
                        help="synthetic set (seed 0 draws one view where SfM fails, which unbalances the workers)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from pipeline.synth_data import make_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        videos = work / "videos"
        make_synthetic_dataset(videos, args.videos, seed=args.seed, frames=args.frames + 4, size=(240, 320))
        results = {n: run_once(videos, work / f"out{n}", n, args.frames) for n in (1, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [f"Command: `python -m benchmarks.pipeline_bench {' '.join(argv or sys.argv[1:])}`".rstrip() + "  ",
             f"Machine: {machine_line(__import__('torch').device('cpu'))}.  ",
             f"{args.videos} synthetic videos, 240x320, one {args.frames}-frame clip each; SfM at max side 320, "
             "plane-sweep depth (32 planes, half resolution) and flow masks on every 4th frame.", "",
             "| workers | wall s | frames/s end to end | " + " | ".join(f"{s} frames/s" for s in STAGES[:4]) + " | ok |",
             "|---|---|---|" + "---|" * 5]
    for n, r in results.items():
        per_stage = [r["frames"] / r["stage_seconds"][s] if r["stage_seconds"].get(s) else float("nan")
                     for s in STAGES[:4]]
        lines.append(f"| {n} | {r['wall_s']:.1f} | {r['frames'] / r['wall_s']:.2f} | "
                     + " | ".join(f"{v:.1f}" for v in per_stage) + f" | {r['manifest']['status'].get('ok', 0)} |")
    stage_s = results[1]["stage_seconds"]
    dominant = max(stage_s, key=stage_s.get)
    scaling = (results[2]["frames"] / results[2]["wall_s"]) / (results[1]["frames"] / results[1]["wall_s"])
    lines += ["", f"Scaling 2 vs 1 workers: **{scaling:.2f}x** (target >= 1.7). Dominant stage: **{dominant}** "
              f"({100 * stage_s[dominant] / sum(stage_s.values()):.0f}% of stage time with 1 worker)."]
    report = "\n".join(lines)
    print(report)
    print(json.dumps({n: {k: v for k, v in r.items() if k != "manifest"} for n, r in results.items()}, indent=1))
    if args.write_docs:
        write_docs_section(DOCS, "pipeline_bench:cpu", "### Preprocessing pipeline (cpu)\n\n" + report)
        print(f"\nrecorded in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
