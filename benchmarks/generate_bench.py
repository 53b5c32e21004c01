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
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="weights dtype (bf16 for the ti2v-5b shapes on a GPU)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated memory modes to run")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.chunks < 2:
        parser.error("--chunks must be >= 2")

    from mirage_model.generation import GenerationConfig, MirageGenerator
    from mirage_model.geometry.trajectory import pan_and_return
    from mirage_model.io.images import to_uint8
    from mirage_model.synthetic import default_scene, render

    size = (args.height, args.width)
    frames = 33 + 32 * (args.chunks - 1)
    traj = pan_and_return(frames, yaw_degrees=90.0, translation=(0.4, 0.0, 0.2), image_size=size)
    first = render(default_scene(args.seed), traj.K[0], traj.c2w[0], size)
    image = to_uint8(first.rgb).numpy()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {MODES}")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = torch.device(args.device)
    generator = MirageGenerator.from_preset(args.preset, seed=args.seed, device=device, dtype=dtype)
    stats, peaks = {}, {}
    for mode in modes:
        config = GenerationConfig(steps=args.steps, memory=mode, seed=args.seed, device=args.device, progress=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = generator.generate(image, "a quiet room", traj, config, first_depth=first.depth)
        stats[mode] = result.chunk_stats
        if device.type == "cuda":
            peaks[mode] = torch.cuda.max_memory_allocated(device) / 2**30

    lines = [f"Command: `python -m benchmarks.generate_bench {' '.join(argv)}`".rstrip() + "  ",
             f"Machine: {machine_line(device)}.  ",
             f"Preset `{args.preset}` (random weights, {args.dtype}), {size[0]}x{size[1]}, {args.steps} UniPC steps, "
             f"{args.chunks} chunks ({frames} frames) along a pan-and-return path; every chunk includes the "
             "memory read, denoising, decoding, stereo depth for the 8 new latent frames, the masks and the "
             "write-back.", ""]
    head = ["chunk"] + [f"{m} s/frame" for m in modes]
    if "latent" in modes and "rgb" in modes:
        head.append("latent / rgb")
    head += [f"{m} cache points" for m in modes if m != "none"] + [f"{m} holes" for m in modes if m != "none"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in range(args.chunks):
        row = [str(i + 1)] + [f"{stats[m][i]['seconds_per_frame']:.3f}" for m in modes]
        if "latent" in modes and "rgb" in modes:
            row.append(f"{stats['latent'][i]['seconds_per_frame'] / stats['rgb'][i]['seconds_per_frame']:.2f}")
        row += [str(stats[m][i]["cache_points"]) for m in modes if m != "none"]
        row += [f"{stats[m][i]['hole_rate']:.2f}" for m in modes if m != "none"]
        lines.append("| " + " | ".join(row) + " |")
    ratios = {m: stats[m][-1]["seconds_per_frame"] / stats[m][1]["seconds_per_frame"] for m in modes}
    summary = f"Chunk {args.chunks} / chunk 2 s/frame: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()) + "."
    if "latent" in modes and "rgb" in modes:
        summary += (" Latent / rgb over all chunks: "
                    f"{sum(s['seconds'] for s in stats['latent']) / sum(s['seconds'] for s in stats['rgb']):.2f}.")
    if peaks:
        summary += " Peak GPU memory: " + ", ".join(f"{m} {p:.1f} GiB" for m, p in peaks.items()) + \
            " (docs/method.md §7: Mirage 0.25 s/frame after chunk 1 on an H100)."
    lines += ["", summary]
    report = "\n".join(lines)
    print(report)
    if args.write_docs:
        write_docs_section(DOCS, f"generate_bench:{device.type}" + ("" if args.preset == "small" else f":{args.preset}"),
                           f"### Chunked generation, memory latent vs rgb vs none ({args.device})\n\n" + report)
        print(f"\nrecorded in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
