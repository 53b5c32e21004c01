"""The ``mirage`` command line. Subcommands are thin: they parse flags and call library code."""

from __future__ import annotations

import argparse
import logging
import sys


def _bench_memory(args: argparse.Namespace) -> int:
    from benchmarks.memory_bench import main as bench_main  # benchmarks ship with the source tree

    return bench_main(args.extra)


def _demo(args: argparse.Namespace) -> int:
    # Until the end-to-end demo lands, the embedded default is the quick memory benchmark.
    from benchmarks.memory_bench import main as bench_main

    return bench_main(["--mode", "quick"] + list(args.extra))


def _trajectory(args: argparse.Namespace) -> int:
    from mirage_model.geometry import formats, trajectory

    size = (args.height, args.width)
    if args.kind == "orbit":
        traj = trajectory.orbit(args.frames, radius=args.radius, image_size=size, fov_x_deg=args.fov)
    elif args.kind == "dolly":
        traj = trajectory.dolly(args.frames, distance=args.distance, image_size=size, fov_x_deg=args.fov)
    else:
        traj = trajectory.pan_and_return(args.frames, yaw_degrees=args.yaw, image_size=size, fov_x_deg=args.fov)
    formats.write_re10k(args.out, traj)
    print(f"wrote {len(traj)} cameras ({args.kind}) to {args.out} (RealEstate10K format)")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from jobs.preprocess import format_summary, run_preprocess
    from pipeline.config import PreprocessConfig

    overrides = {"source": args.source, "output": args.output, "ray_address": args.address}
    if args.config:
        config = PreprocessConfig.from_yaml(args.config, **overrides)
    else:
        config = PreprocessConfig.model_validate({k: v for k, v in overrides.items() if v is not None})
    summary = run_preprocess(config)
    print(format_summary(summary))
    return 0


def _synth_data(args: argparse.Namespace) -> int:
    from pipeline.synth_data import make_bad_inputs, make_synthetic_dataset

    paths = make_synthetic_dataset(args.out, args.n, seed=args.seed, frames=args.frames,
                                   size=(args.height, args.width), fps=args.fps)
    print(f"wrote {len(paths)} synthetic videos (+ .gt.npz ground truth, .cameras.txt) to {args.out}")
    if args.bad:
        bad = make_bad_inputs(args.out, seed=args.seed)
        print(f"wrote {len(bad)} bad inputs: {', '.join(sorted(bad))}")
    return 0


def _eval_perception(args: argparse.Namespace) -> int:
    import json

    from mirage_model.perception.report import run_eval_perception

    result = run_eval_perception(seed=args.seed, n_frames=args.frames, image_size=(args.height, args.width))
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirage", description="Latent spatial memory for video world models: tools and jobs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the embedded default (now: the quick memory benchmark)")
    p.set_defaults(func=_demo, passthrough=True)

    p = sub.add_parser("bench-memory", add_help=False,
                       help="latent memory vs RGB twin: read time, peak memory, growth (--help for flags)")
    p.set_defaults(func=_bench_memory, passthrough=True)

    p = sub.add_parser("preprocess", help="raw videos -> poses, depth, masks, latents -> WebDataset shards (Ray Data)")
    p.add_argument("--config", help="YAML config (see configs/preprocess/*.yaml)")
    p.add_argument("--source", help="videos: directory, glob, manifest or s3:// prefix (overrides the config)")
    p.add_argument("--output", help="output directory or s3:// prefix (overrides the config)")
    p.add_argument("--address", help="Ray address (default: start a local Ray on 127.0.0.1)")
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("synth-data", help="render synthetic videos with ground truth (tests, demo, benchmarks)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4, help="number of videos")
    p.add_argument("--frames", type=int, default=97)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad", action="store_true", help="also write corrupt / empty / audio-only / static inputs")
    p.set_defaults(func=_synth_data)

    p = sub.add_parser("eval-perception", help="poses, depth and masks vs synthetic ground truth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.set_defaults(func=_eval_perception)

    p = sub.add_parser("trajectory", help="write a preset camera trajectory as a RealEstate10K file")
    p.add_argument("kind", choices=["orbit", "dolly", "pan-and-return"])
    p.add_argument("--frames", type=int, default=129, help="number of frames (4n+1 for generation)")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view, degrees")
    p.add_argument("--radius", type=float, default=2.0, help="orbit radius")
    p.add_argument("--distance", type=float, default=2.0, help="dolly distance")
    p.add_argument("--yaw", type=float, default=90.0, help="pan-and-return yaw, degrees")
    p.add_argument("--out", required=True, help="output camera file")
    p.set_defaults(func=_trajectory)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mirage {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
