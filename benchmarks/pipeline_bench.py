"""Preprocessing throughput with 1 and with 2 CPU workers, side by side in one run.

    python -m benchmarks.pipeline_bench [--videos 4] [--frames 33] [--write-docs]

Renders a synthetic video set once, then runs ``mirage preprocess`` on it twice, on a fresh local
Ray with ``num_cpus=1`` and with ``num_cpus=2`` (fresh output each time; Ray start-up excluded).
Prints end-to-end frames/s, per-stage frames/s (frames / seconds spent in that stage, summed over
workers), the dominant stage and the 2-vs-1 scaling ratio (target >= 1.7), and the machine's own
ceiling for it: the same clip's work in two plain processes at once against one alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._measure import command_line, machine_line
from benchmarks.reference import Section, publish

STAGES = ("decode", "poses", "depth", "masks", "latents")


def bench_config(videos: Path, out: Path, frames: int):
    from pipeline.config import PreprocessConfig

    return PreprocessConfig.model_validate({
        "source": str(videos), "output": str(out), "clip": {"frames": frames, "max_clips": 1},
        "depth": {"stereo": {"num_depths": 32}, "scale": 0.5, "every": 4}, "inputs_per_shard": 1})


def run_once(videos: Path, out: Path, workers: int, frames: int) -> dict:
    import ray

    from jobs.preprocess import run_preprocess

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        config = bench_config(videos, out, frames)
        t0 = time.perf_counter()
        summary = run_preprocess(config)
        summary["wall_s"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return summary


def _warm_up(_: int) -> None:
    import pipeline.stages  # noqa: F401 - imports are not the work being timed


def clip_seconds(video: Path, frames: int) -> float:
    """Wall seconds of one clip through every stage, in this process, without Ray."""
    from pipeline import stages

    config = bench_config(video.parent, video.parent / "unused", frames)
    t0 = time.perf_counter()
    rows = list(stages.DecodeClips(config)({"uri": str(video), "input_id": "x", "group_id": "g"}))
    for stage_cls in (stages.EstimatePoses, stages.EstimateDepth, stages.EstimateMasks, stages.EncodeSample):
        stage = stage_cls(config)
        rows = [stage(r) for r in rows]
    if any(r["status"] != "ok" for r in rows):
        raise RuntimeError(f"{video}: {[r['reason'] for r in rows]}")
    return time.perf_counter() - t0


def machine_ceiling(video: Path, frames: int) -> dict:
    """What two CPUs give on this machine with no framework at all: the same clip's work in two
    plain processes at once, against one alone. Stages run single-threaded (Ray reserves one CPU
    per task), so anything below 2x is the machine (shared caches, memory bandwidth, the other
    processes), not the pipeline."""
    pool = multiprocessing.get_context("spawn").Pool(2)
    try:
        pool.map(_warm_up, range(2), chunksize=1)
        alone = pool.map(functools.partial(clip_seconds, frames=frames), [video])[0]
        t0 = time.perf_counter()
        pair = pool.map(functools.partial(clip_seconds, frames=frames), [video, video], chunksize=1)
        wall = time.perf_counter() - t0
    finally:
        pool.close()  # not terminate(): COLMAP's signal handler would print a stack trace per process
        pool.join()
    return {"alone_s": alone, "pair_s": pair, "pair_wall_s": wall, "ceiling": 2 * alone / wall}


def fps(r: dict) -> float:
    return r["frames"] / r["wall_s"]


def report(videos: int, frames: int, results: dict[int, dict], ceiling: dict) -> str:
    """The run's tables and findings in Markdown (without the command and machine lines)."""
    lines = [f"{videos} synthetic videos, 240x320, one {frames}-frame clip each; SfM at max side 320, "
             "plane-sweep depth (32 planes, half resolution) and flow masks on every 4th frame.", "",
             "| workers | wall s | frames/s end to end | " + " | ".join(f"{s} frames/s" for s in STAGES[:4]) + " | ok |",
             "|---|---|---|" + "---|" * 5]
    for n, r in results.items():
        per_stage = [r["frames"] / r["stage_seconds"][s] if r["stage_seconds"].get(s) else float("nan")
                     for s in STAGES[:4]]
        lines.append(f"| {n} | {r['wall_s']:.1f} | {fps(r):.2f} | "
                     + " | ".join(f"{v:.1f}" for v in per_stage) + f" | {r['manifest']['status'].get('ok', 0)} |")
    stage_s = results[1]["stage_seconds"]
    dominant = max(stage_s, key=stage_s.get)
    scaling = fps(results[2]) / fps(results[1])
    lines += ["", f"Scaling 2 vs 1 workers: **{scaling:.2f}x** (target >= 1.7). Dominant stage: **{dominant}** "
              f"({100 * stage_s[dominant] / sum(stage_s.values()):.0f}% of stage time with 1 worker).", "",
              f"The machine's own ceiling, no Ray: one clip through every stage takes {ceiling['alone_s']:.1f} s alone "
              f"and {' / '.join(f'{t:.1f}' for t in ceiling['pair_s'])} s as two copies side by side in two "
              f"processes, **{ceiling['ceiling']:.2f}x** for two CPUs. The pipeline reaches "
              f"{100 * scaling / ceiling['ceiling']:.0f}% of it."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The published section (benchmarks/results/pipeline.json)
# ----------------------------------------------------------------------------------------------
TITLE = "Preprocessing throughput, 1 vs 2 Ray Data workers (synthetic videos)"
HEADLINE = [{"figure": "preprocessing scaling, 2 vs 1 CPU workers (8 synthetic videos)",
             "measured": "{scaling}x, {fps1:.2f} -> {fps2:.2f} frames/s (SfM {poses_share} % of the time); the "
                         "machine's own 2-CPU ceiling {ceiling}x",
             "target": ">= 1.7x (missed)"}]
READING = ("The 1.7x target is not met on this machine: {scaling}x, {of_ceiling} % of what two processes "
           "running one clip each reach without Ray ({ceiling}x, itself between 1.70x and 2.03x from run to "
           "run). SfM is single-threaded, yet each worker's SfM runs 15-25 % slower when both cores are busy, "
           "and with two workers the driver's executor loop, the publisher and Ray Data's internal actors "
           "(about 5 s of CPU per minute of wall time) take CPU from the workers. The real-footage section "
           "measures the same pipeline on real footage.")


def figures(results: dict[int, dict], ceiling: dict) -> dict:
    stage_s = results[1]["stage_seconds"]
    scaling = fps(results[2]) / fps(results[1])
    return {"scaling": round(scaling, 2), "fps1": round(fps(results[1]), 2), "fps2": round(fps(results[2]), 2),
            "poses_share": round(100 * stage_s.get("poses", 0.0) / sum(stage_s.values())),
            "ceiling": round(ceiling["ceiling"], 2), "of_ceiling": round(100 * scaling / ceiling["ceiling"])}


def build_section(command: str, machine: str, body: str, results: dict[int, dict], ceiling: dict) -> Section:
    return Section(key="pipeline", title=TITLE, order=20, command=command, machine=machine,
                   figures=figures(results, ceiling), headline=[dict(h) for h in HEADLINE],
                   reading=READING).markdown(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=33, help="frames per clip (4n + 1)")
    parser.add_argument("--seed", type=int, default=1,
                        help="synthetic set (seed 0 draws one view where SfM fails, which unbalances the workers)")
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/pipeline.json (docs/benchmarks.md, README's figures)")
    argv = list(sys.argv[1:] if argv is None else argv)
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
        ceiling = machine_ceiling(sorted(videos.glob("*.mp4"))[0], args.frames)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    body = report(args.videos, args.frames, results, ceiling)
    command = command_line("pipeline_bench", argv, write_docs=args.write_docs)
    machine = machine_line(__import__("torch").device("cpu"))
    print(f"Command: `{command}`  \nMachine: {machine}.\n\n{body}")
    print(json.dumps({**{n: {k: v for k, v in r.items() if k != "manifest"} for n, r in results.items()},
                      "ceiling": ceiling}, indent=1))
    if args.write_docs:
        print(f"\nrecorded in {publish(build_section(command, machine, body, results, ceiling))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
