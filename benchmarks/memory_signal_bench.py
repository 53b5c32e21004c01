"""How much does the memory tell a model about its training targets? (docs/method.md §13)

    python -m benchmarks.memory_signal_bench [--vae runs/world/vae] [--clips 16] [--write-docs]

Renders ``--clips`` synthetic clips (49 frames, 128x160, smooth textures) along fast camera paths
-- a one-way pan of 50-100 degrees, an orbit of 40-80 degrees, a 0.8-1.5 m dolly, each from a random
place and heading -- encodes them with the VAE (a local diffusers directory such as the output of
``mirage train-vae``; default the random ``tiny`` one), builds the training samples exactly as
``mirage train`` does (memory from frame t0, read at the target cameras; ``build_training_sample``)
and reports per target latent, in latent SNR against the target (``latent_snr_db``):

* the memory readout, on the cells it covers;
* the clean first latent copied in place (what the model has without any memory);
* the readout against the target frame encoded on its own, as a first frame: the kind of latent the
  generator seeds its memory with (the first frame's), while training seeds it with a clip's
  4-frame latent ``m``; a low figure means the two kinds differ;
* the coverage of the readout.

A memory a model can learn from must beat the copy on the cells it covers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import command_line, machine_line
from benchmarks.reference import Section, publish

ROOT = Path(__file__).resolve().parent.parent
SIZE = (128, 160)
FRAMES = 49


def measure(vae_spec: str, clips: int, seed: int = 0) -> dict:
    from mirage_model.evaluation.memory_ablation import latent_snr_db
    from mirage_model.geometry.trajectory import random_outbound_path
    from mirage_model.io.images import to_uint8
    from mirage_model.synthetic import default_scene, render_trajectory
    from mirage_model.training.samples import SampleConfig, build_training_sample
    from mirage_model.vae import encode_video, load_vae

    vae = load_vae(vae_spec)
    rng = np.random.default_rng(seed)
    cfg = SampleConfig(t0_min=8, t0_max=16, drop_preceding_p=0.0, text_dropout=0.0)
    per_latent: dict[int, dict[str, list]] = {}
    for i in range(clips):
        traj, _ = random_outbound_path(rng, FRAMES, SIZE)
        gt = render_trajectory(default_scene(1000 + i, texture_scale=3.0), traj.K, traj.c2w, SIZE, fps=16.0)
        frames = to_uint8(gt.rgb.numpy())
        video = torch.tensor(frames, dtype=torch.float32).div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        sample = {"__key__": f"clip{i}", "frames": frames, "c2w": traj.c2w.numpy(), "K": traj.K.numpy(),
                  "depth": gt.depth.numpy(), "static": np.ones(gt.depth.shape, bool),
                  "latents": encode_video(vae, video)[0].numpy()}
        s = build_training_sample(sample, cfg)
        for j in range(1, s.target.shape[1]):
            seen = s.cond[-1, j] > 0.5
            rec = per_latent.setdefault(j, {"readout": [], "copy": [], "readout_vs_image": [], "coverage": []})
            rec["coverage"].append(float(seen.float().mean()))
            if bool(seen.any()):
                rec["readout"].append(latent_snr_db(s.cond[:48, j][:, seen], s.target[:, j][:, seen]))
                rec["copy"].append(latent_snr_db(s.target[:, 0][:, seen], s.target[:, j][:, seen]))
                # the target frame encoded on its own: the kind of latent the memory stores (a first frame)
                image = encode_video(vae, video[:, :, s.t0 + 4 * j:s.t0 + 4 * j + 1])[0, :, 0]
                rec["readout_vs_image"].append(latent_snr_db(s.cond[:48, j][:, seen], image[:, seen]))
    rows = {j: {k: float(np.mean(v)) for k, v in rec.items()} for j, rec in sorted(per_latent.items())}
    return {"vae": vae_spec, "clips": clips, "per_latent": rows,
            "readout_mean": float(np.mean([r["readout"] for r in rows.values()])),
            "copy_mean": float(np.mean([r["copy"] for r in rows.values()])),
            "image_mean": float(np.mean([r["readout_vs_image"] for r in rows.values()]))}


def table(results: list[dict]) -> str:
    """The run in Markdown (without the command and machine lines)."""
    lines = ["Training samples built as `mirage train` builds them (memory from frame t0, read at the "
             f"target cameras) from {results[0]['clips']} synthetic clips of {FRAMES} frames at {SIZE[0]}x{SIZE[1]} "
             "along fast one-way paths (pans of 50-100°, orbits of 40-80°, dollies of 0.8-1.5 m). Latent SNR "
             "against the target latent on the cells the readout covers: the readout, and the clean first latent "
             "copied in place (what the model has without memory); and the readout against the target frame "
             "encoded on its own as a first frame (the kind of latent generation seeds its memory with).", "",
             "| VAE | target latent | coverage | readout (dB) | first latent copied (dB) | readout vs the frame's "
             "own first-frame latent (dB) |", "|---|---|---|---|---|---|"]
    for res in results:
        for j, r in res["per_latent"].items():
            lines.append(f"| {res['vae']} | {j} | {r['coverage']:.2f} | {r['readout']:.2f} | {r['copy']:.2f} | "
                         f"{r['readout_vs_image']:.2f} |")
    lines += ["", "Means over target latents: " + "; ".join(
        f"{r['vae']}: readout {r['readout_mean']:.2f} dB, copy {r['copy_mean']:.2f} dB, readout vs the frame's "
        f"own latent {r['image_mean']:.2f} dB" for r in results) + "."]
    return "\n".join(lines)


def vae_name(spec: str) -> str:
    """A VAE's short name, usable in a figure name: a preset's own (``tiny``); for a directory, its
    world's (``runs/world/vae`` -> ``world``) or its own name."""
    path = Path(spec)
    name = path.parent.name if path.name == "vae" and path.parent.name else path.name
    return re.sub(r"\W", "_", name) or "vae"


# ----------------------------------------------------------------------------------------------
# The published section (benchmarks/results/memory-signal.json)
# ----------------------------------------------------------------------------------------------
TITLE = "What the memory tells a model in training (latent SNR)"
READING = ("With the trained VAE the readout's SNR on the cells it covers falls with the distance from the first "
           "view ({world_readout} dB on average) and stays below the clean first latent copied in place "
           "({world_copy} dB): the memory holds first-frame latents, each written frame encoded as an image, "
           "where the targets are 4-frame latents, and a model must learn where the readout is worth more "
           "than its context.")


def figures(results: list[dict]) -> dict:
    """Per VAE (``vae_name``): the readout's and the copied first latent's mean SNR (dB)."""
    out = {}
    for r in results:
        name = vae_name(r["vae"])
        out.update({f"{name}_readout": round(r["readout_mean"], 2), f"{name}_copy": round(r["copy_mean"], 2)})
    return out


def build_section(command: str, machine: str, results: list[dict]) -> Section:
    return Section(key="memory-signal", title=TITLE, order=70, command=command, machine=machine,
                   figures=figures(results), reading=READING).markdown(table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_signal_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", action="append", help="VAE preset or local directory (repeatable; default tiny)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/memory-signal.json (docs/benchmarks.md); its reading is "
                             "about the trained world's VAE: give it (--vae runs/world/vae)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    vaes = args.vae or ["tiny"]
    if args.write_docs and "world" not in {vae_name(v) for v in vaes}:
        parser.error("--write-docs: the section reads the trained world's VAE; add --vae runs/world/vae")
    torch.set_num_threads(2)
    results = [measure(v, args.clips) for v in vaes]
    command = command_line("memory_signal_bench", argv, write_docs=args.write_docs)
    machine = machine_line(torch.device("cpu"))
    print(f"Command: `{command}`  \nMachine: {machine}.\n\n{table(results)}")
    if args.write_docs:
        print(f"\nrecorded in {publish(build_section(command, machine, results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
