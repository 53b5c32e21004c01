"""The CPU world's VAE: reconstruction quality of ``mirage train-vae`` on held-out renders.

    python -m benchmarks.vae_bench [--out runs/world] [--steps N] [--write-docs]
    python -m benchmarks.vae_bench --from-summary runs/world/vae_summary.json --write-docs

Runs the documented recipe with the project's own commands: ``mirage synth-data`` (64 smooth-
textured scenes, 40 frames at 128x160) then ``mirage train-vae --config
configs/train_vae/default.yaml``; reports PSNR on the training clips and on the two held-out
videos against the target (25 dB), with the training curve. ``--from-summary`` formats a run
that already happened with these commands (its summary holds the config it ran with).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from benchmarks._measure import write_docs_section

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SYNTH = ["--n", "64", "--frames", "40", "--height", "128", "--width", "160", "--texture-scale", "3", "--seed", "0"]


def run(out: Path, steps: int | None) -> dict:
    from jobs.cli import main as mirage

    videos = out / "videos"
    mirage(["synth-data", "--out", str(videos), *SYNTH])
    argv = ["train-vae", "--config", str(ROOT / "configs" / "train_vae" / "default.yaml"), "--videos", str(videos),
            "--output", str(out), "--set", f"mlflow.tracking_uri=sqlite:///{(out / 'mlflow.db').resolve()}"]
    if steps is not None:
        argv += ["--steps", str(steps)]
    mirage(argv)
    return json.loads((out / "vae_summary.json").read_text())


def _phase(t: dict, what: str) -> str:
    size = "whole frames" if t["crop"] is None else f"random {t['crop'][0]}x{t['crop'][1]} crops"
    return f"{t['steps']} steps of {t['batch_size']} {what} ({size}, lr {t['lr']:g})"


def table(summary: dict) -> str:
    cfg = summary["config"]
    w, t, img = cfg["widths"], cfg["train"], cfg.get("image_train")
    rows = summary["history"]
    rows = rows[::max(1, len(rows) // 10)] + ([rows[-1]] if (len(rows) - 1) % max(1, len(rows) // 10) else [])
    curve = ", ".join(f"{r['step']}: {r['psnr']:.1f}" for r in rows)
    default = yaml.safe_load((ROOT / "configs" / "train_vae" / "default.yaml").read_text())
    steps = "" if t["steps"] == default["train"]["steps"] else f" --steps {t['steps']}"
    recipe = ([_phase(img, "single frames")] if img else []) + [_phase(t, f"{cfg['clip_frames']}-frame clips")]
    return "\n".join([
        "## The CPU world's VAE (issue 12)", "",
        f"Command: `mirage synth-data --out runs/world/videos {' '.join(SYNTH)}` then `mirage train-vae --config "
        f"configs/train_vae/default.yaml --videos runs/world/videos --output runs/world{steps}` "
        "(`python -m benchmarks.vae_bench` runs both; 2-core CPU machine).", "",
        f"AutoencoderKLWan with the Wan2.2 structure (48 channels, 16x spatial, 4x temporal), widths "
        f"{w['base_dim']}/{w['decoder_base_dim']}, {summary['parameters'] / 1e6:.1f} M parameters; "
        f"{', then '.join(recipe)}.", "",
        "| training clips | PSNR, training clips | PSNR, held-out videos (17 frames, 128x160) | target | train time |",
        "|---|---|---|---|---|",
        f"| {summary['train_clips']} of {summary['train_videos']} videos | {summary['train_psnr_db']:.2f} dB | "
        f"{summary['held_out_psnr_db']:.2f} dB | {summary['target_psnr_db']:.0f} dB: "
        f"{'met' if summary['target_met'] else 'not met'} | {summary['train_seconds']:.0f} s |", "",
        f"Batch PSNR (dB) along training, step: value: {curve}.",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vae_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/world"))
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--from-summary", type=Path, help="format an existing run's vae_summary.json")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    summary = json.loads(args.from_summary.read_text()) if args.from_summary else run(args.out, args.steps)
    body = table(summary)
    print(body)
    if args.write_docs:
        write_docs_section(DOCS, "vae:cpu", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
