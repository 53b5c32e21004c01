"""Training-sample construction (docs/method.md §6) on a real shard sample rendered from the synthetic room."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirage_model.geometry.camera import intrinsics_from_fov, look_at
from mirage_model.io import sample_format
from mirage_model.memory.base import resize_mask
from mirage_model.synthetic import default_scene, render_trajectory
from mirage_model.training import (
    SampleConfig,
    batch_samples,
    build_training_sample,
    clip_latents,
    collate,
    draw_choices,
    frame_voxels,
    make_samples,
    sample_rng,
    select_references,
    valid_latent_starts,
)
from mirage_model.vae import build_vae, encode_video

HW = (128, 192)  # latent grid 8 x 12
AUX = (32, 48)
N = 33           # 9 latents
KEY = "room-clip-000"
CFG = SampleConfig(target_latents=5, preceding=2, drop_preceding_p=0.0, text_dropout=0.0)


def _latent_grid(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return resize_mask(torch.as_tensor(np.asarray(x)), (HW[0] // 16, HW[1] // 16))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads competing with other
    processes are many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vae():
    return build_vae("tiny", seed=0)


@pytest.fixture(scope="module")
def clip():
    """A 33-frame clip: small sideways + forward motion past a rolling ball; depth every 4th frame."""
    K = intrinsics_from_fov(60.0, HW)
    c2w = torch.stack([look_at((-0.5 + 0.015 * i, 0.6, -0.3 + 0.01 * i), (-0.5 + 0.015 * i, 0.9, 3.0))
                       for i in range(N)])
    out = render_trajectory(default_scene(seed=0, moving_object=True), K, c2w, HW)
    frames = (out.rgb * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    idx = list(range(0, N, 4))
    static = ~(out.dynamic_mask | out.sky_mask)
    clip = sample_format.ClipSample(frames=frames, c2w=c2w.numpy(), K=K.numpy(), depth=out.depth[idx].numpy(),
                                    static=static[idx].numpy(), fps=16, source_uri="/in/room.mp4",
                                    frame_indices=list(range(N)), depth_frames=idx,
                                    extra_meta={"caption": "a quiet room"})
    raw = sample_format.encode_sample(KEY, clip, aux_size=AUX)
    return raw


@pytest.fixture(scope="module")
def decoded(clip):
    return sample_format.decode_sample(clip)


@pytest.fixture(scope="module")
def with_latents(decoded, vae):
    """The decoded sample plus shard latents of its frames from the same VAE (float16, as stored),
    encoded here directly (one call over the whole clip, as the pipeline's latent stage does)."""
    video = torch.from_numpy(decoded["frames"]).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    return dict(decoded, latents=encode_video(vae, video)[0].half().numpy())


def _same(a, b) -> bool:
    return (a.key == b.key and a.t0 == b.t0 and a.prompt == b.prompt
            and all(torch.equal(getattr(a, f), getattr(b, f))
                    for f in ("target", "context", "cond", "context_cond", "references", "reference_cond")))


# ----------------------------------------------------------------------------------------------
def test_config_validation():
    SampleConfig()
    for bad in (dict(target_latents=1), dict(preceding=-1), dict(t0_min=6), dict(t0_min=12, t0_max=8),
                dict(text_dropout=1.5), dict(drop_preceding_p=-0.1), dict(reference_voxel=0.0),
                dict(references=-1), dict(target_latents=2.5)):
        with pytest.raises(ValueError, match="SampleConfig"):
            SampleConfig(**bad)


def test_valid_starts_spec_defaults():
    # 81 frames = 21 latents with the docs/method.md §6 defaults: t0 in [8, 48], i.e. m in [2, 12]
    assert valid_latent_starts(21, SampleConfig()) == list(range(2, 13))
    # clamped to the clip: 9 latents, 5 target latents -> m <= 4
    assert valid_latent_starts(9, CFG) == [2, 3, 4]
    assert valid_latent_starts(9, CFG, depth_frames=[0, 8, 16]) == [2, 4]


def test_determinism_shapes_bounds(with_latents):
    a = build_training_sample(with_latents, CFG, seed=3, epoch=1)
    b = build_training_sample(with_latents, CFG, seed=3, epoch=1)
    assert _same(a, b)
    t0s = {build_training_sample(with_latents, CFG, seed=3, epoch=e).t0 for e in range(8)}
    assert len(t0s) > 1
    assert all(t % 4 == 0 and 8 <= t <= 16 for t in t0s)
    h, w = HW[0] // 16, HW[1] // 16
    assert a.target.shape == (48, 5, h, w) and a.target.dtype == torch.float32
    assert a.context.shape == (48, 2, h, w) and a.context_cond.shape == (49, 2, h, w)
    assert a.cond.shape == (49, 5, h, w)
    assert a.references.shape == (48, 0, h, w) and a.reference_cond.shape == (49, 0, h, w)
    assert a.prompt == "a quiet room"
    # the RNG uses a stable hash of the key, not Python's salted hash()
    assert sample_rng(3, 1, KEY).random() == sample_rng(3, 1, KEY).random()
    assert sample_rng(3, 1, KEY).random() != sample_rng(3, 1, KEY + "x").random()


def test_layout_matches_clip_latents(with_latents):
    lat = torch.from_numpy(with_latents["latents"]).float()
    assert torch.equal(clip_latents(with_latents), lat)
    for epoch in range(4):
        s = build_training_sample(with_latents, CFG, seed=0, epoch=epoch)
        m = s.t0 // 4
        torch.testing.assert_close(s.target[:, 0], lat[:, m], rtol=0, atol=0)
        torch.testing.assert_close(s.target, lat[:, m:m + 5], rtol=0, atol=0)
        torch.testing.assert_close(s.context, lat[:, m - 2:m], rtol=0, atol=0)


def test_memory_readout(with_latents):
    lat = torch.from_numpy(with_latents["latents"]).float()
    df = with_latents["depth_frames"]
    for epoch in range(3):
        s = build_training_sample(with_latents, CFG, seed=1, epoch=epoch)
        m = s.t0 // 4
        vis = s.cond[48] > 0.5  # (Tt, h, w)
        assert set(s.cond[48].unique().tolist()) <= {0.0, 1.0}
        # j = 0 is the memory's own camera: the readout is latent m wherever visible
        assert vis[0].float().mean() > 0.8
        torch.testing.assert_close(s.cond[:48, 0][:, vis[0]], lat[:, m][:, vis[0]], rtol=0, atol=0)
        assert (s.cond[:48, 0][:, ~vis[0]] == 0).all()
        # excluded (non-static: the rolling ball) cells never appear at j = 0
        excl = _latent_grid(~with_latents["static"][df.index(s.t0)])
        assert excl.sum() >= 2
        assert not vis[0][excl].any()
        # later target frames see less of frame t0, but still a good part of it
        frac = vis.flatten(1).float().mean(1)
        assert 0 < frac[-1] < frac[0]
        # the preceding cameras (t0-8, t0-4) see part of it too
        assert 0 < s.context_cond[48].mean() < 1
        assert s.hole_rate == pytest.approx(1 - float(frac.mean()), abs=1e-6)  # float32 means


def test_history_memory_holds_only_latents_before_the_context(with_latents):
    """memory_from='history': the readout is made of the latents before the context window, not of t0's."""
    lat = torch.from_numpy(with_latents["latents"]).float()
    cfg = CFG.model_copy(update={"memory_from": "history", "t0_min": 16, "t0_max": 16})
    s = build_training_sample(with_latents, cfg, seed=1)
    m = s.t0 // 4
    assert m == 4
    history = torch.cat([lat[:, k].flatten(1) for k in range(0, m - cfg.preceding)], dim=1).T  # (cells, 48)
    vis = s.cond[48] > 0.5
    assert vis.any() and s.context_cond[48].any()
    for j in range(s.cond.shape[1]):
        for cell in s.cond[:48, j][:, vis[j]].T:  # every visible feature is one of the history's cells
            assert bool((history == cell).all(1).any())
    t0_sample = build_training_sample(with_latents, cfg.model_copy(update={"memory_from": "t0"}), seed=1)
    assert t0_sample.t0 == s.t0 and not torch.equal(t0_sample.cond, s.cond)
    with pytest.raises(ValueError, match="before the context"):
        build_training_sample(with_latents, cfg.model_copy(update={"t0_min": 8, "t0_max": 8}), seed=1)


def test_shard_latents_vs_vae(decoded, with_latents, vae):
    enc = build_training_sample(decoded, CFG, seed=5, epoch=0, vae=vae)  # encodes the whole clip
    sto = build_training_sample(with_latents, CFG, seed=5, epoch=0)
    assert enc.t0 == sto.t0
    # the memory stores float16, so the conditioning is identical; latents differ by fp16 rounding
    assert torch.equal(enc.cond, sto.cond) and torch.equal(enc.context_cond, sto.context_cond)
    torch.testing.assert_close(enc.target, sto.target, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(enc.context, sto.context, rtol=1e-3, atol=1e-3)


def test_bad_latents_and_no_vae(decoded, with_latents):
    with pytest.raises(ValueError, match=f"{KEY}.*no stored latents"):
        build_training_sample(decoded, CFG)
    bad = dict(with_latents, latents=with_latents["latents"][:16])
    with pytest.raises(ValueError, match="expected .48, 9, 8, 12"):
        build_training_sample(bad, CFG)


def test_too_short_clip(decoded):
    short = dict(decoded, frames=decoded["frames"][:17], c2w=decoded["c2w"][:17], K=decoded["K"][:17],
                 depth=decoded["depth"][:5], static=decoded["static"][:5], depth_frames=decoded["depth_frames"][:5])
    with pytest.raises(ValueError, match=f"{KEY}.*too short.*17 frames"):
        build_training_sample(short, CFG.model_copy(update={"fit_short_clips": False}))
    odd = dict(short, frames=decoded["frames"][:16], c2w=decoded["c2w"][:16], K=decoded["K"][:16])
    with pytest.raises(ValueError, match="4n \\+ 1"):
        build_training_sample(odd, CFG)


def test_short_clips_get_a_shorter_layout(decoded, vae):
    """A 17-frame clip (5 latents) cannot hold 9 target + 2 preceding latents: it trains as 3 + 2."""
    from mirage_model.training import fit_to_clip, layout_name

    assert fit_to_clip(SampleConfig(), 21) == SampleConfig()  # 81 frames: the layout as configured
    short = fit_to_clip(SampleConfig(), 5)
    assert (short.target_latents, short.preceding, layout_name(short)) == (3, 2, "T3_P2")
    assert valid_latent_starts(5, short) == [2]
    assert (fit_to_clip(SampleConfig(), 3).target_latents, fit_to_clip(SampleConfig(), 3).preceding) == (2, 1)
    assert fit_to_clip(SampleConfig(), 1) is None
    assert fit_to_clip(SampleConfig(fit_short_clips=False), 5) is None
    clip17 = dict(decoded, frames=decoded["frames"][:17], c2w=decoded["c2w"][:17], K=decoded["K"][:17],
                  depth=decoded["depth"][:5], static=decoded["static"][:5],
                  depth_frames=decoded["depth_frames"][:5])
    cfg = CFG.model_copy(update={"drop_preceding_p": 0.0})
    sample = build_training_sample(clip17, cfg, vae=vae)
    assert sample.target.shape[1] == 3 and sample.context.shape[1] == 2 and sample.t0 == 8


def test_make_samples_skips_bad(clip, with_latents):
    good = dict(clip, **{"latents.npy": sample_format.encode_npy(with_latents["latents"])})
    corrupt_video = dict(good, __key__="bad-video", **{"video.mp4": b"not a video at all"})
    corrupt_depth = dict(good, __key__="bad-depth", **{"depth.npy": b"\x93NUMPY garbage"})
    missing = {k: v for k, v in good.items() if k != "cameras.json"}
    missing["__key__"] = "no-cameras"
    no_latents = dict(clip, __key__="no-latents")  # no VAE given either
    errors: list[tuple[str, str]] = []
    out = list(make_samples([corrupt_video, good, corrupt_depth, missing, "junk", no_latents], CFG,
                            seed=0, epoch=0, on_error=lambda k, r: errors.append((k, r))))
    assert [s.key for s in out] == [KEY]
    assert _same(out[0], build_training_sample(with_latents, CFG, seed=0, epoch=0))
    reasons = dict(errors)
    assert set(reasons) == {"bad-video", "bad-depth", "no-cameras", "<not a mapping>", "no-latents"}
    assert reasons["bad-video"].startswith("decode:")
    assert reasons["no-cameras"].startswith("decode:") and "cameras.json" in reasons["no-cameras"]
    assert reasons["no-latents"].startswith("build:") and "no stored latents" in reasons["no-latents"]


def test_dropout_rates_and_t0_independence(with_latents):
    cfg = SampleConfig(drop_preceding_p=0.3, text_dropout=0.1)
    starts = valid_latent_starts(21, cfg)
    draws = [draw_choices(sample_rng(7, 0, f"clip-{i:05d}"), starts, cfg) for i in range(4000)]
    assert abs(np.mean([d.drop_preceding for d in draws]) - 0.3) < 0.03
    assert abs(np.mean([d.drop_text for d in draws]) - 0.1) < 0.02
    counts = np.bincount([d.m for d in draws], minlength=13)[2:]
    assert counts.min() > 4000 / 11 * 0.7  # roughly uniform over m = 2..12
    # changing the dropout rates never changes t0; a dropped sample has no context and no prompt
    always = SampleConfig(target_latents=5, preceding=2, drop_preceding_p=1.0, text_dropout=1.0)
    for epoch in range(3):
        a = build_training_sample(with_latents, always, seed=2, epoch=epoch)
        b = build_training_sample(with_latents, CFG, seed=2, epoch=epoch)
        assert a.t0 == b.t0 and torch.equal(a.target, b.target) and torch.equal(a.cond, b.cond)
        assert a.context.shape[1] == 0 and a.context_cond.shape[1] == 0 and a.dropped_preceding
        assert a.prompt == "" and b.prompt == "a quiet room"


def test_collate_and_batching(with_latents):
    full = [build_training_sample(with_latents, CFG, seed=0, epoch=e) for e in range(3)]
    none = build_training_sample(with_latents, SampleConfig(target_latents=5, drop_preceding_p=1.0), seed=0, epoch=9)
    batch = collate(full)
    assert batch.target.shape == (3, 48, 5, 8, 12) and batch.context.shape == (3, 48, 2, 8, 12)
    assert batch.cond.shape == (3, 49, 5, 8, 12) and batch.t0.tolist() == [s.t0 for s in full]
    assert batch.keys == [KEY] * 3 and batch.prompts == ["a quiet room"] * 3
    mixed = collate(full[:1] + [none])  # the batch uses the minimum P
    assert mixed.context.shape[2] == 0 and mixed.context_cond.shape == (2, 49, 0, 8, 12)
    with pytest.raises(ValueError, match="context lengths"):
        collate(full[:1] + [none], context_mode="strict")
    batches = list(batch_samples([full[0], none, full[1], full[2]], batch_size=2))
    assert [(len(b), b.context.shape[2]) for b in batches] == [(2, 2), (1, 0), (1, 2)]
    assert [len(b) for b in batch_samples([full[0], none, full[1]], 2, drop_last=True)] == [2]
    with pytest.raises(ValueError, match="shapes"):
        collate([full[0], build_training_sample(with_latents, SampleConfig(target_latents=4), seed=0)])


def test_frame_voxels_and_select_references(decoded):
    df, K, c2w = decoded["depth_frames"], decoded["K"], decoded["c2w"]
    vox = {f: frame_voxels(decoded["depth"][i].astype(np.float32), decoded["static"][i], K[f], c2w[f], HW, 0.1)
           for i, f in enumerate(df)}
    assert all(len(v) > 100 and bool((v[1:] > v[:-1]).all()) for v in vox.values())
    # a frame against itself: IoU 1; nearby frames overlap a lot, the rule picks best first
    assert select_references(vox, [16], [16]) == [(16, 1.0)]
    target = set().union(*(set(vox[f].tolist()) for f in (16, 20, 24)))
    iou = {f: len(set(vox[f].tolist()) & target) / len(set(vox[f].tolist()) | target) for f in (0, 4, 8)}
    picked = select_references(vox, [16, 20, 24], [0, 4, 8], min_iou=0.04, max_refs=2)
    assert [f for f, _ in picked] == sorted(iou, key=lambda f: -iou[f])[:2]
    assert all(v == pytest.approx(iou[f]) and v >= 0.04 for f, v in picked)
    assert picked[0][1] >= picked[1][1]
    assert select_references(vox, [16], [0, 4], min_iou=1.0) == []
    # a view of the opposite wall shares nothing
    back = look_at((0.0, 0.6, 0.0), (0.0, 0.9, -3.0)).numpy()
    from mirage_model.synthetic import render
    r = render(default_scene(0), K[0], back, HW)
    vox_back = frame_voxels(r.depth.numpy(), np.ones(HW, bool), K[0], back, HW, 0.1)
    assert select_references({**vox, 99: vox_back}, [0], [99]) == []


def test_references_in_samples(with_latents):
    cfg = SampleConfig(target_latents=5, preceding=2, drop_preceding_p=0.0, text_dropout=0.0,
                       references=2, drop_references_p=0.0)
    lat = torch.from_numpy(with_latents["latents"]).float()
    seen = set()
    for epoch in range(8):
        s = build_training_sample(with_latents, cfg, seed=0, epoch=epoch)
        m = s.t0 // 4
        assert s.reference_latents == sorted(s.reference_latents)
        assert all(k < m - 2 for k in s.reference_latents)  # before the context window
        assert len(s.reference_latents) == min(2, m - 2)  # small motion: every earlier latent overlaps
        torch.testing.assert_close(s.references, lat[:, s.reference_latents], rtol=0, atol=0)
        assert s.reference_cond.shape == (49, len(s.reference_latents), 8, 12)
        seen.add(len(s.reference_latents))
    assert 2 in seen  # some epoch drew m = 4 (two earlier latents before the context)


def test_memory_dropout_zeroes_every_conditioning_and_keeps_t0(with_latents):
    drop = SampleConfig(target_latents=5, preceding=2, drop_preceding_p=0.0, drop_memory_p=1.0)
    keep = SampleConfig(target_latents=5, preceding=2, drop_preceding_p=0.0)
    for epoch in range(3):
        a = build_training_sample(with_latents, drop, seed=2, epoch=epoch)
        b = build_training_sample(with_latents, keep, seed=2, epoch=epoch)
        assert a.t0 == b.t0 and torch.equal(a.target, b.target) and torch.equal(a.context, b.context)
        assert not a.cond.any() and not a.context_cond.any() and a.hole_rate == 1.0
        assert b.cond[-1].any() and b.hole_rate < 1.0
    rates = [draw_choices(sample_rng(3, 0, f"c{i}"), [2, 3], SampleConfig(drop_memory_p=0.25)).drop_memory
             for i in range(2000)]
    assert abs(np.mean(rates) - 0.25) < 0.03


def test_revisit_clips_give_a_memory_that_covers_the_way_back(tmp_path):
    """`synth-data --revisit` paths come back over their own views: with ``memory_from="history"``
    the memory of the way out covers the target latents on the way back; on the one-way path from
    the same seed (same room, same start) it covers much less."""
    import tarfile

    from pipeline.synth_data import make_ground_truth_shards

    cfg = SampleConfig(target_latents=2, preceding=2, t0_min=24, t0_max=24, drop_preceding_p=0.0,
                       text_dropout=0.0, memory_from="history")
    holes = {}
    for revisit in (True, False):
        out = tmp_path / f"revisit{revisit}"
        make_ground_truth_shards(str(out), 2, seed=4, frames=33, size=(96, 128), per_shard=2, revisit=revisit)
        with tarfile.open(next(out.glob("shard-*.tar"))) as tar:
            members = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
        samples = [sample_format.decode_sample(raw) for raw in members.values()]
        if revisit:  # frame i and 32 - i share a pose
            for s in samples:
                np.testing.assert_allclose(s["c2w"][24], s["c2w"][8], atol=1e-9)
        built = [build_training_sample(s, cfg, seed=0, epoch=0) for s in samples]
        assert all(b.t0 == 24 for b in built)  # targets 24, 28 revisit frames 8, 4; memory from 0, 4, 8
        holes[revisit] = [b.hole_rate for b in built]
    assert max(holes[True]) <= 0.1, holes
    assert min(holes[False]) > max(holes[True]) + 0.15, holes  # measured: 0.00-0.01 against 0.25-0.34


def test_precomputed_text_states_survive_the_shard_and_follow_the_text_dropout(clip, with_latents):
    """``text.safetensors`` round-trips exactly; a sample carries its caption's states, or the empty
    prompt's when its text is dropped, and a batch of them pads back to the encoder's own output."""
    from mirage_model.model.text import build_text_stack, encode_prompt, encode_prompt_states
    from mirage_model.training.trainer import PromptEncoder, ShardTextStates

    tokenizer, encoder = build_text_stack("tiny")
    caption, empty = encode_prompt_states(tokenizer, encoder, ["a quiet room", ""], 16)
    raw = dict(clip, **{"text.safetensors": sample_format.encode_sample(
        KEY, sample_format.ClipSample(**{**_clip_fields(clip), "text": {"caption": caption, "empty": empty}}),
        aux_size=AUX)["text.safetensors"]})
    stored = sample_format.decode_sample(raw)["text"]
    assert torch.equal(stored["caption"], caption) and torch.equal(stored["empty"], empty)
    assert caption.shape[0] == 4 and empty.shape[0] == 1  # three words and </s>; </s> alone

    sample = dict(with_latents, text=stored)
    kept = build_training_sample(sample, CFG, seed=0)
    dropped = build_training_sample(sample, CFG.model_copy(update={"text_dropout": 1.0}), seed=0)
    assert torch.equal(kept.text, caption) and kept.prompt == "a quiet room"
    assert torch.equal(dropped.text, empty) and dropped.prompt == "" and dropped.dropped_text
    batch = collate([kept, dropped])
    prompts = PromptEncoder(tokenizer, encoder, max_length=16)
    assert torch.equal(ShardTextStates(16).for_batch(batch), prompts.for_batch(batch))
    assert torch.equal(prompts.for_batch(batch), encode_prompt(tokenizer, encoder, ["a quiet room", ""], 16))
    assert collate([kept, build_training_sample(with_latents, CFG, seed=0)]).texts is None  # one lacks them
    with pytest.raises(ValueError, match="not every one carries"):
        ShardTextStates(16).for_batch(collate([build_training_sample(with_latents, CFG, seed=0)]))
    with pytest.raises(ValueError, match="more than max_length=2"):
        ShardTextStates(2).for_batch(batch)


def _clip_fields(raw) -> dict:
    """The ``ClipSample`` of a raw sample (decoded again), for re-encoding it with more members."""
    d = sample_format.decode_sample(raw)
    return dict(frames=d["frames"], c2w=d["c2w"], K=d["K"], depth=d["depth"], static=d["static"], fps=d["fps"],
                source_uri=d["meta"]["source_uri"], frame_indices=d["meta"]["frame_indices"],
                depth_frames=d["depth_frames"])
