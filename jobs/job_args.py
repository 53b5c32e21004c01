"""The command lines of the config jobs (``mirage preprocess|train|...``): one parser shape for all of
them, and the job's config as the job itself loads it. Used by ``jobs.cli`` and by ``mirage submit``
(which reads a job's paths before sending it)."""

from __future__ import annotations

import argparse

# ----------------------------------------------------------------------------------------------
# The jobs: one config model each (jobs.config.JOB_CONFIGS), loaded the same way for all of them
# ----------------------------------------------------------------------------------------------
JOBS: dict[str, tuple[str, str, list[tuple[str, str, type, str]]]] = {
    # command: (help, where the example configs are, [(flag, config key it sets, type, help)])
    "demo": ("end to end in minutes on 2 CPUs: synthetic videos -> Ray Data shards -> Ray Train -> "
             "generation (latent/rgb/none memory) -> HTML report + MLflow", "configs/demo/",
             [("--out", "out", str, "output directory (report.html, videos, shards, mlflow.db)"),
              ("--steps-per-stage", "steps_per_stage", int, "training steps per stage")]),
    "preprocess": ("raw videos -> poses, depth, masks, latents -> WebDataset shards (Ray Data)",
                   "configs/preprocess/",
                   [("--source", "source", str, "videos: directory, glob, manifest or s3:// prefix"),
                    ("--output", "output", str, "output directory or s3:// prefix")]),
    "train": ("two-stage fine-tuning (branch, LoRA) on Ray Train from shards, tracked in MLflow", "configs/train/",
              [("--shards", "data.shards", str, "shard directory / s3:// prefix"),
               ("--name", "name", str, "run name; a run with this name in storage_path is resumed"),
               ("--storage-path", "storage_path", str, "checkpoint storage: directory or s3:// prefix"),
               ("--workers", "scaling.num_workers", int, "Ray Train workers")]),
    "train-vae": ("train a Wan2.2-family VAE (reduced widths) on videos; saves a diffusers vae/ folder",
                  "configs/train_vae/",
                  [("--videos", "videos", str, "training videos: directory, glob, manifest or s3:// prefix"),
                   ("--output", "output", str, "local output directory (vae/, preview PNG, summary)"),
                   ("--steps", "train.steps", int, "optimizer steps on clips (the last phase)")]),
    "eval-memory": ("the memory ablation (latent / rgb / none / unfiltered) on held-out synthetic scenes "
                    "along closed paths: fidelity to the ground truth, consistency, memory cost (Ray Data)",
                    "configs/eval_memory/",
                    [("--output", "output", str, "local output directory (eval_memory.json / .md)"),
                     ("--checkpoint", "model.checkpoint", str, "a `mirage train` run or checkpoint directory (local or s3://), an export, or a world's model/")]),
    "eval": ("generate from each test clip's first frame along its real cameras and score against its real frames "
             "(RealEstate10K-format test sets, local or s3://; open and closed-loop variants; Ray Data)",
             "configs/eval/",
             [("--data", "data", str, "test set directory or s3:// prefix (<clip>.txt + <clip>/ frames)"),
              ("--output", "output", str, "local output directory (eval.json / .md)"),
              ("--checkpoint", "model.checkpoint", str, "a `mirage train` run or checkpoint directory (local or s3://), an export, or a world's model/"),
              ("--model-dir", "model.model_dir", str, "a local Wan2.2-TI2V-5B-Diffusers directory")]),
    "generate-batch": ("generate videos for a prompt set on Ray Data (+ metrics, manifest, MLflow)",
                       "configs/generate_batch/",
                       [("--prompts", "prompts", str, "prompt set .jsonl/.csv, local or s3://"),
                        ("--output", "output", str, "output directory or s3:// prefix")]),
}
"""The jobs' command lines. Every job takes --config / --set / --print-config / --address; its short
flags are shortcuts for ``--set KEY=VALUE`` of the keys named here."""

_SHORTCUT = "shortcut:"  # argparse dest prefix of the short flags: "shortcut:data.shards"


def add_job_parser(sub: argparse._SubParsersAction, job: str, func) -> argparse.ArgumentParser:
    help_text, examples, flags = JOBS[job]
    p = sub.add_parser(job, help=help_text)
    p.add_argument("--config", help=f"YAML config (examples: {examples})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key: dotted path, YAML value (e.g. --set stages.0.lr=1e-4); repeatable")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--address", dest=_SHORTCUT + "ray_address", metavar="ADDRESS",
                   help="Ray address (sets ray_address; default: start a local Ray on 127.0.0.1)")
    for flag, key, type_, text in flags:
        p.add_argument(flag, dest=_SHORTCUT + key, metavar=flag.lstrip("-").upper().replace("-", "_"), type=type_,
                       help=f"{text} (sets {key})")
    p.set_defaults(func=func)
    return p


def job_config(args: argparse.Namespace, default_path=None):
    """The job's validated config: YAML file (``--config`` or ``default_path``), then the short
    flags, then ``--set`` overrides, in that order."""
    from jobs.config import JOB_CONFIGS
    from mirage_model.config import load_config

    shortcuts = {dest[len(_SHORTCUT):]: v for dest, v in vars(args).items() if dest.startswith(_SHORTCUT)}
    return load_config(JOB_CONFIGS[args.command], args.config or default_path, shortcuts, args.overrides)
