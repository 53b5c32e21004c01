"""The ``mirage`` command line. Subcommands are thin: they parse flags and call library code."""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.job_args import add_job_parser, job_config
from jobs.submit import register_cli


def run_job(args: argparse.Namespace, run, report=None, default_path=None) -> int:
    """Load the job's config; with ``--print-config`` print it, else ``run(cfg)`` and print
    ``report(summary)``."""
    from mirage_model.config import to_yaml

    cfg = job_config(args, default_path)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    summary = run(cfg)
    if report is not None:
        print(report(summary))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jobs.config import CONFIG_DIR
    from jobs.demo import run_demo

    if args.quick and args.config:
        raise ValueError("--quick is --config configs/demo/quick.yaml: give one or the other")
    return run_job(args, lambda cfg: run_demo(config=cfg),
                   default_path=CONFIG_DIR / "demo" / "quick.yaml" if args.quick else None)


def _trajectory(args: argparse.Namespace) -> int:
    from mirage_model.geometry import formats, trajectory

    size = (args.height, args.width)
    flags = {"orbit": {"radius": args.radius}, "dolly": {"distance": args.distance},
             "pan-and-return": {"yaw_degrees": args.yaw}}.get(args.kind, {})
    params = {k: v for k, v in {**flags, "fov_x_deg": args.fov}.items() if v is not None}  # unset: preset default
    traj = trajectory.make_trajectory(args.kind, args.frames, size, **params)
    formats.write_re10k(args.out, traj)
    print(f"wrote {len(traj)} cameras ({args.kind}) to {args.out} (RealEstate10K format)")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from jobs.preprocess import format_summary, run_preprocess

    return run_job(args, run_preprocess, format_summary)


def _synth_data(args: argparse.Namespace) -> int:
    from pipeline.synth_data import make_bad_inputs, make_synthetic_dataset, make_synthetic_testset

    if args.testset:
        clips = make_synthetic_testset(args.out, args.n, seed=args.seed, frames=args.frames,
                                       size=(args.height, args.width), fps=args.fps, texture_scale=args.texture_scale)
        print(f"wrote {len(clips)} RealEstate10K-format test clips (<clip>.txt + <clip>/ frames) to {args.out}")
        return 0
    paths = make_synthetic_dataset(args.out, args.n, seed=args.seed, frames=args.frames,
                                   size=(args.height, args.width), fps=args.fps,
                                   texture_scale=args.texture_scale, revisit=args.revisit, camera_paths=args.paths)
    print(f"wrote {len(paths)} synthetic videos (+ .gt.npz ground truth, .cameras.txt) to {args.out}")
    if args.bad:
        bad = make_bad_inputs(args.out, seed=args.seed)
        print(f"wrote {len(bad)} bad inputs: {', '.join(sorted(bad))}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from jobs.config import TrainConfig
    from jobs.plan import run_plan
    from mirage_model.config import load_config

    cfg = load_config(TrainConfig, args.config, {}, args.overrides)
    print(run_plan(cfg, args.workers, args.height, args.width, args.gpu_memory, as_json=args.json))
    return 0


def _eval_perception(args: argparse.Namespace) -> int:
    import json

    from mirage_model.perception.report import run_eval_perception

    result = run_eval_perception(seed=args.seed, n_frames=args.frames, image_size=(args.height, args.width),
                                 motion=args.motion)
    print(json.dumps(result, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import numpy as np

    from jobs.config import GeneratorModelConfig
    from jobs.generate_batch import load_generator, resolve_device
    from mirage_model.config import apply_overrides
    from mirage_model.generation import GenerationConfig, save_outputs
    from mirage_model.geometry import formats, trajectory
    from mirage_model.io.images import to_uint8

    size = (args.height, args.width)
    if size[0] % 32 or size[1] % 32:
        raise ValueError(f"--height/--width must be multiples of 32, got {size[0]}x{size[1]}")
    if args.trajectory in trajectory.PRESETS:
        traj = trajectory.make_trajectory(args.trajectory, args.frames, size)
    else:
        traj = formats.load_trajectory(args.trajectory, image_size=size)
        if len(traj) != args.frames:
            traj = trajectory.resample(traj, args.frames)
        traj = traj.resized(size)

    model = {"model_dir": args.model_dir, "branch_dir": args.branch, "lora": args.lora, "checkpoint": args.checkpoint,
             "vae": args.vae, "world": args.world, "dtype": {"bf16": "bfloat16", "fp32": None}[args.dtype]}
    if args.preset:
        model["preset"] = args.preset
    elif not (args.model_dir or args.checkpoint or args.vae or args.world):
        model["world"] = "assets/world"  # no model given: the shipped world
    model = GeneratorModelConfig.model_validate({k: v for k, v in model.items() if v is not None})

    first_depth = None
    if args.synthetic:
        from jobs.config import WORLD_TEXTURE_SCALE
        from mirage_model.synthetic import default_scene, render

        texture = args.texture_scale or (WORLD_TEXTURE_SCALE if model.world else 1.0)  # a world: its scenes' kind
        view = render(default_scene(args.seed, texture_scale=texture), traj.K[0], traj.c2w[0], size)
        image = to_uint8(view.rgb.numpy())
        first_depth = view.depth
    elif args.image:
        from PIL import Image

        with Image.open(args.image) as im:
            image = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))
    else:
        raise ValueError("give --image PATH or --synthetic")

    if args.first_depth:
        first_depth = np.load(args.first_depth)
        if first_depth.shape != size:
            raise ValueError(f"--first-depth {args.first_depth}: shape {first_depth.shape} is not {size}")
    settings = {"steps": args.steps, "memory": args.memory, "seed": args.seed, "fps": args.fps, "device": args.device,
                "depth_model": args.depth_model, "unobserved_depth": args.unobserved_depth,
                "preceding": args.preceding, "shift": args.shift}
    config = GenerationConfig.model_validate(apply_overrides({k: v for k, v in settings.items() if v is not None},
                                                             args.overrides))
    generator = load_generator(model, resolve_device(config.device))
    result = generator.generate(image, args.prompt, traj, config, first_depth=first_depth)
    paths = save_outputs(result, traj, args.out, fps=config.fps)
    for s in result.chunk_stats:
        print(f"chunk {s['chunk']}: {s['seconds']:.2f} s ({s['seconds_per_frame']:.3f} s/frame), "
              f"{s['cache_points']} points, {s['cache_bytes']} bytes, hole rate {s['hole_rate']:.3f}")
    print(f"wrote {result.frames.shape[0]} frames to {paths['video']}, {paths['cameras']}, {paths['chunks']}")
    return 0


def _generate_batch(args: argparse.Namespace) -> int:
    from jobs.generate_batch import format_summary, run_generate_batch

    return run_job(args, run_generate_batch, format_summary)


def _train(args: argparse.Namespace) -> int:
    import json

    from jobs.train import format_summary, run_train
    from pipeline import storage

    def run(cfg):
        if args.resume and not storage.exists(storage.join_uri(cfg.storage_path, cfg.name), cfg.storage.options()):
            raise ValueError(f"--resume: no run named {cfg.name!r} in {cfg.storage_path}")
        summary = run_train(cfg)
        if args.summary:
            with open(args.summary, "w") as f:
                json.dump(summary, f, indent=2, default=str)
        return summary

    return run_job(args, run, format_summary)


def _train_vae(args: argparse.Namespace) -> int:
    from jobs.train_vae import format_summary, run_train_vae

    return run_job(args, run_train_vae, format_summary)


def _eval_memory(args: argparse.Namespace) -> int:
    from jobs.eval_memory import format_summary, run_eval_memory

    return run_job(args, run_eval_memory, format_summary)


def _eval(args: argparse.Namespace) -> int:
    from jobs.eval_memory import format_summary
    from jobs.evaluate import run_eval

    return run_job(args, run_eval, format_summary)


def _add_s3_args(p: argparse.ArgumentParser, default: str = "$AWS_ENDPOINT_URL") -> None:
    p.add_argument("--endpoint-url", help=f"S3 endpoint (default: {default})")
    p.add_argument("--region", help="S3 region")


def _s3_options(args: argparse.Namespace, storage=None):
    """``StorageOptions`` from ``--endpoint-url`` / ``--region``, falling back to a config's
    ``storage`` section (``StorageConfig``) when given."""
    from pipeline.storage import StorageOptions

    return StorageOptions(endpoint_url=args.endpoint_url or (storage.endpoint_url if storage else None),
                          region=args.region or (storage.region if storage else None))


def _export_model(args: argparse.Namespace) -> int:
    from jobs.train import export_model

    written = export_model(args.run, args.out, _s3_options(args))
    print(f"wrote {len(written)} files to {args.out}: the whole model for `mirage generate --checkpoint "
          f"{args.out}`; its LoRA alone loads with WanPipeline.load_lora_weights / transformer.load_lora_adapter")
    return 0


def _export_testset(args: argparse.Namespace) -> int:
    from pipeline.testsets import testset_from_shards

    clips = testset_from_shards(args.shards, args.out, max_clips=args.max_clips, options=_s3_options(args))
    print(f"wrote {len(clips)} RealEstate10K-format test clips (<clip>.txt + <clip>/ frames) to {args.out}: "
          f"{', '.join(clips)}")
    return 0


def _export_world(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from jobs.train import WORLD_FILE, export_world

    run, vae, sample = args.run, args.vae, None
    options = _s3_options(args)
    if args.config:  # the run's own training config: its run directory, VAE, sample layout and S3
        from jobs.config import TrainConfig
        from mirage_model.config import load_config
        from pipeline.storage import join_uri

        cfg = load_config(TrainConfig, args.config)
        run = run or join_uri(cfg.storage_path, cfg.name)
        vae, sample = vae or cfg.model.vae, cfg.data
        options = _s3_options(args, cfg.storage)
    if not run or not vae:
        raise SystemExit("export-world: give --config (the run's training config), or RUN and --vae")
    note = json.loads(Path(args.note).read_text()) if args.note else None
    record = export_world(run, vae, args.out, note=note, sample=sample, options=options)
    size = sum(f["bytes"] for f in record["files"].values())
    print(f"wrote {args.out} ({len(record['files'])} files, {size / 2**20:.1f} MiB; {WORLD_FILE} lists them) from "
          f"{record['checkpoint']} (step {record['state'].get('global_step')}) and the VAE {vae}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirage", description="Latent spatial memory for video world models: tools and jobs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = add_job_parser(sub, "demo", _demo)
    p.add_argument("--quick", action="store_true",
                   help="the shortened variant the tests run (~1 min): --config configs/demo/quick.yaml")

    add_job_parser(sub, "preprocess", _preprocess)

    p = sub.add_parser("synth-data", help="render synthetic videos with ground truth (tests, demo, benchmarks)")
    p.add_argument("--out", required=True, help="output directory (videos, camera files, ground-truth .npz)")
    p.add_argument("--n", type=int, default=4, help="number of videos")
    p.add_argument("--frames", type=int, default=97, help="frames per video")
    p.add_argument("--height", type=int, default=240, help="frame height, pixels (even)")
    p.add_argument("--width", type=int, default=320, help="frame width, pixels (even)")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate written into the videos")
    p.add_argument("--seed", type=int, default=0, help="random seed of the scenes and camera paths (video k uses seed + k)")
    p.add_argument("--texture-scale", type=float, default=1.0,
                   help="texture feature size factor (1: detailed, for SfM/stereo; 3: smooth, what a small VAE learns)")
    p.add_argument("--revisit", action="store_true",
                   help="cameras go out and come back the same way (clips that revisit their own views)")
    p.add_argument("--paths", choices=("track", "fast"), default="track",
                   help="track: a sideways track that SfM registers; fast: pans, orbits and dollies from random "
                        "places (preprocess them with poses.method=file)")
    p.add_argument("--bad", action="store_true", help="also write corrupt / empty / audio-only / static inputs")
    p.add_argument("--testset", action="store_true",
                   help="write RealEstate10K-format test clips for `mirage eval` instead (seeds from --seed)")
    p.set_defaults(func=_synth_data)

    p = sub.add_parser("eval-perception", help="poses, depth and masks vs synthetic ground truth")
    p.add_argument("--seed", type=int, default=0, help="random seed of the rendered scene")
    p.add_argument("--frames", type=int, default=21, help="frames of the rendered clip")
    p.add_argument("--height", type=int, default=240, help="frame height, pixels")
    p.add_argument("--width", type=int, default=320, help="frame width, pixels")
    p.add_argument("--motion", default="arc_down", choices=["arc_down", "follow"],
                   help="camera motion: arc_down (sideways arc, the ball rolls along the epipolar lines) "
                        "or follow (the camera follows the ball, which hardly moves in the image)")
    p.set_defaults(func=_eval_perception)

    p = sub.add_parser("trajectory", help="write a preset camera trajectory as a RealEstate10K file")
    p.add_argument("kind", choices=["orbit", "dolly", "pan-and-return"],
                   help="preset (mirage_model.geometry.trajectory.PRESETS, which holds the defaults)")
    p.add_argument("--frames", type=int, default=129, help="number of frames (4n+1 for generation)")
    p.add_argument("--height", type=int, default=704, help="image height the intrinsics are for, pixels")
    p.add_argument("--width", type=int, default=1280, help="image width the intrinsics are for, pixels")
    p.add_argument("--fov", type=float, default=None, help="horizontal field of view, degrees (default: the preset's)")
    p.add_argument("--radius", type=float, default=None, help="orbit radius (default: the preset's)")
    p.add_argument("--distance", type=float, default=None, help="dolly distance (default: the preset's)")
    p.add_argument("--yaw", type=float, default=None, help="pan-and-return yaw, degrees (default: the preset's)")
    p.add_argument("--out", required=True, help="output camera file")
    p.set_defaults(func=_trajectory)

    p = add_job_parser(sub, "train", _train)
    p.add_argument("--resume", action="store_true", help="require an existing run to resume")
    p.add_argument("--summary", help="write the run summary as JSON here")

    p = sub.add_parser("plan", help="will a training config fit its GPUs? memory per GPU (DDP vs FSDP) and FLOPs, "
                                    "from the model built on the meta device")
    p.add_argument("--config", required=True, help="a `mirage train` config (e.g. configs/train/ti2v-5b.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as for `mirage train`; repeatable")
    p.add_argument("--workers", type=int, help="GPU workers (default: the config's scaling.num_workers)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--height", type=int, default=704, help="training frame height, pixels (default 704)")
    p.add_argument("--width", type=int, default=1280, help="training frame width, pixels (default 1280)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)

    add_job_parser(sub, "train-vae", _train_vae)
    add_job_parser(sub, "eval-memory", _eval_memory)
    add_job_parser(sub, "eval", _eval)

    p = sub.add_parser("export-model", aliases=["export-lora"],
                       help="a training run's model as one directory: branch + LoRA + model.json (`mirage generate "
                            "--checkpoint DIR` loads it; stock diffusers loads its LoRA)")
    p.add_argument("run", help="run directory (storage_path/name) or checkpoint directory, local or s3://")
    p.add_argument("--out", required=True, help="output directory (or s3:// prefix)")
    _add_s3_args(p)
    p.set_defaults(func=_export_model)

    p = sub.add_parser("export-testset", help="the clips `mirage preprocess` made of one's footage (frames and "
                                              "estimated cameras) as a RealEstate10K-format test set for `mirage eval`")
    p.add_argument("shards", help="preprocess output (local or s3://)")
    p.add_argument("--out", required=True, help="test set root (local or s3://)")
    p.add_argument("--max-clips", type=int, help="the first N samples only")
    _add_s3_args(p)
    p.set_defaults(func=_export_testset)

    p = sub.add_parser("export-world", help="a trained world (checkpoint + VAE) as one small local directory "
                                            "(the one `mirage demo` starts from)")
    p.add_argument("run", nargs="?", help="run directory (storage_path/name) or checkpoint directory, local or "
                                          "s3:// (default: the --config run's)")
    p.add_argument("--config", help="the run's `mirage train` config: the run, the VAE and the training-sample "
                                    "layout recorded for `mirage demo` (e.g. configs/train/world.yaml)")
    p.add_argument("--vae", help="local diffusers VAE directory (default: the --config's model.vae)")
    p.add_argument("--out", required=True, help="output directory (replaced)")
    p.add_argument("--note", help="a JSON file recorded in world.json (e.g. the recipe and its figures)")
    _add_s3_args(p, "the --config's storage, else $AWS_ENDPOINT_URL")
    p.set_defaults(func=_export_world)

    p = sub.add_parser("generate", help="generate a video along a camera trajectory with a spatial memory",
                       description="Generate one video. The model: --world (a trained world; the shipped "
                                   "assets/world when no model is given), or --preset / --model-dir, with "
                                   "--checkpoint and --vae on top. The settings: mirage_model/generation/config.py "
                                   "(GenerationConfig), the common ones as flags, any one with --set.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=["tiny", "small", "ti2v-5b"],
                     help="random-weight model preset (without --checkpoint: an untrained model; ti2v-5b: the "
                          "full-size shapes, GPU only)")
    src.add_argument("--model-dir", help="local Wan2.2-TI2V-5B-Diffusers-layout directory")
    src.add_argument("--world", help="a trained world (`mirage export-world`; e.g. assets/world): its preset, model "
                                     "and VAE")
    p.add_argument("--checkpoint", help="a `mirage train` run or checkpoint directory, local or s3:// (a run: its "
                                        "latest checkpoint), loaded on top of --preset / --model-dir")
    p.add_argument("--vae", help="a local diffusers VAE directory (`mirage train-vae` output) replacing the preset's")
    p.add_argument("--branch", help="saved memory branch directory (with --model-dir)")
    p.add_argument("--lora", help="LoRA directory or .safetensors file (with --model-dir)")
    img = p.add_mutually_exclusive_group()
    img.add_argument("--image", help="first frame (resized to --height x --width)")
    img.add_argument("--synthetic", action="store_true",
                     help="first frame rendered from the synthetic scene (its true depth seeds the memory)")
    p.add_argument("--texture-scale", type=float, default=None,
                   help="--synthetic: the scene's texture feature size (default: 3 with a world, what the shipped "
                        "world was trained on; 1 otherwise)")
    p.add_argument("--prompt", default="", help="text prompt (empty: unconditional)")
    p.add_argument("--trajectory", default="pan-and-return",
                   help="pan-and-return | orbit | dolly | a camera file (RE10K, COLMAP, NeRF, WorldScore)")
    p.add_argument("--frames", type=int, default=65, help="33 + 32k")
    p.add_argument("--height", type=int, default=64, help="multiple of 32")
    p.add_argument("--width", type=int, default=96, help="multiple of 32")
    p.add_argument("--memory", choices=["latent", "rgb", "none"],
                   help="spatial memory: latent point cache (default), RGB point cache (the peers' design), or none")
    p.add_argument("--steps", type=int, help="denoising steps per chunk (default: 8; the full model: 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the initial noise (and of --synthetic's scene)")
    p.add_argument("--fps", type=int, help="frame rate of the written video (default 16)")
    p.add_argument("--device", help="torch device: cpu (default), cuda, cuda:1, ..., auto")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="weights dtype: fp32 (a preset in fp32, a --model-dir as stored) or bf16")
    p.add_argument("--first-depth", help="depth of the first frame as .npy (H, W), same units as the cameras")
    p.add_argument("--depth-model", help="local DPT / Depth Anything directory for the first frame's depth")
    p.add_argument("--unobserved-depth", choices=["memory_median", "skip"],
                   help="new frames without a stereo baseline: fill from the memory's depth (default), or write nothing")
    p.add_argument("--preceding", type=int,
                   help="clean latents of the previous chunk as context (default: what the checkpoint was trained with)")
    p.add_argument("--shift", type=float, help="flow-matching timestep shift (default 5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any generation setting (GenerationConfig), e.g. --set writeback_mask_scale=0.5; repeatable")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_generate)
    add_job_parser(sub, "generate-batch", _generate_batch)
    register_cli(sub)
    return parser


def run_inline_config(argv: list[str]) -> int:
    """Cluster side of ``mirage submit`` with a config that travels inline (``$MIRAGE_JOB_CONFIG_B64``):
    ``python -m jobs.cli --inline-config KIND ARGS...`` runs ``mirage KIND --config <file> ARGS...``."""
    from jobs.submit import materialize_inline_config

    if not argv:
        print("usage: python -m jobs.cli --inline-config COMMAND [ARGS...]", file=sys.stderr)
        return 2
    path = materialize_inline_config()
    return main([argv[0], "--config", str(path), *argv[1:]])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--inline-config"]:
        return run_inline_config(argv[1:])
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
