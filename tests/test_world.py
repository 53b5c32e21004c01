"""The CPU world the repository ships (assets/world; `make world`, docs/method.md §15).

What is checked is what the demo relies on: the files are the ones ``world.json`` lists, its model
is the recipe's (the ``small`` preset with the LoRA rank of configs/train/world.yaml), its VAE codes
held-out renders recognisably, and its transformer uses its memory -- on a held-out scene along a
closed path, the latent memory brings the way back closer to the ground truth than no memory,
and reading the memory at the wrong cameras loses that gain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.config import GeneratorModelConfig, TrainConfig
from jobs.generate_batch import load_generator
from jobs.train import WORLD_FILE
from mirage_model.config import load_config
from mirage_model.evaluation.memory_ablation import closed_path, score_generation
from mirage_model.evaluation.revisit import psnr
from mirage_model.generation import GenerationConfig
from mirage_model.io.images import to_uint8
from mirage_model.synthetic import default_scene, render_trajectory
from mirage_model.training.samples import SampleConfig
from mirage_model.vae import decode_latents, encode_video, load_vae

ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT / "assets" / "world"
SIZE = (128, 160)
HELD_OUT_SCENE = 5000  # `mirage eval-memory`'s held-out scenes: never rendered for the world's training


def _video(frames: np.ndarray) -> torch.Tensor:
    return torch.tensor(frames, dtype=torch.float32).div(127.5).sub(1).permute(3, 0, 1, 2)[None]


def test_the_shipped_world_is_what_world_json_lists():
    record = json.loads((WORLD / WORLD_FILE).read_text())
    on_disk = {p.relative_to(WORLD).as_posix() for p in WORLD.rglob("*") if p.is_file()} - {WORLD_FILE, "README.md"}
    assert on_disk == set(record["files"])
    for name, meta in record["files"].items():
        data = (WORLD / name).read_bytes()
        assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"], name
    # the recipe's model: its preset and LoRA rank, every weight trained (the checkpoint holds the backbone)
    recipe = load_config(TrainConfig, ROOT / "configs" / "train" / "world.yaml")
    assert [s.name for s in recipe.stages] == ["full"]
    gen = load_generator(GeneratorModelConfig(preset=recipe.model.preset, checkpoint=str(WORLD / "model"),
                                              vae=str(WORLD / "vae")), "cpu")
    assert record["state"]["global_step"] == recipe.total_steps
    # the layout of its training samples, recorded for the demo's fine-tuning, is the recipe's
    assert record["sample"] == SampleConfig(**recipe.data.model_dump(include=set(SampleConfig.model_fields))).model_dump(
        mode="json")
    lora = [m for n, m in gen.transformer.named_modules() if n.endswith("lora_A")]
    assert lora and all(m["default"].out_features == recipe.model.lora.rank for m in lora)
    fresh = load_generator(GeneratorModelConfig(preset=recipe.model.preset), "cpu")
    before = dict(fresh.transformer.named_parameters())
    changed = [n for n, p in gen.transformer.named_parameters()
               if n.startswith("backbone.") and n in before and not torch.equal(p, before[n])]
    assert changed, "the shipped model's backbone is the preset's random one"


def test_the_shipped_vae_codes_held_out_renders_recognisably():
    vae = load_vae(WORLD / "vae")
    assert next(vae.parameters()).dtype == torch.float32  # stored in float16, run in float32
    traj = closed_path("orbit-and-back", 17, SIZE)
    gt = to_uint8(render_trajectory(default_scene(HELD_OUT_SCENE, texture_scale=3.0), traj.K, traj.c2w, SIZE,
                                    fps=16.0).rgb.numpy())
    with torch.no_grad():
        recon = decode_latents(vae, encode_video(vae, _video(gt)))[0]
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    flat = psnr(gt, np.broadcast_to(gt.mean(axis=(0, 1, 2), keepdims=True), gt.shape).astype(np.uint8))
    assert psnr(gt, recon) >= VAE_PSNR_FLOOR, psnr(gt, recon)
    assert psnr(gt, recon) >= flat + 4.0  # not a mean colour: the layout and the shapes come back


VAE_PSNR_FLOOR = 21.0
"""dB on the held-out orbit above: the shipped VAE scores 22.6 dB there, its mean colour 17.8 dB."""


@pytest.fixture(scope="module")
def world_generation():
    gen = load_generator(GeneratorModelConfig(preset="small", checkpoint=str(WORLD / "model"),
                                              vae=str(WORLD / "vae")), "cpu")
    traj = closed_path("forward-and-back", 65, SIZE)
    gt = render_trajectory(default_scene(HELD_OUT_SCENE, texture_scale=3.0), traj.K, traj.c2w, SIZE, fps=16.0)
    reference = to_uint8(gt.rgb.numpy())
    with torch.no_grad():
        ref_latents = encode_video(gen.vae, _video(reference))[0]

    def run(memory: str) -> dict:
        result = gen.generate(reference[0], "", traj, GenerationConfig(steps=STEPS, memory=memory, progress=False),
                              first_depth=gt.depth[0])
        return score_generation(result.frames, result.latents, result.visibility, result.chunk_stats, traj,
                                reference, ref_latents)

    return run


STEPS = 8


@pytest.mark.slow
def test_the_shipped_world_keeps_the_way_back_and_a_wrong_readout_camera_does_not(world_generation,
                                                                                 read_memory_at_previous_chunk):
    latent, none = world_generation("latent"), world_generation("none")
    read_memory_at_previous_chunk()
    broken = world_generation("latent")
    assert latent["coverage_revisit"] >= 0.9
    assert latent["psnr_gt_revisit"] >= none["psnr_gt_revisit"] + GAIN_DB, (latent["psnr_gt_revisit"],
                                                                            none["psnr_gt_revisit"])
    assert broken["psnr_gt_revisit"] <= latent["psnr_gt_revisit"] - GAIN_DB / 2, (broken["psnr_gt_revisit"],
                                                                                 latent["psnr_gt_revisit"])


GAIN_DB = 2.0
"""PSNR against the ground truth on the frames of the way back. The shipped model: latent 22.35 dB,
none 19.21 dB (+3.1), the memory read at the previous chunk's cameras 20.09 dB (coverage 0.93)."""


def test_mirage_generate_with_the_world_makes_the_demos_latent_video(tmp_path):
    """`mirage generate --world assets/world` and the demo's latent mode, same path, seed and
    settings, from the same model (here the world itself: the demo would fine-tune it first): the
    same frames, because both go through the one generation config and the one loader."""
    import contextlib

    from jobs.cli import main
    from jobs.config import DemoConfig
    from jobs.demo import World, _generate
    from mirage_model.io.video import decode

    cfg = DemoConfig(world=str(WORLD), gen_frames=33, gen_size=SIZE, modes=("latent",),
                     generation={"steps": 2}, progress=False)
    result, frames = _generate(cfg, World.of(cfg), tmp_path / "demo", str(WORLD / "model"),
                               timed=lambda *a: contextlib.nullcontext(), echo=lambda *a: None)
    assert result["modes"]["latent"]["settings"]["preceding"] == 2  # the world's training layout
    assert main(["generate", "--world", str(WORLD), "--synthetic", "--texture-scale", str(cfg.texture_scale),
                 "--prompt", cfg.prompt,
                 "--frames", "33", "--height", str(SIZE[0]), "--width", str(SIZE[1]), "--steps", "2",
                 "--trajectory", "pan-and-return", "--out", str(tmp_path / "cli")]) == 0
    cli = decode(tmp_path / "cli" / "video.mp4").frames
    demo = decode(Path(result["modes"]["latent"]["video"])).frames
    assert cli.shape == demo.shape == (33, *SIZE, 3)
    assert np.array_equal(cli, demo)
    settings = json.loads((tmp_path / "cli" / "chunks.json").read_text())["config"]
    assert {**settings, "progress": False} == result["modes"]["latent"]["settings"]  # one settings model, resolved
