"""Per-chunk seconds per frame of chunked generation with ``--memory latent`` vs ``rgb`` vs ``none``.

    python -m benchmarks.generate_bench [--preset small --chunks 6 --steps 4 --height 128 --width 224] [--write-docs]

One run, same model, seed, first frame (synthetic room, true depth) and pan-and-return trajectory for
the three memories. Prints per-chunk s/frame for each, the latent/rgb ratio per chunk and the
last-chunk / chunk-2 ratio of each mode. Random weights: the figures measure cost, not quality.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks._measure import command_line, machine_line, sig
from benchmarks.reference import Section, publish

MODES = ("latent", "rgb", "none")


def report(args, modes: list[str], size: tuple[int, int], frames: int, stats: dict, peaks: dict) -> str:
    """The run's table and ratios in Markdown (without the command and machine lines)."""
    lines = [f"Preset `{args.preset}` (random weights, {args.dtype}), {size[0]}x{size[1]}, {args.steps} UniPC steps, "
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
    ratios = growth(stats)
    summary = f"Chunk {args.chunks} / chunk 2 s/frame: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()) + "."
    if "latent" in modes and "rgb" in modes:
        summary += f" Latent / rgb over all chunks: {latent_over_rgb(stats):.2f}."
    if peaks:
        summary += " Peak GPU memory: " + ", ".join(f"{m} {p:.1f} GiB" for m, p in peaks.items()) + \
            " (docs/method.md §7: Mirage 0.25 s/frame after chunk 1 on an H100)."
    lines += ["", summary]
    return "\n".join(lines)


def growth(stats: dict) -> dict[str, float]:
    """Last chunk / chunk 2 seconds per frame, per mode."""
    return {m: s[-1]["seconds_per_frame"] / s[1]["seconds_per_frame"] for m, s in stats.items()}


def latent_over_rgb(stats: dict) -> float:
    return sum(s["seconds"] for s in stats["latent"]) / sum(s["seconds"] for s in stats["rgb"])


# ----------------------------------------------------------------------------------------------
# The published section: benchmarks/results/generate.json (CPU, small preset), else
# generate-<device>-<preset>.json next to it, without a headline
# ----------------------------------------------------------------------------------------------
TITLE = "Chunked generation time per frame: latent vs rgb vs none"
HEADLINE = [{"figure": "chunked generation, small preset 128x224, s/frame latent / rgb / none (chunk 6 / chunk 2)",
             "measured": "{latent_s} / {rgb_s} / {none_s} ({latent_growth:.2f} / {rgb_growth:.2f} / {none_growth:.2f})",
             "target": "-"}]
READING = ("The small preset has random weights here: only time is measured. A chunk's time per frame stays flat "
           "along the trajectory (chunk 6 / chunk 2 within 2 % for every mode), and the latent memory's chunk "
           "costs {latent_over_rgb} of the RGB cache's. The full-size figures (TI2V-5B shapes at 704x1280 in bf16) "
           "come from the same script on a GPU: `python -m benchmarks.generate_bench --preset ti2v-5b --device cuda "
           "--dtype bf16 --height 704 --width 1280 --chunks 3 --steps 20 --write-docs`.")
OTHER_READING = ("Random weights: only time is measured. Seconds per frame are means over the chunks: latent "
                 "{latent_s}, rgb {rgb_s}, none {none_s}; last chunk / chunk 2: {latent_growth:.2f} / "
                 "{rgb_growth:.2f} / {none_growth:.2f}, and the latent memory's chunk costs {latent_over_rgb} of "
                 "the RGB cache's.")


def figures(stats: dict, peaks: dict) -> dict:
    """Mean seconds per frame over the chunks (2 significant digits), last / second chunk, latent / rgb."""
    out: dict = {}
    for m, s in stats.items():
        out[f"{m}_s"] = sig(sum(c["seconds_per_frame"] for c in s) / len(s))
    out.update({f"{m}_growth": round(r, 2) for m, r in growth(stats).items()})
    out["latent_over_rgb"] = round(latent_over_rgb(stats), 2)
    out.update({f"{m}_peak_gib": round(p, 1) for m, p in peaks.items()})
    return out


def build_section(preset: str, device: torch.device, command: str, machine: str, body: str, stats: dict,
                  peaks: dict) -> Section:
    if device.type == "cpu" and preset == "small":
        key, title, headline, reading = "generate", TITLE, [dict(h) for h in HEADLINE], READING
    else:
        where = "GPU" if device.type == "cuda" else device.type
        key, title, headline, reading = f"generate-{device.type}-{preset}", f"{TITLE} ({where}, {preset})", [], \
            OTHER_READING
        if peaks:
            reading += " Peak GPU memory: latent {latent_peak_gib} / rgb {rgb_peak_gib} / none {none_peak_gib} GiB."
    return Section(key=key, title=title, order=30, command=command, machine=machine, figures=figures(stats, peaks),
                   headline=headline, reading=reading).markdown(body)


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
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/generate[-DEVICE-PRESET].json (docs/benchmarks.md)")
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
    if args.write_docs and sorted(modes) != sorted(MODES):
        parser.error("--write-docs publishes the three modes side by side: leave --modes out")
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

    body = report(args, modes, size, frames, stats, peaks)
    command = command_line("generate_bench", argv, write_docs=args.write_docs)
    print(f"Command: `{command}`  \nMachine: {machine_line(device)}.\n\n{body}")
    if args.write_docs:
        section = build_section(args.preset, device, command, machine_line(device), body, stats, peaks)
        print(f"\nrecorded in {publish(section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
