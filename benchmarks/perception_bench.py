"""Perception accuracy against synthetic ground truth: what ``mirage eval-perception`` measures, for
both camera motions side by side.

    python -m benchmarks.perception_bench [--write-docs]

Runs ``run_eval_perception`` (``mirage eval-perception``: SfM poses, plane-sweep depth at half
resolution at the estimated poses, moving-object masks made as the pipeline makes them, on the
completed depth) on two rendered clips of 21 frames at 240x320, seed 0: ``--motion arc_down`` (the
camera descends on an arc while a ball rolls along the epipolar lines) and ``--motion follow`` (the
camera dollies with the ball and pans to keep it centred). Prints one table of both, and with
``--write-docs`` publishes the section ``perception`` (benchmarks/results/perception.json, then
docs/benchmarks.md and README's figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from benchmarks._measure import command_line, machine_line
from benchmarks.reference import Section, publish

MOTIONS = ("arc_down", "follow")
SEED, FRAMES, SIZE = 0, 21, (240, 320)

TITLE = "Perception accuracy against synthetic ground truth"
HEADLINE = [
    {"figure": "SfM rotation error (mean) / ATE on the synthetic clips, arc / follow",
     "measured": "{rot_arc} / {rot_follow} deg, {ate_arc} / {ate_follow} % of the extent",
     "target": "<= 0.5 deg / <= 1 %"},
    {"figure": "plane-sweep depth AbsRel at the SfM scale (arc)", "measured": "{absrel_arc}", "target": "<= 0.10"},
    {"figure": "moving-object masks, ball rolling along the epipolar lines / camera following it",
     "measured": "recall {recall_arc} / {recall_follow}, IoU {iou_arc} / {iou_follow}",
     "target": ">= 0.8, >= 0.8 / >= 0.6"}]
READING = ("Both clips are 21 frames at 240x320 (seed 0) rendered with exact depth, cameras and masks: `arc` "
           "descends on an arc while a ball rolls along the epipolar lines, `follow` dollies with the ball and "
           "pans to keep it centred, so the ball hardly moves in the image while the room streams past. Masks "
           "are made as the pipeline makes them, on the completed depth: the ball has no confident stereo depth "
           "on `follow`, and completion gives it its surroundings' depth, which its own motion contradicts "
           "(IoU {iou_follow}).")

ROWS = (  # (figure, cell of one clip's metrics, target (arc_down / follow))
    ("registered frames", lambda m: f"{m['registered_fraction']:.2f}", "-"),
    ("rotation error, mean / max",
     lambda m: f"{m['rotation_error_deg_mean']:.3f} / {m['rotation_error_deg_max']:.3f} deg", "<= 0.5 deg"),
    ("ATE after Sim(3)",
     lambda m: f"{1000 * m['ate']:.1f} mm = {m['ate_percent']:.2f} % (extent {m['trajectory_extent']:.2f} m)",
     "<= 1 %"),
    ("focal length error", lambda m: f"{100 * m['focal_error_rel']:.3g} %", "-"),
    ("plane-sweep depth AbsRel at the SfM scale (valid pixels)", lambda m: f"{m['depth_abs_rel_pose_scale']:.3f}",
     "<= 0.10 / reported"),
    ("depth AbsRel after a median scale", lambda m: f"{m['depth_abs_rel_median']:.3f}", "-"),
    ("moving-object mask IoU (all frames pooled)", lambda m: f"{m['dynamic_iou']:.3f}", ">= 0.8 / >= 0.6"),
    ("moving-object mask recall", lambda m: f"{m['dynamic_recall']:.3f}", ">= 0.8"),
    ("time: SfM (single-threaded) / stereo (half res) / completion + masks",
     lambda m: f"{m['pose_seconds']:.1f} / {m['depth_seconds']:.1f} / {m['mask_seconds']:.1f} s", "-"),
)


def measure() -> dict[str, dict[str, Any]]:
    from mirage_model.perception.report import run_eval_perception

    return {motion: run_eval_perception(seed=SEED, n_frames=FRAMES, image_size=SIZE, motion=motion)
            for motion in MOTIONS}


def table(metrics: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | " + " | ".join(MOTIONS) + " | target (arc_down / follow) |", "|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(cell(metrics[m]) for m in MOTIONS) + f" | {target} |"
              for name, cell, target in ROWS]
    return "\n".join(lines)


def figures(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    arc, follow = metrics["arc_down"], metrics["follow"]
    return {"rot_arc": round(arc["rotation_error_deg_mean"], 3), "rot_follow": round(follow["rotation_error_deg_mean"], 3),
            "ate_arc": round(arc["ate_percent"], 2), "ate_follow": round(follow["ate_percent"], 2),
            "absrel_arc": round(arc["depth_abs_rel_pose_scale"], 3),
            "iou_arc": round(arc["dynamic_iou"], 3), "iou_follow": round(follow["dynamic_iou"], 3),
            "recall_arc": round(arc["dynamic_recall"], 3), "recall_follow": round(follow["dynamic_recall"], 3)}


def build_section(command: str, machine: str, metrics: dict[str, dict[str, Any]]) -> Section:
    return Section(key="perception", title=TITLE, order=22, command=command, machine=machine,
                   figures=figures(metrics), headline=[dict(h) for h in HEADLINE],
                   reading=READING).markdown(table(metrics))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perception_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="also print both clips' metrics as JSON")
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/perception.json (docs/benchmarks.md, README's figures)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    import torch

    metrics = measure()
    command = command_line("perception_bench", argv, write_docs=args.write_docs)
    machine = machine_line(torch.device("cpu"))
    print(f"Command: `{command}`  \nMachine: {machine}.\n\n{table(metrics)}")
    if args.json:
        print(json.dumps(metrics, indent=1, default=str))
    if args.write_docs:
        print(f"\nrecorded in {publish(build_section(command, machine, metrics))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
