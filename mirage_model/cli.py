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
