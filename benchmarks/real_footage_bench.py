"""Real footage through the preprocessing pipeline: speed per stage and per outcome, and accuracy.

    python -m benchmarks.real_footage_bench [--baseline-ref REF] [--out DIR] [--write-docs]

1. ``mirage preprocess`` with the default config on the repository's real fixtures, clips made
   from a real photograph (a pan on a tripod: rotation only; a static shot something crosses), a
   long-lens tracking shot and four synthetic videos, on a local Ray of 2 CPUs: wall time,
   frames/s end to end against the machine's ceiling, stage seconds for accepted and rejected
   clips apart, the clips rejected before SfM and how long that took, and a per-input table.
   Then the same with the code and defaults of ``--baseline-ref`` (a git worktree), for the
   speed-up measured in the same run.
2. Ground truth the repository can reach (tests/data/real/README.md): shot boundaries on 10 s of
   *Tears of Steel* (hand-checked cuts), SfM repeatability on one of its shots, squeezed pixels,
   moving-object masks on a tracking shot with per-frame annotations, and depth on the Middlebury
   2014 "motorcycle" stereo pair (from the scikit-image wheel).

Writes ``real_footage.json`` under ``--out`` and, with ``--write-docs``, publishes the section
``real-footage`` (benchmarks/results/real-footage.json, then docs/benchmarks.md and README's figures).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks._measure import command_line, machine_line
from benchmarks.reference import Section, publish

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "data" / "real"
TOS_CUTS = (21, 65, 185)


def shots_part() -> tuple[list[str], dict]:
    from mirage_model.io.video import decode
    from pipeline.config import ShotConfig
    from pipeline.shots import detect_shots

    video = decode(REAL / "tears_of_steel_cuts.mp4")
    t0 = time.perf_counter()
    shots = detect_shots(video.frames, video.fps, ShotConfig())
    dt = time.perf_counter() - t0
    found = {s for s, _ in shots[1:]}
    hits = len(found & set(TOS_CUTS))
    return ([f"| Tears of Steel, 240 frames 320x180 @ 24 fps | cuts at {sorted(found)} | "
             f"{hits}/{len(TOS_CUTS)} true cuts found, {len(found) - hits} false | {1000 * dt / len(video):.1f} ms/frame |"],
            {"cuts_found": hits, "cuts_true": len(TOS_CUTS), "cuts_false": len(found) - hits})


def sfm_part(repeats: int = 3) -> tuple[list[str], dict]:
    """Repeatability of SfM on a real shot: the same frames several times (one attempt each), then
    with two attempts that must agree (``poses.attempts``, the pipeline default). The figure:
    ``sfm_distinct``, the number of distinct results of the single-attempt calls."""
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

    distinct = len({key(r) for r in runs})
    rows = [f"| {desc} | {repeats} calls, attempts=1 | {distinct} distinct result(s): "
            f"{what(runs[0])} | {np.mean(times):.0f} s |"]
    t0 = time.perf_counter()
    try:
        r = estimate_poses(frames, num_threads=2, attempts=2)
        outcome = f"seeds {r.attempts['agreed']} of {r.attempts['of']} agree ({r.attempts['note']}): {what(r)}"
    except PoseEstimationError as exc:
        outcome = f"rejected `{exc.reason or 'sfm_failed'}`: {exc}"
    rows.append(f"| {desc} | attempts=2 (default) | {outcome} | {time.perf_counter() - t0:.0f} s |")
    return rows, {"sfm_distinct": distinct}


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
    rows = []
    try:
        ref = estimate_poses(frames, num_threads=2, attempts=2)
    except PoseEstimationError as exc:
        return [f"| the original shot itself | rejected `{exc.reason or 'sfm_failed'}`: {str(exc).split(';')[0]} | |"]
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


def depth_part() -> tuple[list[str], dict]:
    """Plane-sweep depth on the Middlebury pair against its ground truth. The figures: AbsRel and
    coverage of the confident depth with the range from sparse points, AbsRel once completed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from real_data import motorcycle

    from mirage_model.perception.completion import complete_depth
    from mirage_model.perception.depth import StereoParams, plane_sweep_depth

    frames, K, c2w, gt, points = motorcycle()
    has_gt = gt > 0
    rows, figs = [], {}
    for label, kw in (("range from the baselines (before)", {}), ("range from sparse points", {"points": points})):
        t0 = time.perf_counter()
        res = plane_sweep_depth(frames, K, c2w, 0, neighbours=[1], params=StereoParams(num_depths=64, scale=0.5), **kw)
        t_sweep = time.perf_counter() - t0
        v = res.valid.numpy() & has_gt
        rel = np.abs(res.depth.numpy()[v] - gt[v]) / gt[v]
        near, far = res.depth_range
        rows.append(f"| {label}, confident | {near:.2f}-{far:.0f} m | {100 * v.sum() / has_gt.sum():.0f} % | "
                    f"{rel.mean():.3f} | {100 * (rel <= 0.1).mean():.0f} % | {t_sweep:.1f} s |")
        figs = {"depth_absrel": round(float(rel.mean()), 3), "depth_coverage": round(float(100 * v.sum() / has_gt.sum()))}
    t0 = time.perf_counter()
    dense, _ = complete_depth(res.depth, res.valid, frames[0])
    t_fill = time.perf_counter() - t0
    d = dense.numpy()
    c = (d > 0) & has_gt
    rel = np.abs(d[c] - gt[c]) / gt[c]
    rows.append(f"| range from sparse points, completed | | {100 * c.sum() / has_gt.sum():.0f} % | {rel.mean():.3f} | "
                f"{100 * (rel <= 0.1).mean():.0f} % | +{t_fill:.1f} s |")
    return rows, {**figs, "depth_absrel_completed": round(float(rel.mean()), 3)}


def _mean(stats: list[dict], key: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    vals = [s[key] for s in stats if isinstance(s.get(key), (int, float))]
    return fmt.format(scale * float(np.mean(vals))) if vals else "-"


BASELINE_REF = "84266c0"
"""The last commit before issue 29: its defaults (COLMAP's extractor, every frame mapped, no motion
check, no budget) are what the speed-up is measured against."""
CHEAP_REASONS = ("static", "no_parallax", "too_few_matches", "textureless")


def pipeline_sources(root: Path) -> Path:
    """The set the pipeline runs on: the repository's real fixtures, two clips made from a real
    photograph (a pan on a tripod; a static shot that something crosses), a tracking shot through
    a long lens that poses only at its own size, and four synthetic videos."""
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    from real_data import photo_pan

    from mirage_model.io.video import write_video
    from mirage_model.perception import synthetic_clip
    from pipeline.synth_data import make_synthetic_dataset

    src = root / "sources"
    src.mkdir(parents=True)
    for p in sorted(REAL.glob("*.mp4")):
        shutil.copyfile(p, src / p.name)
    write_video(src / "photo_pan.mp4", photo_pan(), 16)
    write_video(src / "photo_static_walker.mp4", photo_pan(static=True, walker=True), 16)
    follow = synthetic_clip(seed=2, n_frames=17, image_size=(360, 480), moving_object=True, motion="follow",
                            fov_x_deg=40.0)
    write_video(src / "long_lens_follow.mp4", follow.frames.numpy(), 16)
    for p in make_synthetic_dataset(root / "synthetic", 4, seed=1, frames=33, size=(240, 320), moving_fraction=0.5):
        shutil.copyfile(p, src / p.name)
    return src


def _read_run(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return {"summary": summary, "manifest": manifest}


def run_current(src: Path, out: Path) -> dict:
    """``mirage preprocess`` with this checkout's defaults, on a local Ray of 2 CPUs."""
    import ray

    from jobs.preprocess import run_preprocess
    from pipeline.config import PreprocessConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = PreprocessConfig.model_validate({"source": str(src), "output": str(out), "mlflow": {"enabled": False}})
        t0 = time.perf_counter()
        run_preprocess(cfg)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {**_read_run(out), "wall_s": wall}


def run_baseline(src: Path, out: Path, ref: str) -> dict:
    """The same, with the code and defaults of commit ``ref`` (a git worktree, its own process and Ray)."""
    import subprocess

    tree = Path(tempfile.mkdtemp(prefix="mirage-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True)
    # the same driver as run_current, with the old packages first on the path
    driver = (
        "import json, sys, time, ray\n"
        "from jobs.preprocess import run_preprocess\n"
        "from pipeline.config import PreprocessConfig\n"
        "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        "cfg = PreprocessConfig.model_validate(json.loads(sys.argv[1]))\n"
        "t0 = time.perf_counter(); run_preprocess(cfg); print(time.perf_counter() - t0)\n"
        "ray.shutdown()\n")
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        cfg = {"source": str(src), "output": str(out), "mlflow": {"enabled": False}}
        done = subprocess.run([sys.executable, "-c", driver, json.dumps(cfg)], cwd=tree, env=env, check=True,
                              capture_output=True, text=True)
        wall = float(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                       capture_output=True)
    return {**_read_run(out), "wall_s": wall}


def _busy(summary: dict) -> float:
    return sum(st["busy_s"] for st in summary["stages"].values())


def _rejections(manifest: list[dict]) -> Counter:
    return Counter(c["reason"] for r in manifest for c in r.get("clips") or [] if c["status"] != "ok")


def run_rows(name: str, run: dict, cores: int = 2) -> str:
    s = run["summary"]
    frames = s["frames"] or 0
    accepted = sum(c["status"] == "ok" for r in run["manifest"] for c in r.get("clips") or [])
    ceiling = frames / (_busy(s) / cores) if _busy(s) else float("nan")
    return (f"| {name} | {run['wall_s']:.0f} | {frames} | **{frames / run['wall_s']:.2f}** | {ceiling:.2f} | "
            f"{accepted} | {dict(_rejections(run['manifest']))} |")


def stage_rows(run: dict) -> list[str]:
    s = run["summary"]
    out = s["details"]["outcomes"]
    rows = []
    for stage, st in s["stages"].items():
        acc = out["accepted"]["stage_seconds"].get(stage, 0.0)
        rej = out["rejected"]["stage_seconds"].get(stage, 0.0)
        rows.append(f"| {stage} | {st['busy_s']:.1f} | {st['per_s'] or 0:.1f} | {acc:.1f} | {rej:.1f} |")
    return rows


def outcome_rows(run: dict) -> list[str]:
    rows = []
    for label, o in run["summary"]["details"]["outcomes"].items():
        total = sum(o["stage_seconds"].values())
        per_frame = total / o["frames"] if o["frames"] else float("nan")
        rows.append(f"| {label} | {o['clips']} | {o['frames']} | {o['seconds_per_clip'] or 0:.1f} | {per_frame:.3f} |")
    return rows


def input_rows(run: dict) -> list[str]:
    rows = []
    for rec in run["manifest"]:
        clips = rec.get("clips") or []
        ok = [c for c in clips if c["status"] == "ok"]
        bad = Counter(c["reason"] for c in clips if c["status"] != "ok")
        stats = list((rec.get("stats") or {}).values())
        mean = functools.partial(_mean, stats)
        poses = [c["seconds"].get("poses", 0.0) for c in clips if c.get("seconds", {}).get("poses")]
        shots = max((st.get("shots", 0) for st in stats), default="-")
        rows.append(f"| {Path(rec['uri']).name} | {rec['status']} {rec.get('reason') or ''} | {len(ok)} ok, "
                    f"{sum(bad.values())} rejected {dict(bad) if bad else ''} | {shots} | "
                    f"{np.mean(poses) if poses else 0:.1f} | {mean('sfm_max_side', 1, '{:.0f}')} | "
                    f"{mean('registered_fraction', 100, '{:.0f} %')} | {mean('focal_px', 1, '{:.0f}')} | "
                    f"{mean('depth_coverage_measured', 100, '{:.0f} %')} -> {mean('depth_coverage', 100, '{:.0f} %')} | "
                    f"{mean('sky_fraction', 100, '{:.0f} %')} | {mean('moving_fraction', 100, '{:.0f} %')} |")
    return rows


def cheap_rows(run: dict) -> list[str]:
    rows = []
    for rec in run["manifest"]:
        for c in rec.get("clips") or []:
            if c["status"] != "ok" and c["reason"] in CHEAP_REASONS:
                rows.append(f"| {Path(rec['uri']).name} clip {c['clip']} ({c['frames']} frames) | `{c['reason']}` | "
                            f"{c['seconds'].get('poses', 0.0):.2f} | {c['message'].split(':', 1)[-1].strip()[:140]} |")
    return rows


# ----------------------------------------------------------------------------------------------
# The report and the published section (benchmarks/results/real-footage.json)
# ----------------------------------------------------------------------------------------------
def report(inputs: int, current: dict, baseline: dict | None, baseline_ref: str, parts: dict[str, list[str]]) -> str:
    """The run's tables in Markdown (without the command and machine lines). ``parts``: the table
    rows of ``shots``, ``sfm``, ``squeeze``, ``follow`` and ``depth``."""
    runs = [run_rows("this checkout's defaults", current)]
    if baseline:
        runs.append(run_rows(f"the defaults of `{baseline_ref}` (before issue 29)", baseline))
    speedup = baseline["wall_s"] / current["wall_s"] if baseline else None
    cs = current["summary"]
    return "\n".join([
        f"`mirage preprocess` with the default config on {inputs} videos: the repository's real "
        "fixtures (a 10 s film excerpt with three cuts, a tracking shot), a real photograph panned on a tripod and "
        "the same photograph held still while something crosses it (both with lens distortion, noise and H.264), "
        "a long-lens tracking shot that poses only at its own size, and four synthetic videos. Both runs on a local "
        "Ray of 2 CPUs, one after the other; the ceiling is what the 2 cores give if they were never idle "
        "(frames / (stage seconds / 2)):", "",
        "| run | wall s | clip frames | frames/s end to end | ceiling frames/s | clips accepted | clips rejected |",
        "|---|---|---|---|---|---|---|", *runs, "",
        (f"Speed-up over the old defaults, same inputs, same machine, same hour: **{speedup:.1f}x**." if speedup
         else ""), "",
        "Where the time goes now (seconds summed over workers; frames/s per busy second of the stage):", "",
        "| stage | busy s | frames/s | of which accepted clips s | rejected clips s |", "|---|---|---|---|---|",
        *stage_rows(current), "",
        "| outcome | clips | frames | stage seconds per clip | per frame |", "|---|---|---|---|---|",
        *outcome_rows(current), "",
        "Clips rejected before SfM by the camera-motion check (pose-stage seconds, decoding excluded):", "",
        "| clip | reason | pose s | why |", "|---|---|---|---|", *cheap_rows(current), "",
        f"Per input ({cs['frames']} clip frames in {current['wall_s']:.0f} s):", "",
        "| input | status | clips | shots | pose s per clip | SfM side | registered | focal (px) | "
        "depth coverage measured -> completed | sky | moving |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *input_rows(current), "",
        "Shot boundaries (hand-checked cuts):", "",
        "| input | shots | vs ground truth | time |", "|---|---|---|---|", *parts["shots"], "",
        "SfM repeatability on a real shot (matching and mapping on one thread with fixed seeds; features on any "
        "number of threads):", "",
        "| input | runs | result | time per call |", "|---|---|---|---|", *parts["sfm"], "",
        "Squeezed pixels on the same real shot (squeezed to 3/4 of its width; fx/fy should be 1 once decoded):", "",
        "| squeezed shot | SfM (attempts=2) | time |", "|---|---|---|", *parts["squeeze"], "",
        "Moving-object masks on real footage with per-frame annotations (the pipeline's path; targets: recall "
        ">= 0.8, IoU >= 0.6):", "",
        "| input | cameras | masks vs annotations | time |", "|---|---|---|---|", *parts["follow"], "",
        "Depth on a real stereo pair with ground truth (Middlebury 2014 motorcycle, 741x500, stereo at half size):", "",
        "| depth | sweep range | coverage of GT pixels | AbsRel | within 10 % | time |", "|---|---|---|---|---|---|",
        *parts["depth"],
    ])


TITLE = "Real footage end to end: speed, shots, SfM, depth"
HEADLINE = [
    {"figure": "preprocessing real footage end to end (9 videos, local Ray on 2 CPUs)",
     "measured": "{fps} frames/s ({speedup}x the defaults before issue 29); {accepted_s} s per accepted clip",
     "target": "-"},
    {"figure": "shot cuts on real film (10 s of *Tears of Steel*, hand-checked)",
     "measured": "{cuts_found} / {cuts_true} found, {cuts_false} false", "target": "-"},
    {"figure": "depth on a real stereo pair (Middlebury motorcycle): confident / completed",
     "measured": "AbsRel {depth_absrel} on {depth_coverage} % / {depth_absrel_completed} on 100 % of the pixels",
     "target": "<= 0.05 / >= 80 % at <= 0.10"},
    {"figure": "SfM on a real shot, 3 identical calls", "measured": "{sfm_distinct} distinct result",
     "target": "the same cameras"}]
READING = ("Cheap checks reject static and rotation-only clips in about 1.4 s before SfM, SfM maps keyframes "
           "and registers the other frames, and a per-clip budget ends a clip that would take too long as "
           "`timeout`, so the pipeline moves {frames} clip frames in {wall_s} s ({fps} frames/s against a "
           "ceiling of {ceiling_fps} for two cores never idle), {speedup}x the defaults before issue 29 on the "
           "same inputs. Real film stays hard for weight-free SfM: the *Tears of Steel* tracking shot times out "
           "and its cut clips are rejected as `unstable_poses` or `sfm_failed`, repeatably (one distinct "
           "result in three calls).")


def figures(current: dict, baseline: dict, part_figures: dict) -> dict:
    """Speed of both runs, stage seconds per accepted / rejected clip, and the parts' accuracy figures."""
    s = current["summary"]
    frames = s["frames"] or 0
    outcomes = s["details"]["outcomes"]
    return {"fps": round(frames / current["wall_s"], 2),
            "ceiling_fps": round(frames / (_busy(s) / 2), 2) if _busy(s) else float("nan"),
            "base_fps": round((baseline["summary"]["frames"] or 0) / baseline["wall_s"], 2),
            "speedup": round(baseline["wall_s"] / current["wall_s"], 1),
            "frames": frames, "wall_s": round(current["wall_s"]),
            "accepted_s": round(outcomes["accepted"]["seconds_per_clip"] or 0.0, 1),
            "rejected_s": round(outcomes["rejected"]["seconds_per_clip"] or 0.0, 1),
            **part_figures}


def build_section(command: str, machine: str, body: str, current: dict, baseline: dict,
                  part_figures: dict) -> Section:
    return Section(key="real-footage", title=TITLE, order=21, command=command, machine=machine,
                   figures=figures(current, baseline, part_figures), headline=[dict(h) for h in HEADLINE],
                   reading=READING).markdown(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_footage_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", default=BASELINE_REF,
                   help="git commit whose defaults the speed-up is measured against ('' skips that run)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "real_footage",
                   help="directory for the runs' outputs and real_footage.json")
    p.add_argument("--write-docs", action="store_true",
                   help="publish benchmarks/results/real-footage.json (docs/benchmarks.md, README's figures)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.write_docs and not args.baseline_ref:
        p.error("--write-docs publishes the speed-up over the baseline: give --baseline-ref")
    logging.basicConfig(level=logging.WARNING)

    parts, part_figures = {}, {}
    for name, fn in (("shots", shots_part), ("sfm", sfm_part), ("squeeze", squeeze_part), ("follow", follow_part),
                     ("depth", depth_part)):
        out = fn()
        if isinstance(out, tuple):
            out, figs = out
            part_figures.update(figs)
        parts[name] = out
    work = Path(tempfile.mkdtemp(prefix="mirage-real-bench-"))
    src = pipeline_sources(work)
    current = run_current(src, work / "current")
    baseline = run_baseline(src, work / "baseline", args.baseline_ref) if args.baseline_ref else None
    speedup = baseline["wall_s"] / current["wall_s"] if baseline else None

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_footage.json").write_text(json.dumps(
        {"current": current, "baseline": baseline, "baseline_ref": args.baseline_ref, "speedup": speedup,
         "inputs": sorted(p.name for p in src.iterdir())}, indent=1, default=str))
    body = report(len(list(src.iterdir())), current, baseline, args.baseline_ref, parts)
    command = command_line("real_footage_bench", argv, write_docs=args.write_docs)
    machine = machine_line(__import__("torch").device("cpu"))
    print(f"Command: `{command}`  \nMachine: {machine}.\n\n{body}")
    if args.write_docs:
        print(f"\nrecorded in {publish(build_section(command, machine, body, current, baseline, part_figures))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
