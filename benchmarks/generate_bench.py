"""Per-chunk seconds per frame of chunked generation with ``--memory latent`` vs ``rgb`` vs ``none``.

    python -m benchmarks.generate_bench [--preset small --chunks 6 --steps 4 --height 128 --width 224] [--write-docs]

One run, same model, seed, first frame (synthetic room, true depth) and pan-and-return trajectory for
the three memories. Prints per-chunk s/frame for each, the latent/rgb ratio per chunk and the
last-chunk / chunk-2 ratio of each mode. Random weights: the figures measure cost, not quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks._measure import machine_line, write_docs_section

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MODES = ("latent", "rgb", "none")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="generate_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.chunks < 2:
        parser.error("--chunks must be >= 2")

    from mirage_model.generation import GenerationConfig, MirageGenerator
    from mirage_model.geometry.trajectory import pan_and_return
    from mirage_model.synthetic import default_scene, render

    size = (args.height, args.width)
    frames = 33 + 32 * (args.chunks - 1)
    traj = pan_and_return(frames, yaw_degrees=90.0, translation=(0.4, 0.0, 0.2), image_size=size)
    first = render(default_scene(args.seed), traj.K[0], traj.c2w[0], size)
    image = (first.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    generator = MirageGenerator.from_preset(args.preset, seed=args.seed).to(args.device)
    stats = {}
    for mode in MODES:
        config = GenerationConfig(steps=args.steps, memory=mode, seed=args.seed, device=args.device, progress=False)
        result = generator.generate(image, "a quiet room", traj, config, first_depth=first.depth)
        stats[mode] = result.chunk_stats

    lines = [f"Command: `python -m benchmarks.generate_bench {' '.join(argv)}`".rstrip() + "  ",
             f"Machine: {machine_line(torch.device(args.device))}.  ",
             f"Preset `{args.preset}` (random weights), {size[0]}x{size[1]}, {args.steps} UniPC steps, "
             f"{args.chunks} chunks ({frames} frames) along a pan-and-return path; every chunk includes the "
             "memory read, denoising, decoding, stereo depth for the 8 new latent frames and the write-back.", "",
             "| chunk | latent s/frame | rgb s/frame | none s/frame | latent / rgb | latent cache points | "
             "rgb cache points | holes latent / rgb |", "|---|---|---|---|---|---|---|---|"]
    for i in range(args.chunks):
        lat, rgb, none = (stats[m][i] for m in MODES)
        lines.append(f"| {i + 1} | {lat['seconds_per_frame']:.3f} | {rgb['seconds_per_frame']:.3f} | "
                     f"{none['seconds_per_frame']:.3f} | {lat['seconds_per_frame'] / rgb['seconds_per_frame']:.2f} | "
                     f"{lat['cache_points']} | {rgb['cache_points']} | {lat['hole_rate']:.2f} / {rgb['hole_rate']:.2f} |")
    ratios = {m: stats[m][-1]["seconds_per_frame"] / stats[m][1]["seconds_per_frame"] for m in MODES}
    lines += ["", f"Chunk {args.chunks} / chunk 2 s/frame: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items())
              + ". Latent / rgb over all chunks: "
              + f"{sum(s['seconds'] for s in stats['latent']) / sum(s['seconds'] for s in stats['rgb']):.2f}."]
    report = "\n".join(lines)
    print(report)
    if args.write_docs:
        write_docs_section(DOCS, f"generate_bench:{torch.device(args.device).type}",
                           f"### Chunked generation, memory latent vs rgb vs none ({args.device})\n\n" + report)
        print(f"\nrecorded in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
