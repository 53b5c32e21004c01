"""Real footage through the preprocessing pipeline: a per-input table.

    python -m benchmarks.real_footage_bench [--source DIR] [--clip-frames 33] [--write-docs]

Two parts, side by side in one run:

1. Ground truth the repository can reach (tests/data/real/README.md): shot boundaries on 10 s of
   *Tears of Steel* (hand-checked cuts), SfM repeatability on one of its shots (the same frames
   several times, then two attempts that must agree), moving-object masks on another (the camera
   follows a walking man; per-frame annotations), and depth on the Middlebury 2014 "motorcycle" stereo pair
   (from the scikit-image wheel): plane-sweep depth with its range from sparse points, then
   completed -- coverage and AbsRel of each.
2. ``mirage preprocess`` on ``--source`` (default: the repository's real fixtures) on a local Ray:
   per input its status and reason, clips kept / rejected (with reasons), shots, registered
   frames, estimated focal length, depth coverage measured and after completion, sky and moving
   fractions, and seconds per frame per stage.

Writes the tables to docs/benchmarks.md (``--write-docs``) with the command that produced them.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks._measure import write_docs_section

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
REAL = ROOT / "tests" / "data" / "real"
TOS_CUTS = (21, 65, 185)
STAGES = ("decode", "poses", "depth", "masks")


def shots_part() -> list[str]:
    from mirage_model.io.video import decode
    from pipeline.config import ShotConfig
    from pipeline.shots import detect_shots

    video = decode(REAL / "tears_of_steel_cuts.mp4")
    t0 = time.perf_counter()
    shots = detect_shots(video.frames, video.fps, ShotConfig())
    dt = time.perf_counter() - t0
    found = {s for s, _ in shots[1:]}
    hits = len(found & set(TOS_CUTS))
    return [f"| Tears of Steel, 240 frames 320x180 @ 24 fps | cuts at {sorted(found)} | "
            f"{hits}/{len(TOS_CUTS)} true cuts found, {len(found) - hits} false | {1000 * dt / len(video):.1f} ms/frame |"]


def sfm_part(repeats: int = 3) -> list[str]:
    """Repeatability of SfM on a real shot: the same frames several times (one attempt each), then
    with two attempts that must agree (``poses.attempts``, the pipeline default)."""
    import torch

    from mirage_model.io.video import decode
    from mirage_model.perception import PoseEstimationError, estimate_poses

    frames = decode(REAL / "tears_of_steel_cuts.mp4").frames[65:185:4]  # one shot, 30 frames
    desc = f"Tears of Steel shot 3 (frames 65-184, every 4th: {len(frames)} frames, 320x180)"
    runs, times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            runs.append(estimate_poses(frames, num_threads=2))
        except PoseEstimationError as exc:
            runs.append(str(exc).split(";")[0])
        times.append(time.perf_counter() - t0)

    def key(r):
        return r if isinstance(r, str) else (r.K[0, 0, 0].item(), torch.nan_to_num(r.c2w).sum().item())

    def what(r):
        return f"failed: {r}" if isinstance(r, str) else \
            f"{int(r.registered.sum())}/{len(r)} registered, focal {r.K[0, 0, 0].item():.0f} px"

    rows = [f"| {desc} | {repeats} calls, attempts=1 | {len({key(r) for r in runs})} distinct result(s): "
            f"{what(runs[0])} | {np.mean(times):.0f} s |"]
    t0 = time.perf_counter()
    try:
        r = estimate_poses(frames, num_threads=2, attempts=2)
        outcome = f"seeds {r.attempts['agreed']} of {r.attempts['of']} agree ({r.attempts['note']}): {what(r)}"
    except PoseEstimationError as exc:
        outcome = f"rejected `{exc.reason or 'sfm_failed'}`: {exc}"
    rows.append(f"| {desc} | attempts=2 (default) | {outcome} | {time.perf_counter() - t0:.0f} s |")
    return rows


def squeeze_part() -> list[str]:
    """Anamorphic footage: the SfM shot squeezed to 3/4 of its width, stored with its sample aspect
    ratio (4:3, as DV/HDV cameras mark it) and decoded the pipeline's way (stretched back to square
    pixels), then SfM with unknown intrinsics; compared with SfM on the original frames. The same
    squeezed frames without the SAR mark are the failure case (two free focal lengths)."""
    import cv2

    from mirage_model.io.video import decode, write_video
    from mirage_model.perception import PoseEstimationError, estimate_poses
    from mirage_model.perception.poses import poses_agree

    frames = decode(REAL / "tears_of_steel_cuts.mp4").frames[65:185:4]
    n, h, w = frames.shape[:3]
    squeezed = np.stack([cv2.resize(f, (w * 3 // 4, h), interpolation=cv2.INTER_AREA) for f in frames])
    rows, ref = [], estimate_poses(frames, num_threads=2, attempts=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "squeezed.mp4", squeezed, 24, sample_aspect_ratio=4 / 3)
        decoded = decode(path)
    for label, clip, kw in ((f"stored {w * 3 // 4}x{h} with SAR 4:3, decoded to {decoded.frames.shape[2]}x{h}",
                             decoded.frames, {}),
                            (f"stored {w * 3 // 4}x{h}, no SAR mark, OPENCV camera (fx, fy free)", squeezed,
                             {"camera_model": "OPENCV"})):
        t0 = time.perf_counter()
        try:
            r = estimate_poses(clip, num_threads=2, attempts=2, **kw)
            agree, why = poses_agree(r, ref, max_focal_change=10.0)  # focal compared below, per axis
            fx, fy = float(r.K[0, 0, 0]), float(r.K[0, 1, 1])
            outcome = (f"{int(r.registered.sum())}/{n} registered, fx/fy {fx / fy:.2f}; vs the original: "
                       f"{'agree' if agree else 'disagree'} ({why.split(', focal')[0]})")
        except PoseEstimationError as exc:
            outcome = f"rejected `{exc.reason or 'sfm_failed'}`: {str(exc).split(';')[0]}"
        rows.append(f"| {label} | {outcome} | {time.perf_counter() - t0:.0f} s |")
    return rows


def follow_part() -> list[str]:
    """Moving-object masks on real footage with per-frame annotations: the camera follows a
    walking man (tests/data/real/tears_of_steel_follow.mp4). The clip goes through the pipeline's
    own stages (16 fps; EstimatePoses with its gates and native-size retry, EstimateDepth with
    completion); the moving mask is then made on every depth frame as EstimateMasks makes it. Where
    a stage rejects the clip, that is the row."""
    import torch

    from mirage_model.io.video import decode
    from mirage_model.perception.masks import clip_masks
    from pipeline.config import PreprocessConfig
    from pipeline.stages import EstimateDepth, EstimatePoses, reason_code

    sys.path.insert(0, str(ROOT / "tests"))
    from real_data import TOS_FOLLOW, follow_masks

    video = decode(TOS_FOLLOW, fps=16, upsample=False)
    frames, truth = video.frames, follow_masks()[video.source_indices]
    desc = f"Tears of Steel, camera follows a walking man ({len(frames)} frames at 16 fps, 640x360)"
    cfg = PreprocessConfig.model_validate({"source": str(TOS_FOLLOW), "output": "unused",
                                           "resources": {"num_cpus": 2}})
    data, row = {"frames": frames, "stats": {}}, {"uri": str(TOS_FOLLOW), "clip_index": 0}
    t0 = time.perf_counter()
    for stage in (EstimatePoses(cfg), EstimateDepth(cfg)):
        try:
            stage.process(data, row)
        except Exception as exc:  # noqa: BLE001 - a rejection is the result
            return [f"| {desc} | rejected at {stage.name}: `{reason_code(exc, stage.reason)}`: {exc} | not reached | "
                    f"{time.perf_counter() - t0:.0f} s |"]
    _, moving = clip_masks(data["frames"], data["depth_frames"], data["depth"], data["depth_valid"],
                           torch.as_tensor(data["K"]), torch.as_tensor(data["c2w"]))
    inter = union = total = 0
    for i, m in zip(data["depth_frames"], moving.numpy()):
        g = truth[int(i)]
        inter, union, total = inter + (m & g).sum(), union + (m | g).sum(), total + g.sum()
    q = data["stats"]["pose_quality"]
    return [f"| {desc} | {q['registered_fraction']:.0%} registered, focal {data['stats']['focal_px']:.0f} px | "
            f"recall {inter / total:.2f}, IoU {inter / union:.2f} ({len(data['depth_frames'])} frames) | "
            f"{time.perf_counter() - t0:.0f} s |"]


def depth_part() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from real_data import motorcycle

    from mirage_model.perception.completion import complete_depth
    from mirage_model.perception.depth import plane_sweep_depth

    frames, K, c2w, gt, points = motorcycle()
    has_gt = gt > 0
    rows = []
    for label, kw in (("range from the baselines (before)", {}), ("range from sparse points", {"points": points})):
        t0 = time.perf_counter()
        res = plane_sweep_depth(frames, K, c2w, 0, neighbours=[1], num_depths=64, scale=0.5, **kw)
        t_sweep = time.perf_counter() - t0
        v = res.valid.numpy() & has_gt
        rel = np.abs(res.depth.numpy()[v] - gt[v]) / gt[v]
        near, far = res.depth_range
        rows.append(f"| {label}, confident | {near:.2f}-{far:.0f} m | {100 * v.sum() / has_gt.sum():.0f} % | "
                    f"{rel.mean():.3f} | {100 * (rel <= 0.1).mean():.0f} % | {t_sweep:.1f} s |")
    t0 = time.perf_counter()
    dense, _ = complete_depth(res.depth, res.valid, frames[0])
    t_fill = time.perf_counter() - t0
    d = dense.numpy()
    c = (d > 0) & has_gt
    rel = np.abs(d[c] - gt[c]) / gt[c]
    rows.append(f"| range from sparse points, completed | | {100 * c.sum() / has_gt.sum():.0f} % | {rel.mean():.3f} | "
                f"{100 * (rel <= 0.1).mean():.0f} % | +{t_fill:.1f} s |")
    return rows


def _mean(stats: list[dict], key: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    vals = [s[key] for s in stats if isinstance(s.get(key), (int, float))]
    return fmt.format(scale * float(np.mean(vals))) if vals else "-"


def pipeline_part(source: Path, clip_frames: int) -> tuple[list[str], dict]:
    import ray

    from jobs.preprocess import run_preprocess
    from pipeline.config import PreprocessConfig

    out = Path(tempfile.mkdtemp(prefix="mirage-real-bench-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = PreprocessConfig.model_validate({
            "source": str(source), "output": str(out / "shards"), "mlflow": {"enabled": False},
            "clip": {"frames": clip_frames, "min_frames": min(17, clip_frames), "min_side": 96},
            "depth": {"num_depths": 32, "scale": 0.5, "every": 4}, "inputs_per_shard": 1})
        summary = run_preprocess(cfg)
    finally:
        ray.shutdown()
    rows = []
    for line in Path(summary["manifest"]["manifest"]).read_text().splitlines():
        rec = json.loads(line)
        clips = rec.get("clips") or []
        ok = [c for c in clips if c["status"] == "ok"]
        bad = Counter(c["reason"] for c in clips if c["status"] != "ok")
        stats = list((rec.get("stats") or {}).values())

        mean = functools.partial(_mean, stats)

        shots = max((s.get("shots", 0) for s in stats), default="-")
        rows.append(f"| {Path(rec['uri']).name} | {rec['status']} {rec.get('reason') or ''} | {len(ok)} ok, "
                    f"{sum(bad.values())} rejected {dict(bad) if bad else ''} | {shots} | "
                    f"{mean('registered_fraction', 100, '{:.0f} %')} | {mean('focal_px', 1, '{:.0f}')} | "
                    f"{mean('depth_coverage_measured', 100, '{:.0f} %')} -> {mean('depth_coverage', 100, '{:.0f} %')} | "
                    f"{mean('sky_fraction', 100, '{:.0f} %')} | {mean('moving_fraction', 100, '{:.0f} %')} |")
    frames = max(1, summary["frames"])
    per_stage = ", ".join(f"{k} {summary['stage_seconds'].get(k, 0.0) / frames:.3f}" for k in STAGES)
    return rows, {"frames": summary["frames"], "wall_s": summary["wall_s"], "per_stage": per_stage}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_footage_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=REAL, help="videos to preprocess (default: tests/data/real)")
    p.add_argument("--clip-frames", type=int, default=33, help="clip.frames (4n + 1)")
    p.add_argument("--write-docs", action="store_true", help="write the tables to docs/benchmarks.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    shots = shots_part()
    sfm = sfm_part()
    squeeze = squeeze_part()
    follow = follow_part()
    depth = depth_part()
    rows, info = pipeline_part(args.source, args.clip_frames)
    cmd = "python -m benchmarks.real_footage_bench" + ("" if args.source == REAL else f" --source {args.source}") \
        + (f" --clip-frames {args.clip_frames}" if args.clip_frames != 33 else "")
    body = "\n".join([
        "## Real footage (issue 11)", "", f"Command: `{cmd}` (2-core CPU machine).", "",
        "Shot boundaries (hand-checked cuts):", "",
        "| input | shots | vs ground truth | time |", "|---|---|---|---|", *shots, "",
        "SfM repeatability on a real shot (every COLMAP step single-threaded; threads run attempts side by side). "
        "Before, with extraction and matching on 2 threads, three identical calls on these frames gave focal "
        "777 px, 413 px and no model (30% registered):", "",
        "| input | runs | result | time per call |", "|---|---|---|---|", *sfm, "",
        "Squeezed pixels on the same real shot (squeezed to 3/4 of its width; fx/fy should be 1 once decoded):", "",
        "| squeezed shot | SfM (attempts=2) | time |", "|---|---|---|", *squeeze, "",
        "Moving-object masks on real footage with per-frame annotations (the pipeline's path; targets: recall "
        ">= 0.8, IoU >= 0.6):", "",
        "| input | cameras | masks vs annotations | time |", "|---|---|---|---|", *follow, "",
        "Depth on a real stereo pair with ground truth (Middlebury 2014 motorcycle, 741x500, stereo at half size):", "",
        "| depth | sweep range | coverage of GT pixels | AbsRel | within 10 % | time |", "|---|---|---|---|---|---|",
        *depth, "",
        f"`mirage preprocess` per input ({info['frames']} clip frames in {info['wall_s']:.0f} s; seconds per frame "
        f"per stage, summed over workers: {info['per_stage']}):", "",
        "| input | status | clips | shots | registered | focal (px) | depth coverage measured -> completed | sky | moving |",
        "|---|---|---|---|---|---|---|---|---|", *rows,
    ])
    print(body)
    if args.write_docs:
        write_docs_section(DOCS, "real-footage", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
