"""Wan2.2 VAE (48 latent channels, 16x spatial, 4x temporal) presets, loading and encode/decode.

All presets are diffusers' ``AutoencoderKLWan``; only the config differs:

* ``tiny``: a few channels, random weights, for tests (encodes 17x64x64 in ~0.1 s on CPU).
* ``full``: the real Wan2.2-TI2V-5B VAE architecture (~705 M parameters), random weights, for
  benchmarks.
* a path: a diffusers-format directory, either a pipeline root holding ``vae/`` (the
  Wan2.2-TI2V-5B-Diffusers layout) or the ``vae/`` folder itself. Nothing is fetched from a hub.

Latents handed to and returned by this module are *normalised* the way the Wan pipelines do it:
``(z - latents_mean) / latents_std``; that is the space the transformer and the latent memory use.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from mirage_model.seeded import seeded_model

log = logging.getLogger(__name__)

# Published per-channel statistics of the Wan2.2 VAE latent space (vae/config.json of
# Wan2.2-TI2V-5B-Diffusers).
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]

_COMMON = dict(
    z_dim=48, dim_mult=[1, 2, 4, 4], attn_scales=[], temperal_downsample=[False, True, True],  # sic
    dropout=0.0, latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD, is_residual=True,
    in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
)
VAE_PRESETS: dict[str, dict] = {
    "tiny": dict(_COMMON, base_dim=16, decoder_base_dim=24, num_res_blocks=1),
    "full": dict(_COMMON, base_dim=160, decoder_base_dim=256, num_res_blocks=2),
}


def build_vae(preset: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> AutoencoderKLWan:
    """A Wan2.2-architecture VAE with random weights drawn deterministically from ``seed``."""
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; choose from {sorted(VAE_PRESETS)} or give a path")
    return seeded_model(AutoencoderKLWan, VAE_PRESETS[preset], seed, dtype).requires_grad_(False)


def resolve_vae_dir(path: str | os.PathLike) -> Path:
    """The directory holding the VAE's config.json: ``path`` itself or ``path/vae``."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"VAE path {root} does not exist")
    for cand in (root, root / "vae"):
        cfg = cand / "config.json"
        if cfg.is_file():
            with open(cfg) as f:
                data = json.load(f)
            if data.get("_class_name") not in (None, "AutoencoderKLWan"):
                continue
            return cand
    raise FileNotFoundError(
        f"{root}: no AutoencoderKLWan config.json here or in {root / 'vae'} "
        "(expected a diffusers-format directory such as Wan2.2-TI2V-5B-Diffusers)")


def load_vae(spec: str | os.PathLike = "tiny", dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", seed: int = 0) -> AutoencoderKLWan:
    """A preset name (``tiny``/``full``) or a local diffusers-format directory (never a hub id), in
    eval mode with gradients off (``mirage train-vae`` turns them back on to fine-tune). Weights are
    float32 unless ``dtype`` says otherwise, whatever the files store (an exported world keeps its
    VAE in float16 to halve its size): the Wan VAE is meant to run in float32."""
    if isinstance(spec, str) and spec in VAE_PRESETS:
        vae = build_vae(spec, seed=seed, dtype=dtype or torch.float32)
    else:
        vae_dir = resolve_vae_dir(spec)
        log.info("loading Wan VAE from %s", vae_dir)
        vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=dtype or torch.float32, local_files_only=True)
        if vae.config.z_dim != 48 or (vae.config.scale_factor_spatial or 8) != 16:
            raise ValueError(f"{vae_dir}: expected a Wan2.2 VAE (z_dim 48, spatial factor 16), got "
                             f"z_dim {vae.config.z_dim}, factor {vae.config.scale_factor_spatial}")
    return vae.eval().requires_grad_(False).to(device)


def vae_factors(vae: AutoencoderKLWan) -> tuple[int, int]:
    """(temporal, spatial) compression factors."""
    return int(vae.config.scale_factor_temporal), int(vae.config.scale_factor_spatial)


def _stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def check_video_shape(video: torch.Tensor, vae: AutoencoderKLWan, name: str = "video") -> None:
    """Raise ValueError unless ``video`` is (B, 3, 4n+1, H, W) with H, W multiples of the VAE stride."""
    ft, fs = vae_factors(vae)
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{name}: expected (B, 3, T, H, W), got shape {tuple(video.shape)}")
    t, h, w = video.shape[2:]
    if (t - 1) % ft:
        raise ValueError(f"{name}: the Wan VAE needs {ft}n + 1 frames, got {t}")
    if h % fs or w % fs:
        raise ValueError(f"{name}: height and width must be multiples of {fs}, got {h}x{w}")


@torch.no_grad()
def encode_video(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """(B, 3, 4n+1, H, W) video in [-1, 1] -> normalised latents (B, 48, n+1, H/16, W/16).

    Uses the posterior mode (deterministic), as the Wan pipelines do for conditioning frames.
    """
    check_video_shape(video, vae)
    param = next(vae.parameters())
    z = vae.encode(video.to(param.device, param.dtype)).latent_dist.mode()
    mean, std = _stats(vae, z)
    return (z - mean) / std


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents (B, 48, T', h, w) -> video (B, 3, 4(T'-1)+1, 16h, 16w) in [-1, 1]."""
    param = next(vae.parameters())
    latents = latents.to(param.device, param.dtype)
    mean, std = _stats(vae, latents)
    return vae.decode(latents * std + mean).sample.clamp(-1, 1)
