"""Wan2.2 VAE presets and loading a diffusers-format directory by path."""

import json

import pytest
import torch

from mirage_model.vae import VAE_PRESETS, build_vae, decode_latents, encode_video, load_vae, resolve_vae_dir


def test_tiny_preset_has_the_wan22_latent_geometry():
    vae = build_vae("tiny")
    assert vae.config.z_dim == 48 and vae.spatial_compression_ratio == 16
    assert vae.config.scale_factor_temporal == 4
    video = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    z = encode_video(vae, video)
    assert z.shape == (1, 48, 3, 4, 6)
    out = decode_latents(vae, z)
    assert out.shape == video.shape and out.abs().max() <= 1


def test_presets_are_deterministic_and_full_is_the_real_architecture():
    a, b = build_vae("tiny", seed=3), build_vae("tiny", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    full = VAE_PRESETS["full"]
    assert (full["base_dim"], full["decoder_base_dim"], full["z_dim"]) == (160, 256, 48)
    assert len(full["latents_mean"]) == len(full["latents_std"]) == 48


def test_load_from_pipeline_root_and_vae_dir(tmp_path):
    vae = build_vae("tiny", seed=1)
    vae.save_pretrained(tmp_path / "Wan2.2-mini" / "vae")
    root = tmp_path / "Wan2.2-mini"
    for spec in (root, root / "vae"):
        loaded = load_vae(str(spec))
        assert resolve_vae_dir(spec) == root / "vae"
        for p, q in zip(vae.parameters(), loaded.parameters()):
            assert torch.equal(p, q)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vae(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no AutoencoderKLWan config.json"):
        load_vae(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown VAE preset"):
        build_vae("huge")
    # A Wan2.1 VAE (16 channels, 8x) is rejected: the memory needs the Wan2.2 latent space.
    from diffusers import AutoencoderKLWan

    old = AutoencoderKLWan(base_dim=8, num_res_blocks=1)
    old.save_pretrained(tmp_path / "wan21")
    with pytest.raises(ValueError, match="expected a Wan2.2 VAE"):
        load_vae(str(tmp_path / "wan21"))
    assert json.loads((tmp_path / "wan21" / "config.json").read_text())["z_dim"] == 16


def test_bad_video_shapes():
    vae = build_vae("tiny")
    with pytest.raises(ValueError, match="4n \\+ 1 frames"):
        encode_video(vae, torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match="multiples of 16"):
        encode_video(vae, torch.zeros(1, 3, 5, 60, 64))
