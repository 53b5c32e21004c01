"""Does a model trained from scratch learn to use its memory? (docs/method.md §13)

    python -m benchmarks.memory_learning_bench --vae runs/world/vae [--clips 32 --held-out 8 --steps 1500]
        [--write-docs]
    python -m benchmarks.memory_learning_bench --vae patch --preset tiny --clips 16 --held-out 4 \
        --steps 2000 --lr 2e-3      # VAE-free, about 90 s
    python -m benchmarks.memory_learning_bench --vae assets/world/vae --preset small --clips 16 \
        --held-out 4 --steps 1000 --lr 1e-3 --control   # the shipped VAE: what tests/test_memory_learning.py runs

The world: synthetic rooms with smooth textures along closed paths -- one of the fast one-way paths
of ``memory_signal_bench`` for 25 frames, then the same cameras back (49 frames, 13 latents),
rendered with their true depth and encoded by the VAE.

The samples ask for a revisit: the target is latents ``m .. m + 4`` on the way back (``m`` = 7 or
8, pixel frames 28 / 32 on; latent 0 clean), the two latents before it are the clean context, and
the memory holds what neither shows -- the outbound latents ``0 .. m - 3`` back-projected with
their true depth, read at the target and context cameras: ``mirage train``'s samples with
``SampleConfig(memory_from="history")`` (``build_training_sample``). Without
the memory the way back can only be guessed from the context.

The model: the ``small`` preset with every weight trained from scratch (``StageConfig(name="full")``),
flow matching with the memory conditioning zeroed for 20 % of the samples (so the same model
also generates without memory).

The figures: on held-out clips, latent SNR (``latent_snr_db``) of the clean estimate
``x_t - sigma * v`` against the target latents 1-4, and the flow-matching error (mean squared
error of ``v`` against ``noise - x0``, the training loss) on them, at sigma = 1 (pure noise) and
0.5, with the memory, with it zeroed, and with the memory read at the wrong cameras (each target
latent reads at the camera two latents earlier, a broken readout). A model that uses its memory
scores better with it than without, and loses that gain when the readout is broken.

``--vae patch`` needs no VAE: each latent is the 4x4-block mean colours of the frame at its
camera (``patch_latents``; 16x16 pixels -> 4 x 4 x 3 = 48 channels, unit-scale), so a latent read
back from the memory at the camera that wrote it is exact up to the nearest-cell warp -- the
world in which a tiny model learns, within 2,000 steps, to take the way back from its memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import command_line, machine_line
from benchmarks.memory_signal_bench import FRAMES, SIZE, vae_name
from benchmarks.reference import Section, publish

ROOT = Path(__file__).resolve().parent.parent
OUT_FRAMES = 25
TARGET, PRECEDING = 5, 2
STARTS = (7, 8)


PATCH_SCALE = 4.5
"""Block means of [-1, 1] colours have a standard deviation of about 0.22 on these rooms: this
brings ``patch_latents`` to about unit scale, as the Wan VAE's normalised latents."""


def patch_latents(frames: np.ndarray, scale: float = PATCH_SCALE) -> torch.Tensor:
    """VAE-free latents (48, 1 + (N - 1) / 4, H / 16, W / 16) of uint8 frames (N, H, W, 3): latent
    k is the 4x4-block mean colours of frame 4k (the frame at its camera), 16x16 pixels per cell."""
    x = torch.from_numpy(np.ascontiguousarray(frames[::4])).float().div(127.5).sub(1)  # (L, H, W, 3)
    L, H, W, _ = x.shape
    x = x.view(L, H // 16, 4, 4, W // 16, 4, 4, 3).mean(dim=(3, 6))  # (L, h, 4, w, 4, 3)
    return (x.permute(2, 4, 5, 0, 1, 3).reshape(48, L, H // 16, W // 16) * scale).contiguous()


def closed_clip(i: int, vae, rng: np.random.Generator) -> dict:
    """One rendered closed path as a decoded shard sample (``build_training_sample``'s input), with
    its latents (from ``vae``, or ``patch_latents`` when it is None) and true depth on every frame."""
    from mirage_model.geometry.trajectory import Trajectory, random_outbound_path, there_and_back
    from mirage_model.io.images import to_uint8
    from mirage_model.synthetic import default_scene, render_trajectory
    from mirage_model.vae import encode_video

    out, _ = random_outbound_path(rng, FRAMES, SIZE)
    traj = there_and_back(Trajectory(out.c2w[:OUT_FRAMES], out.K[:OUT_FRAMES], SIZE))
    gt = render_trajectory(default_scene(2000 + i, texture_scale=3.0), traj.K, traj.c2w, SIZE, fps=16.0)
    frames = to_uint8(gt.rgb.numpy())
    if vae is None:
        latents = patch_latents(frames)
    else:
        video = torch.tensor(frames, dtype=torch.float32).div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        with torch.no_grad():
            latents = encode_video(vae, video)[0].float()
    return {"__key__": f"path{i}", "frames": frames, "c2w": traj.c2w.numpy(), "K": traj.K.numpy(),
            "depth": gt.depth.numpy(), "static": np.ones(gt.depth.shape, bool), "latents": latents.numpy()}


def revisit_sample(clip: dict, m: int, shift_cameras: int = 0) -> dict:
    """The ``mirage train`` sample with ``memory_from="history"``: target latents m..m+4, context
    m-2..m-1, memory = the outbound latents 0..m-3. ``shift_cameras`` > 0 breaks the readout: the
    context and target frames take the cameras of the frames that many latents earlier (the memory,
    written at the history's own cameras, is then read at the wrong ones)."""
    from mirage_model.training.samples import SampleConfig, build_training_sample

    if shift_cameras:
        c2w = clip["c2w"].copy()
        first = 4 * (m - PRECEDING)
        c2w[first:] = clip["c2w"][first - 4 * shift_cameras:len(c2w) - 4 * shift_cameras]
        clip = dict(clip, c2w=c2w)
    cfg = SampleConfig(target_latents=TARGET, preceding=PRECEDING, t0_min=4 * m, t0_max=4 * m, drop_preceding_p=0.0,
                       text_dropout=0.0, drop_references_p=0.0, memory_from="history")
    s = build_training_sample(clip, cfg)
    return {"target": s.target, "context": s.context, "cond": s.cond, "context_cond": s.context_cond}


def _forward(model, x0, context, cond, context_cond, text, sigma: float, noise):
    """(the clean estimate of target latents 1.., the flow-matching error of v on them) at one
    noise level."""
    from mirage_model.model.loss import append_clean_context

    B, _, T, h, w = x0.shape
    p_t, p_h, p_w = model.config.patch_size
    x = (1 - sigma) * x0 + sigma * noise
    x[:, :, 0] = x0[:, :, 0]
    t_frame = torch.full((B, T), 1000.0 * sigma)
    t_frame[:, 0] = 0.0
    timestep = t_frame.repeat_interleave((h // p_h) * (w // p_w), dim=1)
    xi, ti, ci = append_clean_context(x, timestep, cond, context, context_cond, (p_t, p_h, p_w))
    v = model(xi, ti, text, ci)[:, :, :T]
    v_error = float(((v - (noise - x0))[:, :, 1:] ** 2).mean())
    return (x - sigma * v)[:, :, 1:], v_error


@torch.no_grad()
def evaluate(model, samples: list[dict], text, seed: int = 0) -> dict:
    from mirage_model.evaluation.memory_ablation import latent_snr_db

    model.eval()
    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(seed)
    for sigma in (1.0, 0.5):
        scores: dict[str, list] = {"memory": [], "zeroed": [], "broken": []}
        errors: dict[str, list] = {k: [] for k in scores}
        for s in samples:
            x0 = s["target"][None]
            noise = torch.randn(x0.shape, generator=g)
            for name, cond, ccond in (("memory", s["cond"], s["context_cond"]),
                                      ("zeroed", torch.zeros_like(s["cond"]), torch.zeros_like(s["context_cond"])),
                                      ("broken", s["broken_cond"], s["broken_context_cond"])):
                est, v_error = _forward(model, x0, s["context"][None], cond[None], ccond[None], text, sigma, noise)
                scores[name].append(latent_snr_db(est[0], x0[0, :, 1:]))
                errors[name].append(v_error)
        for name, vals in scores.items():
            out[f"{name}_sigma{sigma:g}"] = float(np.mean(vals))
            out[f"{name}_mse_sigma{sigma:g}"] = float(np.mean(errors[name]))
    out["coverage"] = float(np.mean([float(s["cond"][-1, 1:].mean()) for s in samples]))
    # the ceiling: the readout itself as the estimate (a model that copies its memory exactly)
    out["readout"] = float(np.mean([latent_snr_db(s["cond"][:-1, 1:], s["target"][:, 1:]) for s in samples]))
    model.train()
    return out


def run(vae_spec: str, clips: int, held_out: int, steps: int, lr: float, batch: int, drop_memory: float,
        seed: int = 0, preset: str = "small", wrong_cameras: int = 0) -> dict:
    """Render, train ``preset`` from scratch on revisit samples, evaluate held-out paths before and
    after. ``vae_spec``: a VAE directory / preset, or ``"patch"`` (``patch_latents``, no VAE).
    ``wrong_cameras`` > 0 wires the readout to the wrong cameras everywhere, in training and in the
    held-out samples (each latent reads at the camera that many latents earlier; the "broken"
    evaluation then reads that many plus two): what every figure looks like when the sample
    builder's cameras are off."""
    from mirage_model.generation import MirageGenerator
    from mirage_model.model.text import encode_prompt
    from mirage_model.training.trainer import OptimConfig, StageConfig, clip_and_step, start_stage
    from mirage_model.vae import load_vae

    torch.manual_seed(seed)
    t_start = time.perf_counter()
    vae = None if vae_spec == "patch" else load_vae(vae_spec)
    rng = np.random.default_rng(seed)
    world = [closed_clip(i, vae, rng) for i in range(clips + held_out)]
    train = [revisit_sample(c, m, shift_cameras=wrong_cameras) for c in world[:clips] for m in STARTS]
    held = []
    for c in world[clips:]:
        for m in STARTS:
            s = revisit_sample(c, m, shift_cameras=wrong_cameras)
            broken = revisit_sample(c, m, shift_cameras=wrong_cameras + 2)
            s["broken_cond"], s["broken_context_cond"] = broken["cond"], broken["context_cond"]
            held.append(s)
    data_s = time.perf_counter() - t_start

    gen = MirageGenerator.from_preset(preset, seed=seed, lazy_vae=True)
    model = gen.transformer
    text1 = encode_prompt(gen.tokenizer, gen.text_encoder, [""], 64).float()
    params, optimizer, scheduler = start_stage(model, StageConfig(name="full", steps=steps, lr=lr, warmup_steps=50),
                                               OptimConfig())
    before = evaluate(model, held, text1)
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    history = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(train), (batch,), generator=g).tolist()
        keep = (torch.rand(batch, generator=g) >= drop_memory).float()[:, None, None, None, None]
        x0 = torch.stack([train[i]["target"] for i in idx])
        context = torch.stack([train[i]["context"] for i in idx])
        cond = torch.stack([train[i]["cond"] for i in idx]) * keep
        ccond = torch.stack([train[i]["context_cond"] for i in idx]) * keep
        from mirage_model.model.loss import flow_matching_loss

        loss = flow_matching_loss(model, x0, text1.expand(batch, -1, -1), cond, generator=g, text_dropout=0.0,
                                  context=context, context_cond=ccond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(params, optimizer, scheduler, 1.0)
        if step % 250 == 0 or step == steps - 1:
            history.append({"step": step, "loss": loss.item()})
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    train_s = time.perf_counter() - t0
    after = evaluate(model, held, text1)
    return {"vae": vae_spec, "preset": preset, "wrong_cameras": wrong_cameras, "clips": clips, "held_out": held_out,
            "steps": steps, "lr": lr, "batch": batch,
            "drop_memory": drop_memory, "before": before, "after": after, "history": history,
            "data_seconds": data_s, "train_seconds": train_s}


def table(r: dict) -> str:
    """The run in Markdown (without the command and machine lines)."""
    a, b = r["after"], r["before"]
    lines = [f"The `{r.get('preset', 'small')}` preset trained from scratch (every "
             f"weight) for {r['steps']} steps (batch {r['batch']}, lr {r['lr']:g}, memory dropout {r['drop_memory']:g}) on revisit samples "
             f"from {r['clips']} closed paths; {r['held_out']} held-out paths (2 samples each). Latent SNR of the "
             "clean estimate against the target latents 1-4 (dB, higher is better) and the flow-matching error "
             "on them (lower is better); the memory covers "
             f"{a['coverage']:.0%} of their cells, and the readout itself (a model copying it exactly) scores "
             f"{a['readout']:.2f} dB.", "",
             "| | sigma = 1: memory | zeroed | broken readout | sigma = 0.5: memory | zeroed | broken readout |",
             "|---|---|---|---|---|---|---|"]
    for name, v in (("before training", b), ("after training", a)):
        lines.append(f"| {name} | " + " | ".join(f"{v[f'{k}_sigma{s:g}']:.2f}" for s in (1.0, 0.5)
                                                  for k in ("memory", "zeroed", "broken")) + " |")
    for name, v in (("flow-matching error before", b), ("flow-matching error after", a)):
        lines.append(f"| {name} | " + " | ".join(f"{v[f'{k}_mse_sigma{s:g}']:.3f}" for s in (1.0, 0.5)
                                                  for k in ("memory", "zeroed", "broken")) + " |")
    lines += ["", "Gain of the memory after training: "
              f"{a['memory_sigma1'] - a['zeroed_sigma1']:+.2f} dB at sigma = 1, "
              f"{a['memory_sigma0.5'] - a['zeroed_sigma0.5']:+.2f} dB at sigma = 0.5; with the broken readout "
              f"{a['broken_sigma1'] - a['zeroed_sigma1']:+.2f} / {a['broken_sigma0.5'] - a['zeroed_sigma0.5']:+.2f} dB."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The published sections: benchmarks/results/memory-learning.json (--vae patch),
# memory-learning-world.json (the shipped VAE with --control: the CI test's world),
# memory-learning-<vae>.json for another VAE (no headline)
# ----------------------------------------------------------------------------------------------
TITLE = "A model learns to use its memory: VAE-free latents"
HEADLINE = [{"figure": "learned memory effect, tiny preset trained 2,000 steps on revisits, VAE-free latents",
             "measured": "flow-matching error {below_zeroed} % below memory zeroed, {below_broken} % below a readout "
                         "at the wrong cameras",
             "target": "> 8 %"}]
READING = ("Without a VAE in the way (the latent at a camera is the block-mean colours of the frame there), the "
           "tiny preset learns within 2,000 steps to take the way back from its memory: the flow-matching "
           "error on held-out revisits is {below_zeroed} % lower with the memory than with it zeroed and "
           "{below_broken} % lower than with the readout taken at the cameras two latents earlier (averaged "
           "over sigma = 1 and 0.5). When the readout is at the wrong cameras in training too, the model gains "
           "nothing: the effect needs the right cameras end to end. The CI test runs the same layout through the "
           "shipped world's VAE (the section below).")
OTHER_READING = ("With the latents of the VAE `{vae}`, the flow-matching error on held-out revisits after training "
                 "is {{below_zeroed}} % lower with the memory than with it zeroed and {{below_broken}} % lower than "
                 "with the readout taken at the cameras two latents earlier (averaged over sigma = 1 and 0.5).")
WORLD_VAE = "assets/world/vae"
"""The shipped world's VAE: the latents of the CI test through a VAE (``tests/test_memory_learning.py``)."""
WORLD_HEADLINE = [{"figure": "learned memory effect through the world's VAE, small preset trained 1,000 steps on "
                             "revisits: clean estimate at sigma = 1 against copying the readout",
                   "measured": "{over_copy_sigma1:+.2f} dB", "target": ">= +0.5 dB (CI test)"}]
WORLD_READING = (
    "Through the shipped world's VAE, the small preset trained from scratch for 1,000 steps estimates the way back "
    "at sigma = 1 (pure noise) {over_copy_sigma1:+.2f} dB better than copying its memory's readout, "
    "{over_zeroed_sigma1:+.2f} dB better than with the memory zeroed and {over_broken_sigma1:+.2f} dB better than "
    "with the readout at the cameras two latents earlier: it combines the readout with its context rather than "
    "copying either. The control run, with the readout at the wrong cameras in training too (two latents early "
    "everywhere), gains only {control_over_zeroed_sigma1:+.2f} dB over zeroed, while it still scores "
    "{control_over_copy_sigma1:+.2f} dB above its own copy of its readout: beating the copy alone does not show "
    "the wiring, the margin over zeroed does. At sigma = 0.5 the memory adds "
    "nothing: the noisy latent already carries the content. `tests/test_memory_learning.py` runs this "
    "configuration and asserts +0.5 dB over the copy, +0.8 dB over zeroed, +0.3 dB over the broken readout and a "
    "flow-matching error at sigma = 1 at least 15 % below zeroed.")


def error(v: dict, mode: str) -> float:
    """Flow-matching error of ``mode`` (memory, zeroed, broken), averaged over sigma = 1 and 0.5."""
    return (v[f"{mode}_mse_sigma1"] + v[f"{mode}_mse_sigma0.5"]) / 2


def figures(r: dict) -> dict:
    """How much lower the error with the memory is than zeroed / broken, in % (after training), and
    how much better the clean estimate at sigma = 1 scores than copying the readout, than zeroed and
    than broken (dB)."""
    a = r["after"]
    out: dict = {f"below_{mode}": round(100 * (1 - error(a, "memory") / error(a, mode)))
                 for mode in ("zeroed", "broken")}
    out.update(over_copy_sigma1=round(a["memory_sigma1"] - a["readout"], 2),
               over_zeroed_sigma1=round(a["memory_sigma1"] - a["zeroed_sigma1"], 2),
               over_broken_sigma1=round(a["memory_sigma1"] - a["broken_sigma1"], 2))
    c = r.get("control")  # the same run with the readout at the wrong cameras everywhere
    if c is not None:
        out.update(control_over_copy_sigma1=round(c["memory_sigma1"] - c["readout"], 2),
                   control_over_zeroed_sigma1=round(c["memory_sigma1"] - c["zeroed_sigma1"], 2))
    return out


def build_section(command: str, machine: str, r: dict) -> Section:
    if r["vae"] == "patch":
        key, title, headline, reading = "memory-learning", TITLE, [dict(h) for h in HEADLINE], READING
    else:
        name = vae_name(r["vae"])
        key, headline, reading = f"memory-learning-{name}", [], OTHER_READING.format(vae=r["vae"])
        title = f"A model learns to use its memory: latents of the {name} VAE"
        if r["vae"] == WORLD_VAE and "control" in r:
            headline, reading = [dict(h) for h in WORLD_HEADLINE], WORLD_READING
            title += " (the CI test)"
    return Section(key=key, title=title, order=71, command=command, machine=machine, figures=figures(r),
                   headline=headline, reading=reading).markdown(table(r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_learning_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="runs/world/vae",
                        help="local VAE directory (or preset), or 'patch' for VAE-free block-mean latents")
    parser.add_argument("--preset", default="small", choices=("tiny", "small"), help="generator preset trained")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--drop-memory", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wrong-cameras", type=int, default=0,
                        help="read the memory this many latents' cameras early everywhere (a broken wiring)")
    parser.add_argument("--control", action="store_true",
                        help="run again with the readout two latents' cameras early everywhere and report its gains")
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/memory-learning[-VAE].json (docs/benchmarks.md)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    r = run(args.vae, args.clips, args.held_out, args.steps, args.lr, args.batch, args.drop_memory,
            seed=args.seed, preset=args.preset, wrong_cameras=args.wrong_cameras)
    if args.control:
        r["control"] = run(args.vae, args.clips, args.held_out, args.steps, args.lr, args.batch, args.drop_memory,
                           seed=args.seed, preset=args.preset, wrong_cameras=args.wrong_cameras + 2)["after"]
    command = command_line("memory_learning_bench", argv, write_docs=args.write_docs)
    machine = (f"{machine_line(torch.device('cpu'))}; data {r['data_seconds']:.0f} s, "
               f"training {r['train_seconds']:.0f} s")
    print(f"Command: `{command}`  \nMachine: {machine}.\n\n{table(r)}")
    print(figures(r))
    if args.write_docs:
        print(f"\nrecorded in {publish(build_section(command, machine, r))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
