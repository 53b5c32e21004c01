"""Chunked generation with the tiny random stack (docs/method.md §4 sampling, §5): shapes, chunks, memory, CLI."""

import json

import numpy as np
import pytest
import torch

from jobs.cli import main
from mirage_model.generation import GenerationConfig, MirageGenerator, build_text_stack, encode_prompt, save_outputs
from mirage_model.geometry.formats import read_re10k
from mirage_model.geometry.trajectory import dolly, orbit
from mirage_model.synthetic import default_scene, render

H, W = 64, 96


@pytest.fixture(scope="module")
def gen():
    return MirageGenerator.from_preset("tiny", seed=0)


def _first(traj):
    view = render(default_scene(0), traj.K[0], traj.c2w[0], (H, W))
    return (view.rgb.numpy() * 255).round().astype(np.uint8), view.depth


@pytest.fixture(scope="module")
def traj65():
    return orbit(65, radius=0.5, degrees=40.0, image_size=(H, W))


@pytest.fixture(scope="module")
def latent_run(gen, traj65):
    img, depth = _first(traj65)
    return gen.generate(img, "a red box in a room", traj65,
                        GenerationConfig(steps=2, memory="latent", seed=0, progress=False), first_depth=depth)


def test_text_stack_shapes():
    tok, enc = build_text_stack("tiny")
    states = encode_prompt(tok, enc, ["a red box", "a blue sphere in the room"], max_length=16)
    assert states.shape == (2, 16, 32)
    n = sum(tok(["a red box"]).attention_mask[0])
    assert torch.all(states[0, n:] == 0) and torch.any(states[0, :n] != 0)


def test_latent_two_chunks_shapes_and_stats(latent_run):
    assert latent_run.frames.shape == (65, H, W, 3) and latent_run.frames.dtype == np.uint8
    stats = latent_run.chunk_stats
    assert [s["chunk"] for s in stats] == [0, 1]
    for s in stats:
        assert set(s) >= {"chunk", "seconds", "seconds_per_frame", "cache_points", "cache_bytes", "hole_rate"}
        assert s["seconds"] > 0 and 0.0 <= s["hole_rate"] <= 1.0
    # first chunk's readout is the first frame seen from nearby cameras: partly covered
    assert stats[0]["hole_rate"] < 1.0


def test_the_readout_is_kept_and_decodes_to_what_the_memory_showed(gen, latent_run):
    from mirage_model.generation import readout_frames
    from mirage_model.generation.generator import GenerationResult

    r = latent_run
    assert r.readout.shape == r.latents.shape and r.readout.dtype == torch.float32
    assert torch.all(r.readout.abs().sum(0)[~r.visibility] == 0)  # nothing where the memory saw nothing
    shown = readout_frames(gen.vae, r)
    assert shown.shape == r.frames.shape and shown.dtype == np.uint8
    k = (np.arange(len(shown)) + 3) // 4  # latent k covers pixel frames 4k-3 .. 4k
    holes = ~r.visibility[k].repeat_interleave(16, 1).repeat_interleave(16, 2).numpy()
    assert holes.any() and (shown[holes] == 24).all()
    # frame 0's readout is the first frame's own latent, stored in float16: it decodes to the generated frame 0
    seen0 = ~holes[0]
    assert seen0.mean() > 0.5
    assert np.abs(shown[0].astype(int) - r.frames[0].astype(int))[seen0].mean() < 2.0
    assert readout_frames(gen.vae, GenerationResult(frames=r.frames)) is None  # no memory, nothing to show


def test_latent_memory_grows(gen, traj65, latent_run):
    from mirage_model.memory import LatentMemory

    img, depth = _first(traj65)
    init = LatentMemory()
    init.insert(torch.zeros(48, H // 16, W // 16), depth, traj65.K[0].float(), traj65.c2w[0].float(), (H, W))
    s = latent_run.chunk_stats
    assert s[0]["cache_points"] > len(init)
    assert s[1]["cache_points"] >= s[0]["cache_points"] and s[1]["cache_bytes"] >= s[0]["cache_bytes"]


def test_same_seed_same_frames_different_seed_differs(gen, traj65, latent_run):
    img, depth = _first(traj65)
    cfg = dict(steps=2, memory="latent", progress=False)
    again = gen.generate(img, "a red box in a room", traj65, GenerationConfig(seed=0, **cfg), first_depth=depth)
    np.testing.assert_array_equal(again.frames, latent_run.frames)
    other = gen.generate(img, "a red box in a room", traj65, GenerationConfig(seed=1, **cfg), first_depth=depth)
    assert not np.array_equal(other.frames, latent_run.frames)


@pytest.mark.parametrize("memory", ["rgb", "none"])
def test_other_memories_run(gen, memory):
    traj = dolly(33, distance=0.5, image_size=(H, W))
    img, depth = _first(traj)
    res = gen.generate(img, "a room", traj, GenerationConfig(steps=2, memory=memory, progress=False),
                       first_depth=depth)
    assert res.frames.shape == (33, H, W, 3)
    assert len(res.chunk_stats) == 1
    s = res.chunk_stats[0]
    if memory == "none":
        assert s["cache_points"] == 0 and s["hole_rate"] == 1.0
    else:
        assert s["cache_points"] > 0 and s["hole_rate"] < 1.0


def test_an_untrained_branch_makes_the_memory_a_no_op(gen):
    """The branch starts at zero: before training, every memory gives the frames of no memory, so a
    difference between them after training (docs/benchmarks.md) is what the branch learnt."""
    traj = dolly(33, distance=0.5, image_size=(H, W))
    img, depth = _first(traj)
    runs = {m: gen.generate(img, "a room", traj, GenerationConfig(steps=2, memory=m, progress=False),
                            first_depth=depth) for m in ("latent", "none")}
    assert runs["latent"].chunk_stats[0]["cache_points"] > 0
    assert torch.equal(runs["latent"].latents, runs["none"].latents)
    assert np.array_equal(runs["latent"].frames, runs["none"].frames)


def test_text_guidance_and_the_full_models_sampling(gen):
    """Guidance on the text: a negative prompt equal to the prompt changes nothing (the two passes
    agree), another one changes the frames. The full model samples with 40 steps unless told."""
    traj = dolly(33, distance=0.5, image_size=(H, W))
    img, depth = _first(traj)

    def run(**kw):
        return gen.generate(img, "a room", traj, GenerationConfig(steps=2, progress=False, **kw), first_depth=depth)

    plain = run()
    assert torch.allclose(run(guidance_scale=3.0, negative_prompt="a room").latents, plain.latents, atol=1e-5)
    assert not torch.allclose(run(guidance_scale=3.0, negative_prompt="blurry").latents, plain.latents, atol=1e-3)
    # one step is linear in the velocity, so v_neg + s (v - v_neg) moves the result by equal amounts per unit
    # of s, away from the negative prompt and through the plain result at s = 1
    one = {s: gen.generate(img, "a room", traj, GenerationConfig(steps=1, progress=False, guidance_scale=s,
                                                                    negative_prompt="blurry"),
                           first_depth=depth).latents for s in (1.0, 2.0, 3.0)}
    assert torch.allclose(one[3.0] - one[2.0], one[2.0] - one[1.0], atol=1e-4)
    assert not torch.allclose(one[2.0], one[1.0], atol=1e-3)
    assert gen.settings().steps == 8 and not gen.full_model
    gen.full_model = True
    try:
        assert gen.settings().steps == 40 and gen.settings(GenerationConfig(steps=4)).steps == 4
    finally:
        gen.full_model = False


def test_constant_depth_fallback_and_bad_inputs(gen):
    traj = dolly(33, distance=0.5, image_size=(H, W))
    img = np.full((H, W, 3), 128, np.uint8)
    res = gen.generate(img, "", traj, GenerationConfig(steps=1, progress=False))  # no first_depth
    assert res.frames.shape == (33, H, W, 3)
    with pytest.raises(ValueError, match="33"):
        gen.generate(img, "", dolly(37, 0.5, image_size=(H, W)), GenerationConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="multiples of 32"):
        gen.generate(np.zeros((48, 96, 3), np.uint8), "", traj, GenerationConfig(steps=1, progress=False))


def test_save_outputs(tmp_path, latent_run, traj65):
    paths = save_outputs(latent_run, traj65, tmp_path)
    assert len(read_re10k(paths["cameras"], (H, W))) == 65
    assert len(json.load(open(paths["chunks"]))["chunks"]) == 2


def test_cli_generate_synthetic(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "--preset", "tiny", "--synthetic", "--prompt", "a room", "--trajectory", "orbit",
                 "--frames", "33", "--height", "64", "--width", "96", "--steps", "2", "--out", str(out)]) == 0
    for name in ("video.mp4", "cameras.txt", "chunks.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    chunks = json.loads((out / "chunks.json").read_text())["chunks"]
    assert len(chunks) == 1 and chunks[0]["cache_points"] > 0


def test_missing_model_dir_component(tmp_path, capsys):
    for sub in ("transformer", "vae", "text_encoder"):
        (tmp_path / sub).mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        MirageGenerator.from_pretrained(tmp_path)
    assert main(["generate", "--model-dir", str(tmp_path), "--synthetic", "--frames", "33",
                 "--out", str(tmp_path / "o")]) == 2
    assert "tokenizer" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MirageGenerator.from_pretrained(tmp_path / "nope")


def test_from_pretrained_roundtrip(tmp_path, gen):
    gen.transformer.backbone.save_pretrained(tmp_path / "transformer")
    gen.vae.save_pretrained(tmp_path / "vae")
    gen.text_encoder.save_pretrained(tmp_path / "text_encoder")
    gen.tokenizer.save_pretrained(tmp_path / "tokenizer")
    gen.transformer.save_branch(tmp_path / "branch")
    loaded = MirageGenerator.from_pretrained(tmp_path, branch_dir=tmp_path / "branch")
    traj = dolly(33, distance=0.5, image_size=(H, W))
    img, depth = _first(traj)
    cfg = GenerationConfig(steps=1, memory="none", progress=False)
    a = gen.generate(img, "a room", traj, cfg).frames
    b = loaded.generate(img, "a room", traj, cfg).frames
    np.testing.assert_array_equal(a, b)
    # lazy_vae: vae/ is read on first use only, then gives the same video
    lazy = MirageGenerator.from_pretrained(tmp_path, branch_dir=tmp_path / "branch", lazy_vae=True)
    assert not lazy.vae_loaded
    np.testing.assert_array_equal(lazy.generate(img, "a room", traj, cfg).frames, a)
    assert lazy.vae_loaded and not any(p.requires_grad for p in lazy.vae.parameters())


def test_denoise_keeps_latent0_pinned(gen):
    clean0 = torch.randn(1, 48, 1, H // 16, W // 16, generator=torch.Generator().manual_seed(3))
    text = encode_prompt(gen.tokenizer, gen.text_encoder, ["a room"], 8)
    cond = torch.zeros(1, 49, 9, H // 16, W // 16)
    out = gen._denoise(clean0, cond, text, 9, GenerationConfig(steps=3, progress=False),
                       torch.Generator().manual_seed(0))
    assert out.shape == (1, 48, 9, H // 16, W // 16)
    torch.testing.assert_close(out[:, :, :1], clean0, rtol=0, atol=0)
    assert torch.isfinite(out).all()


def test_from_pretrained_loads_a_trained_lora(tmp_path):
    """A LoRA saved in diffusers' format changes generation exactly as the in-memory adapter does."""
    from mirage_model.model.lora import add_lora, save_lora

    trained = MirageGenerator.from_preset("tiny", seed=0)
    base = trained.transformer.backbone
    base.save_pretrained(tmp_path / "transformer")
    trained.vae.save_pretrained(tmp_path / "vae")
    trained.text_encoder.save_pretrained(tmp_path / "text_encoder")
    trained.tokenizer.save_pretrained(tmp_path / "tokenizer")
    add_lora(trained.transformer, rank=4, alpha=4, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # a "trained" adapter: not a no-op
    save_lora(trained.transformer, tmp_path / "lora")
    trained.transformer.eval()

    traj = dolly(33, distance=0.5, image_size=(H, W))
    img, _ = _first(traj)
    cfg = GenerationConfig(steps=1, memory="none", progress=False)
    with_lora = MirageGenerator.from_pretrained(tmp_path, lora=tmp_path / "lora").generate(img, "a room", traj, cfg)
    plain = MirageGenerator.from_pretrained(tmp_path).generate(img, "a room", traj, cfg)
    expected = trained.generate(img, "a room", traj, cfg)
    np.testing.assert_array_equal(with_lora.frames, expected.frames)
    assert not np.array_equal(with_lora.frames, plain.frames)
    with pytest.raises(FileNotFoundError, match="LoRA"):
        MirageGenerator.from_pretrained(tmp_path, lora=tmp_path / "nope")


def test_a_checkpoint_records_what_generation_must_agree_with(tmp_path):
    """A checkpoint's model.json (written by `mirage train`) sets `preceding` and the prompt length
    left unset; a value given that differs is an error naming both."""
    from safetensors.torch import save_file

    from mirage_model.model.checkpoint import TRAINABLE_FILE, trainable_names, write_model_record

    trained = MirageGenerator.from_preset("tiny", seed=0)
    named = dict(trained.transformer.named_parameters())
    save_file({n: named[n].detach().contiguous() for n in trainable_names(trained.transformer)},
              str(tmp_path / TRAINABLE_FILE))
    write_model_record(tmp_path, {"preset": "tiny", "max_text_length": 32, "sample": {"preceding": 3}})

    gen = MirageGenerator.from_preset("tiny", seed=0)
    assert gen.settings().preceding == 2 and gen.settings().max_text_length == 64  # no checkpoint: the defaults
    gen.load_training_checkpoint(tmp_path)
    resolved = gen.settings(GenerationConfig(steps=3))
    assert (resolved.preceding, resolved.max_text_length, resolved.steps) == (3, 32, 3)
    assert gen.settings(GenerationConfig(preceding=3)).preceding == 3
    with pytest.raises(ValueError, match=r"preceding=1, but the checkpoint .* was trained with preceding=3"):
        gen.settings(GenerationConfig(preceding=1))
    with pytest.raises(ValueError, match="max_text_length=64"):
        gen.settings(GenerationConfig(max_text_length=64))


def test_generation_builds_the_latent_memory_the_checkpoint_was_trained_with(tmp_path):
    """model.json's ``memory`` (a training run's ``memory:`` section) configures the latent memory
    every generation builds for that model; the RGB twin keeps one colour per surface."""
    from safetensors.torch import save_file

    from mirage_model.memory import LatentMemory, MemoryConfig
    from mirage_model.model.checkpoint import TRAINABLE_FILE, trainable_names, write_model_record

    trained = MirageGenerator.from_preset("tiny", seed=0)
    named = dict(trained.transformer.named_parameters())
    save_file({n: named[n].detach().contiguous() for n in trainable_names(trained.transformer)},
              str(tmp_path / TRAINABLE_FILE))
    write_model_record(tmp_path, {"preset": "tiny", "memory": {"view_radius": 0.3, "fill_gaps": 1}})
    gen = MirageGenerator.from_preset("tiny", seed=0)
    assert gen.memory_config == MemoryConfig()
    gen.load_training_checkpoint(tmp_path)
    assert gen.memory_config == MemoryConfig(view_radius=0.3, fill_gaps=1)
    memory = gen._new_memory("latent", "cpu")
    assert isinstance(memory, LatentMemory) and memory.config.view_radius == 0.3
    assert gen._new_memory("rgb", "cpu").config == MemoryConfig()
    # radius 0: every write from a new camera keeps its own sample, so the chunk's memory grows more
    traj = dolly(33, distance=0.5, image_size=(64, 96))
    image = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    cfg = GenerationConfig(steps=1, progress=False)
    points = {}
    for radius in (None, 0.0):
        gen.record = {**gen.record, "memory": {"view_radius": radius}}
        points[radius] = gen.generate(image, "a room", traj, cfg).chunk_stats[-1]["cache_points"]
    assert points[0.0] > points[None] > 0, points


def test_generation_settings_are_validated_like_every_config():
    with pytest.raises(ValueError, match="extra"):
        GenerationConfig(stpes=3)
    with pytest.raises(ValueError):
        GenerationConfig(writeback_mask_scale=0)
    with pytest.raises(ValueError):
        GenerationConfig(chunk_frames=17)
