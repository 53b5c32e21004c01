"""The embedded default, ``mirage demo``: its wall time per stage and its revisit figures, published.

    python -m benchmarks.demo_bench [--from-run runs/demo] [--write-docs]   # a finished demo's outputs
    python -m benchmarks.demo_bench --run [--write-docs]                    # run `mirage demo` first

Reads what a finished ``mirage demo`` wrote into its directory (``demo.json``, jobs/demo.py: the
config, the per-stage timings, the preprocessing and training summaries, and per memory mode the
revisit PSNR against the ground truth on the way back and the out-vs-back PSNR) and prints the
stage table; ``--write-docs`` publishes the section ``demo`` (benchmarks/results/demo.json, then
docs/benchmarks.md and README's figures). The published machine is the one this script runs on:
run it where the demo ran. What the world scores without the demo's fine-tuning is a separate
measurement (``mirage eval-memory`` on the demo's path); give it with ``--world-latent`` and
``--world-none`` to have it in the reading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._measure import command_line, machine_line
from benchmarks.reference import Section, publish

DEFAULT_RUN = "runs/demo"
MODES = ("latent", "rgb", "none")

TITLE = "The embedded default: mirage demo"
HEADLINE = [{"figure": "`mirage demo` wall time (2 idle cores, after the install)",
             "measured": "{wall} (revisit PSNR latent / rgb / none {latent} / {rgb} / {none} dB)",
             "target": "< 15 min"}]
READING = ("The demo starts from the shipped world (`assets/world`) and fine-tunes it for 100 + 100 steps on its "
           "4 clips. Against the ground truth on the way back the latent memory scores {latent} dB, the RGB "
           "cache {rgb} and no memory {none} (out vs back over 44 pairs: {out_back_latent} / {out_back_rgb} / "
           "{out_back_none} dB){world}. The frames are blurred textures in the scene's colours: a "
           "5 M-parameter VAE and a 1.5 M-parameter transformer trained on 2 CPU cores.")
WORLD = ("; the world alone, without the fine-tuning, scores {world_latent} / {world_none} dB "
         "(latent / none) on the same path")
"""The reading's clause on the world without fine-tuning, when ``--world-latent``/``--world-none`` are given."""


def duration(seconds: float) -> str:
    """4.6 s, 1 min 40.6 s (as the demo's report writes them)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def wall(seconds: float) -> str:
    """3 min 21 s."""
    s = round(seconds)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def stage_table(result: dict[str, Any]) -> str:
    """The demo's stages and their wall times, from its ``demo.json``."""
    cfg, pre, tr, gen = result["config"], result["preprocess"], result["train"], result["generate"]
    t: dict[str, float] = {}
    for row in result["timings"]:
        t[row["key"]] = t.get(row["key"], 0.0) + row["seconds"]
    h, w = cfg["video_size"]
    world = result.get("world") or {}
    steps = cfg["steps_per_stage"]
    modes = list(gen["modes"])
    rows = [
        (f"synthesise {cfg['n_videos']} {'out-and-back ' if cfg['revisit'] else ''}videos ({cfg['video_frames']} "
         f"frames, {h}x{w}, {cfg['camera_paths']} paths)", duration(t["synthesise"])),
        (f"preprocess with Ray Data ({'camera files' if cfg['poses'] == 'file' else 'SfM poses'}, plane-sweep depth, "
         f"flow masks, {'the world VAE' if world.get('vae') else 'the tiny VAE'}'s latents; "
         f"{pre['status'].get('ok', 0)}/{pre['inputs']} ok)", duration(t["preprocess"])),
        (f"train `{cfg['preset']}` on Ray Train {'from the world' if world.get('init') else 'from random weights'}, "
         f"{tr['workers']} workers, {steps} branch + {steps} LoRA steps", duration(t["train"])),
        ("render the ground truth, load the trained model", duration(t.get("reference", 0.0) + t.get("load_model", 0.0))),
        (f"generate {gen['frames']} frames, {' / '.join(modes)} ({gen['settings']['steps']} steps)",
         " / ".join(duration(t[f"generate_{m}"]) for m in modes)),
        ("report + MLflow", duration(t["report"])),
        ("**total**", f"**{wall(result['total_s'])}** in the job (run of {result['started_at'][:10]}; target < "
                      f"{cfg['budget_s'] / 60:.0f} min)"),
    ]
    return "\n".join(["| stage | wall time |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def figures(result: dict[str, Any], world_latent: float | None = None, world_none: float | None = None) -> dict:
    """Wall time; per mode the revisit PSNR against the ground truth (``latent``) and out vs back
    (``out_back_latent``); the world without fine-tuning when given."""
    modes = result["generate"]["modes"]
    out: dict[str, Any] = {"wall": wall(result["total_s"])}
    out.update({m: round(modes[m]["revisit_psnr_gt"], 2) for m in MODES})
    out.update({f"out_back_{m}": round(modes[m]["revisit_consistency_psnr"], 2) for m in MODES})
    if world_latent is not None and world_none is not None:
        out.update(world_latent=round(world_latent, 2), world_none=round(world_none, 2))
    return out


def build_section(command: str, machine: str, result: dict[str, Any], world_latent: float | None = None,
                  world_none: float | None = None) -> Section:
    figs = figures(result, world_latent, world_none)
    reading = READING.replace("{world}", WORLD if "world_latent" in figs else "")
    return Section(key="demo", title=TITLE, order=40, command=command, machine=machine,
                   date=result["started_at"][:10], figures=figs, headline=[dict(h) for h in HEADLINE],
                   reading=reading).markdown(stage_table(result))


def machine(result: dict[str, Any]) -> str:
    import torch

    settings = result["generate"]["modes"][next(iter(result["generate"]["modes"]))].get("settings") or {}
    device = torch.device(str(settings.get("device", "cpu")))
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"a CUDA GPU, torch {torch.__version__}"
    return machine_line(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-run", default=DEFAULT_RUN, help="the demo's output directory (its --set out=)")
    parser.add_argument("--run", action="store_true", help="run `mirage demo` into --from-run first")
    parser.add_argument("--world-latent", type=float, help="revisit PSNR of the world without fine-tuning, latent")
    parser.add_argument("--world-none", type=float, help="the same without memory")
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/demo.json (docs/benchmarks.md, README's figures)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if (args.world_latent is None) != (args.world_none is None):
        parser.error("--world-latent and --world-none go together")
    out = Path(args.from_run)
    demo = ["demo"] + ([] if args.from_run == DEFAULT_RUN else ["--set", f"out={args.from_run}"])
    if args.run:
        from jobs.cli import main as mirage

        if mirage(demo) != 0:
            return 1
    path = out / "demo.json"
    if not path.is_file():
        parser.error(f"{path}: no finished demo there (run `mirage {' '.join(demo)}`, or pass --run)")
    result = json.loads(path.read_text())
    if result.get("status") != "finished":
        parser.error(f"{path}: the demo did not finish ({result.get('status')})")
    missing = [m for m in MODES if m not in result["generate"]["modes"]]
    if args.write_docs and missing:
        parser.error(f"{path}: the section compares latent, rgb and none; the demo ran without {missing}")
    # the measurement is the demo itself; with --run, this script ran it
    command = command_line("demo_bench", argv, write_docs=args.write_docs) if args.run else f"mirage {' '.join(demo)}"
    where = machine(result)
    print(f"Command: `{command}`  \nMachine: {where}.\n\n{stage_table(result)}")
    if args.write_docs:
        section = build_section(command, where, result, args.world_latent, args.world_none)
        print(f"\nrecorded in {publish(section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
