"""Latent memory vs its RGB twin on a synthetic pan-and-return trajectory, side by side.

For each chunk of 33 frames (32 new + 1 overlap) along the trajectory:
  read  = latent: z-buffer readout at the chunk's 9 latent-frame cameras;
          rgb:    z-buffer render of all 33 pixel frames + Wan2.2 VAE encode (the peers' path);
  write = back-project the chunk's 8 new latent frames (depth + moving-object/sky exclusion from the
          synthetic scene's ground truth) into each memory.
Then the cache growth at 704x1280 (no model involved: the memory only needs depth and cameras).
Latent feature values are random: memory cost does not depend on them. The latent reads of all
chunks are timed side by side at the end, each on a copy of the memory as it was at its chunk
(``_measure.interleaved``), so that their ratios do not carry the machine's drift over the run.

    python -m benchmarks.memory_bench --mode quick            # tiny VAE, < 1 minute (README demo)
    python -m benchmarks.memory_bench --mode full --write-docs # full-size Wan2.2 VAE architecture
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks._measure import (
    command_line,
    interleaved,
    machine_line,
    memcpy_seconds,
    mib,
    peak_memory,
    timed,
)
from benchmarks.reference import Section, publish
from mirage_model.geometry.trajectory import Trajectory, pan_and_return
from mirage_model.memory import LatentMemory, RGBPointCache, latent_frame_indices
from mirage_model.synthetic import default_scene, render
from mirage_model.vae import load_vae

log = logging.getLogger("memory_bench")
CHUNK = 33  # pixel frames per chunk; consecutive chunks share one frame
FPS = 16.0

MODES = {
    "quick": dict(height=176, width=320, chunks=20, rgb_chunks=4, vae="tiny", growth_chunks=10,
                  latent_depth_scale=4, rgb_depth_scale=4),
    "full": dict(height=176, width=320, chunks=20, rgb_chunks=2, vae="full", growth_chunks=20,
                 latent_depth_scale=1, rgb_depth_scale=2),
}


@dataclass
class ChunkRow:
    chunk: int
    latent_read_s: float
    latent_read_peak_mib: float
    latent_write_s: float
    latent_points: int
    latent_mib: float
    latent_hole_rate: float
    rgb_read_s: float | None = None
    rgb_read_peak_mib: float | None = None
    rgb_write_s: float | None = None
    rgb_points: int | None = None
    rgb_mib: float | None = None
    rgb_hole_rate: float | None = None


def chunk_frames(chunk: int) -> list[int]:
    """Pixel frame indices of chunk ``chunk`` (0-based): 33 frames, the first shared with the last chunk."""
    start = (CHUNK - 1) * chunk
    return list(range(start, start + CHUNK))


def trajectory(chunks: int, image_size: tuple[int, int], yaw: float) -> Trajectory:
    """Pan to ``yaw`` degrees and back over ``chunks`` chunks (33 + 32 (chunks - 1) frames)."""
    return pan_and_return(CHUNK + (CHUNK - 1) * (chunks - 1), yaw_degrees=yaw, image_size=image_size,
                          fov_x_deg=60.0)


def observe(scene, traj: Trajectory, frame: int, image_size: tuple[int, int]):
    """Ground-truth depth and exclusion mask (moving object | sky) for one frame."""
    out = render(scene, traj.K[frame], traj.c2w[frame], image_size, time=frame / FPS)
    return out, out.dynamic_mask | out.sky_mask


def run_chunks(cfg: dict, device: torch.device, seed: int, yaw: float) -> tuple[list[ChunkRow], dict]:
    size = (cfg["height"], cfg["width"])
    scene = default_scene(seed, moving_object=True, open_ceiling=True)
    traj = trajectory(cfg["chunks"], size, yaw)
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] // 16, size[1] // 16
    log.info("building the %s VAE", cfg["vae"])
    vae = load_vae(cfg["vae"], device=device)
    latent = LatentMemory(device=device)
    rgb = RGBPointCache(vae=vae, device=device)

    def write(frame: int, with_rgb: bool) -> tuple[float, float | None]:
        obs, exclude = observe(scene, traj, frame, size)
        feats = torch.randn(48, h, w, generator=g)
        args = (obs.depth, traj.K[frame], traj.c2w[frame], size, exclude)
        _, t_lat = timed(lambda: latent.insert(feats, *args, frame_index=frame), device)
        t_rgb = None
        if with_rgb:
            _, t_rgb = timed(lambda: rgb.insert(obs.rgb, *args, frame_index=frame), device)
        return t_lat, t_rgb

    write(0, True)
    rows: list[ChunkRow] = []
    reads = []  # the latent read of every chunk, on a copy of the memory as it was then
    for c in tqdm(range(cfg["chunks"]), desc="chunks", unit="chunk"):
        frames = chunk_frames(c)
        K, c2w = traj.K[frames], traj.c2w[frames]
        reads.append(functools.partial(copy.deepcopy(latent).read_chunk, K, c2w, size))
        out, peak = peak_memory(reads[-1], device)
        row = ChunkRow(c + 1, 0.0, mib(peak), 0.0, 0, 0.0, out.hole_rate)
        with_rgb = c < cfg["rgb_chunks"]
        if with_rgb:
            read_rgb = lambda: rgb.read(K, c2w, size)  # noqa: E731, B023 (used in this iteration)
            rout, row.rgb_read_s = timed(read_rgb, device)
            _, rpeak = peak_memory(read_rgb, device)
            row.rgb_read_peak_mib, row.rgb_hole_rate = mib(rpeak), rout.hole_rate
        writes = [write(frames[i], with_rgb) for i in latent_frame_indices(CHUNK)[1:]]
        row.latent_write_s = sum(t for t, _ in writes)
        s = latent.stats()
        row.latent_points, row.latent_mib = s["points"], mib(s["bytes"])
        if with_rgb:
            row.rgb_write_s = sum(t for _, t in writes)
            rs = rgb.stats()
            row.rgb_points, row.rgb_mib = rs["points"], mib(rs["bytes"])
        rows.append(row)
    extra = read_times(reads, rows, device)

    # Readout bandwidth against a plain copy of the bytes a read touches (memory in, readout out).
    frames = chunk_frames(cfg["chunks"] - 1)
    out = latent.read_chunk(traj.K[frames], traj.c2w[frames], size)
    touched = latent.stats()["bytes"] + out.features.nbytes + out.visibility.nbytes + out.depth.nbytes
    copy_s = memcpy_seconds(touched, device)
    extra.update({"read_bytes_touched": touched, "memcpy_s": copy_s,
                  "memcpy_fraction": copy_s / rows[-1].latent_read_s})
    return rows, extra


def read_times(reads: list, rows: list, device: torch.device) -> dict:
    """Time every chunk's read side by side (``_measure.interleaved``): ``row.latent_read_s`` is the
    median over rounds; the last-over-second-chunk ratio is the median of the per-round ratios."""
    times = interleaved(reads, device)
    for i, row in enumerate(rows):
        row.latent_read_s = statistics.median(t[i] for t in times)
    return {"read_last_over_2": statistics.median(t[-1] / t[1] for t in times)}


def growth_at_full_resolution(chunks: int, latent_scale: int, rgb_scale: int, seed: int, yaw: float,
                              device: torch.device) -> dict:
    """Points, bytes and latent read time per chunk at 704x1280, from depth and cameras alone.

    The scene is static here (open sky, no moving ball) so that the way back along the
    pan-and-return path is a pure revisit. Depth is rendered at 1/``latent_scale`` of 704x1280 for
    the latent memory (which resizes it bilinearly to its 44x80 grid either way; 1 = exact) and
    at 1/``rgb_scale`` for the RGB twin, whose pixel counts are then multiplied by rgb_scale**2.
    """
    size = (704, 1280)
    lsize = (704 // latent_scale, 1280 // latent_scale)
    rsize = (704 // rgb_scale, 1280 // rgb_scale)
    scene = default_scene(seed, moving_object=False, open_ceiling=True)
    traj = trajectory(chunks, size, yaw)
    ltraj, rtraj = traj.resized(lsize), traj.resized(rsize)
    turn = (len(traj) - 1) // 2  # frames after this one retrace the way out
    latent = LatentMemory(device=device)
    rgb = RGBPointCache()
    g = torch.Generator().manual_seed(seed)
    per_chunk: list[dict] = []
    points_at_turn = None

    def write(frame: int) -> None:
        obs = render(scene, ltraj.K[frame], ltraj.c2w[frame], lsize, time=frame / FPS)
        latent.insert(torch.randn(48, 44, 80, generator=g), obs.depth, traj.K[frame], traj.c2w[frame], size,
                      obs.sky_mask, frame_index=frame)
        if rsize != lsize:
            obs = render(scene, rtraj.K[frame], rtraj.c2w[frame], rsize, time=frame / FPS)
        rgb.insert(obs.rgb, obs.depth, rtraj.K[frame], rtraj.c2w[frame], rsize, obs.sky_mask, frame_index=frame)

    write(0)
    reads = []
    for c in tqdm(range(chunks), desc="growth @704x1280", unit="chunk"):
        frames = chunk_frames(c)
        reads.append(functools.partial(copy.deepcopy(latent).read_chunk, traj.K[frames], traj.c2w[frames], size))
        for i in latent_frame_indices(CHUNK)[1:]:
            if frames[i] > turn and points_at_turn is None:
                points_at_turn = len(latent)
            write(frames[i])
        per_chunk.append({"chunk": c + 1, "latent_read_s": 0.0, "latent_points": len(latent),
                          "latent_bytes": latent.stats()["bytes"], "rgb_points": len(rgb) * rgb_scale**2,
                          "rgb_bytes": rgb.stats()["bytes"] * rgb_scale**2})
    times = interleaved(reads, device)
    for i, row in enumerate(per_chunk):
        row["latent_read_s"] = statistics.median(t[i] for t in times)
    out = reads[-1]()
    touched = latent.stats()["bytes"] + out.features.nbytes + out.visibility.nbytes + out.depth.nbytes
    copy_s = memcpy_seconds(touched, device)
    return {
        "per_chunk": per_chunk,
        "latent_depth_resolution": list(lsize),
        "rgb_depth_resolution": list(rsize),
        "latent_bytes_per_point": latent.bytes_per_point(),
        "rgb_bytes_per_point": rgb.bytes_per_point(),
        "release_append_everything_bytes_per_chunk": 8 * 44 * 80 * (12 + 48 * 4),
        "mean_growth_mib_per_chunk": mib(per_chunk[-1]["latent_bytes"] - per_chunk[0]["latent_bytes"])
        / max(1, chunks - 1),
        "return_leg_growth_points": len(latent) - (points_at_turn if points_at_turn is not None else len(latent)),
        "read_704_s": per_chunk[-1]["latent_read_s"],
        "read_704_ratio_last_over_2": statistics.median(t[-1] / t[1] for t in times),
        "read_704_bytes_touched": touched,
        "read_704_memcpy_fraction": copy_s / per_chunk[-1]["latent_read_s"],
    }


def summarise(rows: list[ChunkRow], extra: dict, growth: dict, cfg: dict) -> dict:
    both = [r for r in rows if r.rgb_read_s is not None]
    speed = [r.rgb_read_s / r.latent_read_s for r in both]
    mem = [r.rgb_read_peak_mib / max(r.latent_read_peak_mib, 1e-3) for r in both]
    by_chunk = {r.chunk: r for r in rows}
    ratio = {}
    last = max(by_chunk)
    if last >= 2:
        ratio["latent"] = extra["read_last_over_2"]
        if by_chunk[last].rgb_read_s and by_chunk[2].rgb_read_s:
            ratio["rgb"] = by_chunk[last].rgb_read_s / by_chunk[2].rgb_read_s
    return {
        "read_speedup_median": statistics.median(speed) if speed else None,
        "read_peak_memory_ratio_median": statistics.median(mem) if mem else None,
        f"chunk{last}_over_chunk2": ratio,
        "memcpy_fraction": extra["memcpy_fraction"],
        "growth_mib_per_chunk_704x1280": growth["mean_growth_mib_per_chunk"],
        "latent_read_704_last_over_chunk2": growth["read_704_ratio_last_over_2"],
        "return_leg_growth_points_704x1280": growth["return_leg_growth_points"],
    }


def format_report(rows, extra, growth, summary, cfg) -> str:
    """The tables of a run, in Markdown (the section's blocks: its command and machine are fields)."""
    lines = [f"Read path at {cfg['height']}x{cfg['width']}, VAE `{cfg['vae']}`; "
             f"{cfg['chunks']} chunks of 33 frames along a pan-and-return trajectory "
             f"(RGB twin for the first {cfg['rgb_chunks']}).", "",
             "| chunk | latent read ms | latent peak MiB | rgb read s | rgb peak MiB | speed-up | "
             "latent pts | latent MiB | rgb pts | rgb MiB | holes latent / rgb |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rgb = r.rgb_read_s is not None
        lines.append(
            f"| {r.chunk} | {1e3 * r.latent_read_s:.2f} | {r.latent_read_peak_mib:.2f} | "
            + (f"{r.rgb_read_s:.2f} | {r.rgb_read_peak_mib:.0f} | {r.rgb_read_s / r.latent_read_s:.0f}x | "
               if rgb else "- | - | - | ")
            + f"{r.latent_points} | {r.latent_mib:.2f} | "
            + (f"{r.rgb_points} | {r.rgb_mib:.1f} | " if rgb else "- | - | ")
            + f"{r.latent_hole_rate:.2f} / " + (f"{r.rgb_hole_rate:.2f} |" if rgb else "- |"))
    g = growth
    ratio = summary[[k for k in summary if k.startswith("chunk")][0]]
    lines += ["", "| figure | measured | target |", "|---|---|---|",
              f"| read path speed-up, RGB twin / latent (median over chunks) | "
              f"{summary['read_speedup_median']:.0f}x | >= 100x |",
              f"| read path peak memory, RGB twin / latent (median) | "
              f"{summary['read_peak_memory_ratio_median']:.0f}x | >= 55x |",
              f"| latent read time, chunk {rows[-1].chunk} / chunk 2 | {ratio.get('latent', float('nan')):.2f} | "
              f"<= 1.2 |"]
    if "rgb" in ratio:
        lines.append(f"| RGB read time, chunk {rows[-1].chunk} / chunk 2 | {ratio['rgb']:.2f} | (peers grow) |")
    lines += [f"| latent readout vs memcpy of the same {extra['read_bytes_touched'] / 2**20:.2f} MiB | "
              f"{100 * extra['memcpy_fraction']:.1f}% of memcpy speed | - |",
              f"| latent read at 704x1280, chunk {len(g['per_chunk'])} / chunk 2 | "
              f"{g['read_704_ratio_last_over_2']:.2f} | <= 1.2 |",
              f"| latent read at 704x1280 (9 cameras, {g['per_chunk'][-1]['latent_points']} points) | "
              f"{1e3 * g['read_704_s']:.1f} ms = {100 * g['read_704_memcpy_fraction']:.1f}% of a memcpy of its "
              f"{g['read_704_bytes_touched'] / 2**20:.2f} MiB | - |",
              f"| latent cache growth per chunk at 704x1280 (mean over {len(g['per_chunk'])} chunks) | "
              f"{g['mean_growth_mib_per_chunk']:.3f} MiB | <= 0.25 MiB |",
              f"| latent points added on the return leg (pure revisits, static scene) at 704x1280 | "
              f"{g['return_leg_growth_points']} | 0 |",
              f"| reference release (appends every cell, fp32) per chunk at 704x1280 | "
              f"{mib(g['release_append_everything_bytes_per_chunk']):.2f} MiB | - |",
              "", f"Cache size at 704x1280, static scene (latent: depth rendered at "
              f"{g['latent_depth_resolution'][0]}x{g['latent_depth_resolution'][1]}, "
              f"{g['latent_bytes_per_point']} B/point; RGB twin: depth at {g['rgb_depth_resolution'][0]}x"
              f"{g['rgb_depth_resolution'][1]}, counts scaled to 704x1280, {g['rgb_bytes_per_point']} B/point):", "",
              "| chunk | latent read ms | latent points | latent MiB | RGB points | RGB MiB | RGB / latent |",
              "|---|---|---|---|---|---|---|"]
    for p in g["per_chunk"]:
        lines.append(f"| {p['chunk']} | {1e3 * p['latent_read_s']:.2f} | {p['latent_points']} | "
                     f"{mib(p['latent_bytes']):.2f} | {p['rgb_points']} | {mib(p['rgb_bytes']):.1f} | "
                     f"{p['rgb_bytes'] / p['latent_bytes']:.0f}x |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The published section (benchmarks/results/memory-read-<mode>[-<device>].json)
# ----------------------------------------------------------------------------------------------
SECTIONS = {
    "full": dict(
        order=10, title="Memory read path and cache growth (full Wan2.2 VAE)",
        headline=[
            {"figure": "memory read path, RGB twin (render + full Wan2.2 VAE encode) / latent memory",
             "measured": "{read_speedup:,}x faster, {read_peak_ratio:,}x less peak memory", "target": ">= 100x, >= 55x"},
            {"figure": "latent cache growth per chunk at 704x1280 ({chunks} chunks, pan and return)",
             "measured": "{growth_mib} MiB (reference release: {release_mib} MiB)", "target": "<= 0.25 MiB"},
            {"figure": "points added on a pure revisit", "measured": "{revisit_points}", "target": "0"},
            {"figure": "latent read time, chunk 20 / chunk 2, at 176x320 / 704x1280",
             "measured": "{read_ratio} / {read_704_ratio}", "target": "<= 1.2"}],
        reading=(
            "A chunk's read is, for the latent memory, the z-buffer readout at its 9 latent-frame cameras; for the "
            "RGB twin, a z-buffer render of its 33 frames and a Wan2.2 VAE encode of the render (the Spatia / GEN3C "
            "path). Peaks are torch's CPU allocations from the profiler's timeline (a lower bound). Latent read times "
            "are medians over 9 rounds in which the reads of all chunks run side by side, each on a copy of the "
            "memory as it was at its chunk. The read follows the points in view, not the trajectory's length: once "
            "the pan-and-return stops adding points (chunk 10 on) it is flat, and the early chunks, with 11-16 % "
            "holes, cost more than the covered later ones because reads close magnification cracks (docs/method.md "
            "§2), so the chunk-20 / chunk-2 ratio ({read_ratio}) is below 1. The cache sizes at 704x1280 come from "
            "the memories run on depth and cameras alone on a static scene, so the return leg is a pure revisit: it "
            "adds {revisit_points} points, and the cache grows by {growth_mib} MiB per chunk against {release_mib} "
            "MiB for the reference release, which appends every cell in fp32.")),
    "quick": dict(
        order=11, title="Memory read path, quick mode (tiny VAE)", headline=[],
        reading=(
            "The quick mode runs in under a minute with the tiny VAE in the RGB twin's encode, so its speed-up "
            "({read_speedup:,}x) is a lower bound of the full mode's. Its chunk-20 / chunk-2 read ratio "
            "({read_ratio}) is measured as the full mode's, with fewer rounds, so it is the noisier of the two.")),
}
"""Per mode: order, title, headline rows (README's figures table: the CPU machine's full mode only)
and the reading, as format strings over the section's figures (``figures``)."""

GPU_READING = (
    "The same measurement on {device}: peaks are the allocator's high-water mark above the level before each "
    "read, and latent read times are medians over 9 rounds in which the reads of all chunks run side by side. "
    "The RGB twin's read (render + {vae} VAE encode) takes {{read_speedup:,}}x the latent memory's time and "
    "{{read_peak_ratio:,}}x its peak memory; the latent read's chunk-{last} / chunk-2 ratio is {{read_ratio}}.")


def figures(mode: str, summary: dict, growth: dict) -> dict:
    """The section's named figures, rounded as the published ones."""
    ratio = summary[[k for k in summary if k.startswith("chunk")][0]]
    out = {"read_speedup": round(summary["read_speedup_median"]),
           "read_peak_ratio": round(summary["read_peak_memory_ratio_median"]),
           "read_ratio": round(ratio["latent"], 2)}
    if mode == "full":
        out.update(read_704_ratio=round(growth["read_704_ratio_last_over_2"], 2),
                   growth_mib=round(growth["mean_growth_mib_per_chunk"], 3),
                   revisit_points=int(growth["return_leg_growth_points"]),
                   release_mib=round(mib(growth["release_append_everything_bytes_per_chunk"]), 2),
                   chunks=len(growth["per_chunk"]))
    return out


def build_section(mode: str, device: torch.device, command: str, wall: float, report: str, summary: dict,
                  growth: dict, cfg: dict) -> Section:
    """``memory-read-<mode>`` on the CPU; ``memory-read-<mode>-<device>`` (no headline) elsewhere."""
    spec = SECTIONS[mode]
    key, title, headline, reading = f"memory-read-{mode}", spec["title"], spec["headline"], spec["reading"]
    if device.type != "cpu":
        key += f"-{device.type}"
        title += " (GPU)" if device.type == "cuda" else f" ({device.type})"
        headline = []
        reading = GPU_READING.format(device="a GPU" if device.type == "cuda" else device.type, vae=cfg["vae"],
                                     last=cfg["chunks"])
    section = Section(key=key, title=title, order=spec["order"], command=command,
                      machine=f"{machine_line(device)}; wall time {wall:.0f} s",
                      figures=figures(mode, summary, growth), headline=[dict(h) for h in headline], reading=reading)
    return section.markdown(report)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--chunks", type=int, help="chunks along the trajectory (>= 2)")
    parser.add_argument("--rgb-chunks", type=int, help="chunks for which the RGB twin is also run")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--growth-chunks", type=int, help="chunks for the 704x1280 growth table")
    parser.add_argument("--yaw", type=float, default=120.0, help="pan angle, degrees")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/memory", help="directory for the JSON results")
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/memory-read-MODE[-DEVICE].json (docs/benchmarks.md, README)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cfg = dict(MODES[args.mode])
    for key in ("chunks", "rgb_chunks", "height", "width", "growth_chunks"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if cfg["chunks"] < 2 or cfg["growth_chunks"] < 2:
        parser.error("--chunks and --growth-chunks must be >= 2")
    device = torch.device(args.device)
    t0 = time.perf_counter()
    rows, extra = run_chunks(cfg, device, args.seed, args.yaw)
    growth = growth_at_full_resolution(cfg["growth_chunks"], cfg["latent_depth_scale"], cfg["rgb_depth_scale"],
                                       args.seed, args.yaw, device)
    summary = summarise(rows, extra, growth, cfg)
    wall = time.perf_counter() - t0
    report = format_report(rows, extra, growth, summary, cfg)
    command = command_line("memory_bench", argv, write_docs=args.write_docs)
    print(f"Command: `{command}`  \nMachine: {machine_line(device)}; wall time {wall:.0f} s.\n\n{report}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.mode}.json").write_text(json.dumps(
        {"config": cfg, "rows": [asdict(r) for r in rows], "extra": extra, "growth": growth,
         "summary": summary, "device": machine_line(device), "wall_s": wall}, indent=2))
    if args.write_docs:
        section = build_section(args.mode, device, command, wall, report, summary, growth, cfg)
        print(f"\nrecorded in {publish(section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
