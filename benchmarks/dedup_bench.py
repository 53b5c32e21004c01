"""De-duplication and coverage on revisits: how many of a revisit's cells the latent memory covers,
and how fast it grows, de-duplicated (the default) and appending every cell.

Ground-truth depth and cameras on a static scene (no model: the memory needs only depth, cameras
and features). Each closed path writes one latent frame every 4 pixel frames, as generation does;
every pixel frame of the way back is then a revisit, read before the write of its latent. Two
memories run side by side on the same writes:

* ``none``: append every cell (the reference release);
* ``view``: the default ``MemoryConfig`` (a stored point of the same surface anywhere in the new
  cell makes it known; the first sample stays);
* ``views``: ``view`` with ``view_radius`` (a sample of the surface per writing camera farther than
  the radius from the cameras that wrote it; reads show the nearest camera's), the setting of the
  world (configs/train/world.yaml).

Paths: the memory ablation's three closed paths (65 frames) and the memory benchmark's
pan-and-return (120 degrees over 20 chunks of 33 frames; the growth figure).

    python -m benchmarks.dedup_bench                 # 704x1280, about 2 minutes on 2 cores
    python -m benchmarks.dedup_bench --write-docs    # ... and publish the section
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from benchmarks._measure import command_line, machine_line, mib
from mirage_model.evaluation.memory_ablation import ABLATION_PATHS, closed_path
from mirage_model.geometry.trajectory import pan_and_return
from mirage_model.memory import LatentMemory
from mirage_model.memory.base import MemoryConfig
from mirage_model.synthetic import default_scene, render

TITLE = "De-duplication and coverage on revisits"
VIEW_RADIUS = 0.2
"""The world's ``memory.view_radius`` (configs/train/world.yaml)."""
RULES = {"none": MemoryConfig(dedup="none"), "view": MemoryConfig(), "views": MemoryConfig(view_radius=VIEW_RADIUS)}
CHUNK = 33
READING = (
    "With one sample per surface (view), the memory covers up to {worst_view_hole_pct:.2f} % fewer of a "
    "revisit's cells than appending every cell (worst path), for {view_over_none:.3f}x its points: "
    "{growth_view:.3f} MiB per chunk on the {chunks}-chunk pan-and-return at 704x1280 against {growth_none:.2f} "
    "MiB. The missing cells are whole border columns: a surface first sampled nearer the centre of a view, "
    "where a cell spans a larger angle, is sampled too sparsely for a view that sees it near its edge, and the "
    "crack fill cannot reach a point beyond the grid. Keeping a sample of a surface per writing camera "
    "{view_radius} apart (views, `MemoryConfig.view_radius`) brings the worst path to {worst_views_hole_pct:.2f} % "
    "fewer cells than appending, for {growth_views:.3f} MiB per chunk ({views_over_none:.3f}x appending's points); "
    "the cells still missing are border columns of surfaces last written from a camera within the radius. A pure "
    "revisit adds {return_points} points with either rule.")


def paths(size: tuple[int, int], chunks: int) -> dict[str, tuple]:
    """name -> (trajectory, chunks it spans) for the ablation's closed paths and the long pan."""
    out = {name: (closed_path(name, 65, size), 2) for name in ABLATION_PATHS}
    frames = CHUNK + (CHUNK - 1) * (chunks - 1)
    out[f"pan-and-return, {chunks} chunks"] = (
        pan_and_return(frames, yaw_degrees=120.0, image_size=size, fov_x_deg=60.0), chunks)
    return out


def run_path(traj, size: tuple[int, int], seed: int) -> dict[str, dict]:
    """Write every 4th frame into one memory per rule; read every return frame before its write."""
    scene = default_scene(seed, moving_object=False, open_ceiling=True)
    n = len(traj)
    turn = (n - 1) // 2
    h, w = size[0] // 16, size[1] // 16
    mems = {k: LatentMemory(config=c) for k, c in RULES.items()}
    stats = {k: {"covered": 0, "cells": 0, "points_at_turn": None, "bytes_after_chunk_1": 0} for k in RULES}
    g = torch.Generator().manual_seed(seed)
    for f in range(0, n, 4):
        back = [x for x in range(max(f - 3, turn + 1), f + 1)]
        obs = render(scene, traj.K[f], traj.c2w[f], size, time=0.0)
        feats = torch.randn(48, h, w, generator=g)
        for k, mem in mems.items():
            if back:
                vis = mem.read(traj.K[back], traj.c2w[back], image_size=size).visibility
                stats[k]["covered"] += int(vis.sum())
                stats[k]["cells"] += vis.numel()
            if f > turn and stats[k]["points_at_turn"] is None:
                stats[k]["points_at_turn"] = len(mem)
            mem.insert(feats, obs.depth, traj.K[f], traj.c2w[f], size, obs.sky_mask, frame_index=f)
            if f == CHUNK - 1:
                stats[k]["bytes_after_chunk_1"] = mem.stats()["bytes"]
    for k, mem in mems.items():
        s = stats[k]
        s.update(coverage=s["covered"] / max(1, s["cells"]), points=len(mem), bytes=mem.stats()["bytes"],
                 return_points=len(mem) - s["points_at_turn"])
    return stats


def measure(size: tuple[int, int], chunks: int, seed: int) -> dict:
    rows = {}
    for name, (traj, n_chunks) in tqdm(paths(size, chunks).items(), desc="paths", unit="path"):
        stats = run_path(traj, size, seed)
        for s in stats.values():  # as the memory benchmark: growth after the first chunk's
            s["chunks"] = n_chunks
            s["mib_per_chunk"] = mib(s["bytes"] - s["bytes_after_chunk_1"]) / (n_chunks - 1)
        rows[name] = stats
    return rows


def figures(rows: dict, chunks: int) -> dict:
    long = rows[f"pan-and-return, {chunks} chunks"]
    return {
        "worst_view_hole_pct": round(100 * max(r["none"]["coverage"] - r["view"]["coverage"] for r in rows.values()), 2),
        "worst_views_hole_pct": round(100 * max(r["none"]["coverage"] - r["views"]["coverage"]
                                                for r in rows.values()), 2),
        "view_over_none": round(sum(r["view"]["points"] for r in rows.values())
                                / sum(r["none"]["points"] for r in rows.values()), 3),
        "views_over_none": round(sum(r["views"]["points"] for r in rows.values())
                                 / sum(r["none"]["points"] for r in rows.values()), 3),
        "growth_view": round(long["view"]["mib_per_chunk"], 4),
        "growth_views": round(long["views"]["mib_per_chunk"], 4),
        "growth_none": round(long["none"]["mib_per_chunk"], 3),
        "return_points": max(r[k]["return_points"] for r in rows.values() for k in ("view", "views")),
        "view_radius": VIEW_RADIUS,
        "chunks": chunks,
    }


def table(rows: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["path"] + [f"coverage {k}" for k in RULES] + [f"points {k}" for k in RULES] + \
        ["MiB/chunk view / views (long pan)", "points added on the way back (view / views)"]
    out = []
    for name, r in rows.items():
        out.append([name] + [f"{r[k]['coverage']:.4f}" for k in RULES] + [str(r[k]["points"]) for k in RULES]
                   + [f"{r['view']['mib_per_chunk']:.3f} / {r['views']['mib_per_chunk']:.3f}"
                      if r["view"]["chunks"] > 2 else "-",
                      f"{r['view']['return_points']} / {r['views']['return_points']}"])
    return cols, out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.dedup_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--chunks", type=int, default=20, help="chunks of the long pan-and-return (>= 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-docs", action="store_true", help="publish benchmarks/results/dedup.json")
    args = p.parse_args(argv)
    if args.chunks < 2:
        p.error("--chunks must be >= 2")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    size = (args.height, args.width)
    rows = measure(size, args.chunks, args.seed)
    figs = figures(rows, args.chunks)
    cols, body = table(rows)
    machine = machine_line(torch.device("cpu")) + f"; wall time {time.perf_counter() - t0:.0f} s"
    from benchmarks.reference import Section, report

    section = (Section(key="dedup", title=TITLE, order=12, command=command_line("dedup_bench", argv), machine=machine,
                       figures=figs, reading=READING, headline=[
                           {"figure": "revisit cells de-duplication leaves empty that appending covers (worst "
                                      "path; view / views)",
                            "measured": "{worst_view_hole_pct:.2f} % / {worst_views_hole_pct:.2f} %", "target": "0 %"},
                           {"figure": "growth per chunk at 704x1280, views (long pan)",
                            "measured": "{growth_views:.3f} MiB", "target": "<= 0.25 MiB"},
])
               .text(f"{size[0]}x{size[1]}, ground-truth depth, static scene; coverage = revisit cells a point "
                     "lands in (after the crack fill), over every pixel frame of the way back.")
               .table(cols, body))
    report(section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
