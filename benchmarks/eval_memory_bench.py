"""The memory ablation (docs/method.md §12), published as a section of docs/benchmarks.md.

    python -m benchmarks.eval_memory_bench --config configs/eval_memory/copy_readout.yaml \\
        --set model.vae=runs/world/vae --set height=128 --set width=160 --set texture_scale=3.0 --write-docs
    python -m benchmarks.eval_memory_bench --config configs/eval_memory/default.yaml \\
        --set model.checkpoint=assets/world/model --set model.vae=assets/world/vae \\
        --set modes=[latent,rgb,none] --write-docs

Runs ``mirage eval-memory`` with the given config and overrides and prints its Markdown report:
fidelity to the ground truth on revisit frames (pixels and latents), self-consistency, coverage,
the seconds of the memory operations against a chunk without memory, cache bytes. ``--write-docs``
publishes it as the section ``--key`` names: ``ablation-copy`` (the copy-readout model, the
default for a config with ``copy_readout``) or ``ablation-world`` (a trained world, the default
otherwise); both need the modes latent, rgb and none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks._measure import command_line, machine_line, sig
from benchmarks.reference import Section, publish

ROOT = Path(__file__).resolve().parent.parent

SECTIONS: dict[str, dict[str, Any]] = {
    "ablation-copy": dict(
        order=60, title="Memory ablation, copy-readout model (wiring check)",
        figures=("latent", "rgb", "none", "gain", "coverage", "ceiling", "rgb_over_latent", "fraction", "ceiling_gap"),
        headline=[
            {"figure": "memory ablation, copy-readout model: revisit PSNR latent / rgb / none",
             "measured": "{latent} / {rgb} / {none} dB (latent - none +{gain:.1f} dB; the VAE's ceiling allows "
                         "+{ceiling_gap})",
             "target": "latent - none >= 6 dB (missed)"},
            {"figure": "memory coverage of revisited views (that ablation)", "measured": "{coverage}",
             "target": ">= 0.9"}],
        reading=(
            "The copy-readout model decodes the memory's readout where it covers a cell and the random tiny "
            "model's output elsewhere: latent {latent} dB against none {none} dB on revisits, with {coverage} of "
            "the revisited cells covered. It checks the memory loop's wiring; it is not a ceiling on the use of "
            "the memory. Run with the world's sampling steps, it scores the same with the shipped world filling "
            "the holes, and below the world itself, whose estimate on the covered cells beats copying them "
            "(docs/notes/2026-12-07-a-sample-per-view.md; with 4 steps it scored 0.9 dB more). The "
            "VAE (`model.vae`) reconstructs these renders at {ceiling} dB, the ceiling of every pixel figure "
            "here; the RGB cache's memory operations take {rgb_over_latent}x the latent memory's time.")),
    "ablation-world": dict(
        order=61, title="Memory ablation, the shipped world (assets/world)",
        figures=("latent", "rgb", "none", "gain", "out_back_latent", "out_back_none", "fraction", "rgb_over_latent",
                 "ceiling"),
        headline=[
            {"figure": "learned memory effect in pixels: the shipped world, held-out ablation (revisit PSNR "
                       "latent / rgb / none)",
             "measured": "{latent} / {rgb} / {none} dB (latent - none +{gain} dB, positive on all 6 items); memory "
                         "ops {fraction} % of a chunk, {rgb_over_latent}x faster than rgb's",
             "target": "latent - none >= 6 dB (missed); latent within 1 dB of rgb (met) at >= 10x less time "
                       "(missed)"}],
        reading=(
            "The world (`make world`: the `small` preset trained from scratch on 53 out-and-back clips for "
            "4,000 steps through the shipped VAE) generates 2 held-out scenes along 3 closed paths. With its "
            "latent memory it comes back to the ground truth {gain} dB closer than without memory, on every "
            "item, and {latent} against {rgb} dB for the RGB cache at {rgb_over_latent}x less memory-operation "
            "time. A perfect world could gain at most {ceiling} dB - {none} dB: the VAE's reconstruction of "
            "these renders is the ceiling. The RGB cache is better on the dollies (moving closer, a "
            "pixel-resolution render beats one point per latent cell) and worse on pans and orbits.")),
}
"""Per section: order, title, the figure names it publishes, headline rows and reading (format
strings over the figures)."""


def all_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """Every named figure of an eval-memory summary (``run_eval_memory``'s): revisit PSNR per mode,
    latent - none, coverage of the latent memory's revisits, out-vs-back PSNR per mode, the memory
    operations' share of a chunk without memory (%), rgb / latent memory seconds, and the VAE's
    reconstruction PSNR of the ground truth (the ceiling) and its gap to no memory."""
    m = summary["modes"]
    ceiling = summary["vae_psnr"]
    return {
        **{mode: round(v["psnr_gt_revisit"], 2) for mode, v in m.items() if mode in ("latent", "rgb", "none")},
        "gain": round(summary["latent_minus_none_psnr_revisit"], 2),
        "coverage": round(m["latent"]["coverage_revisit"], 2),
        **{f"out_back_{mode}": round(v["revisit_consistency_psnr"], 2) for mode, v in m.items()
           if mode in ("latent", "rgb", "none")},
        "fraction": round(100 * summary["memory_fraction_of_plain_chunk"], 1),
        "rgb_over_latent": sig(summary["rgb_over_latent_memory_seconds"]),
        "ceiling": round(ceiling, 2),
        "ceiling_gap": round(ceiling - m["none"]["psnr_gt_revisit"], 2),
    }


def report_body(markdown: str) -> str:
    """The eval-memory report with its ``- key: value`` list as a two-column table."""
    out = []
    for para in markdown.strip().split("\n\n"):
        lines = para.strip().splitlines()
        if lines and all(ln.startswith("- ") and ": " in ln for ln in lines):
            rows = [ln[2:].split(": ", 1) for ln in lines]
            out.append("| figure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
        else:
            out.append(para.strip())
    return "\n\n".join(out)


def build_section(key: str, command: str, machine: str, summary: dict[str, Any], markdown: str) -> Section:
    spec = SECTIONS[key]
    figs = all_figures(summary)
    return Section(key=key, title=spec["title"], order=spec["order"], command=command, machine=machine,
                   figures={k: figs[k] for k in spec["figures"]}, headline=[dict(h) for h in spec["headline"]],
                   reading=spec["reading"]).markdown(report_body(markdown))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_memory_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "eval_memory" / "copy_readout.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--key", choices=sorted(SECTIONS),
                        help="the section published (default: ablation-copy for a copy_readout config, "
                             "ablation-world otherwise)")
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/<key>.json (docs/benchmarks.md, README's figures)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    import torch

    from jobs.config import EvalMemoryConfig
    from jobs.eval_memory import run_eval_memory
    from jobs.generate_batch import resolve_device
    from mirage_model.config import load_config

    cfg = load_config(EvalMemoryConfig, args.config, {}, args.overrides)
    key = args.key or ("ablation-copy" if cfg.copy_readout else "ablation-world")
    if args.write_docs and not {"latent", "rgb", "none"} <= set(cfg.modes):
        parser.error(f"--write-docs ({key}) compares the modes latent, rgb and none; the config runs {cfg.modes}")
    summary = run_eval_memory(cfg)
    markdown = Path(summary["markdown"]).read_text()
    command = command_line("eval_memory_bench", argv, write_docs=args.write_docs)
    machine = f"{machine_line(torch.device(resolve_device(cfg.generation.device)))}; wall time {summary['wall_s']:.0f} s"
    print(f"Command: `{command}`  \nMachine: {machine}.\n\n{markdown.rstrip()}")
    if args.write_docs:
        print(f"\nrecorded in {publish(build_section(key, command, machine, summary, markdown))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
