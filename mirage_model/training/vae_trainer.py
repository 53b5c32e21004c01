"""Training a Wan2.2-family VAE (``AutoencoderKLWan``: 48 channels, 16x spatial, 4x temporal) on
video clips: the recipe behind ``mirage train-vae`` (docs/method.md, "A VAE the CPU can train").

The architecture is diffusers' ``AutoencoderKLWan`` with the Wan2.2 structure (patchified,
residual, causal in time); only the widths are reduced (``VAEWidths``). The objective is the
reconstruction of short clips (``4n + 1`` frames, so the causal temporal path is trained, not only
the first frame) at the frame size it will code (whole frames by default): L1 + MSE on the decoded posterior mode, plus a light KL term
that keeps the posterior a proper Gaussian. After training, the per-channel mean and standard
deviation of the latents over the training clips are written into the model's config
(``latents_mean`` / ``latents_std``), so that ``mirage_model.vae.encode_video`` hands the
transformer and the latent memory unit-scale latents, exactly as with the published Wan2.2 VAE.
A decoder-only fine-tune (``train_vae(..., decoder_only=True)``) changes neither the encoder nor
these statistics, so a world already trained on its latents stays valid; what it did for the
shipped world is in docs/method.md §11.

Pure torch; no Ray, no files (``jobs.train_vae`` reads the videos, saves and tracks).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKLWan
from pydantic import Field, model_validator
from transformers import get_wsd_schedule

from mirage_model.config import StrictConfig
from mirage_model.seeded import seeded_model
from mirage_model.vae import VAE_PRESETS, decode_latents, encode_video

log = logging.getLogger(__name__)


class VAEWidths(StrictConfig):
    """The reduced widths of a trainable Wan2.2 VAE (the published model: 160 / 256 / 2)."""

    base_dim: int = Field(16, ge=4, description="encoder channels at full resolution (x1, 2, 4, 4 deeper)")
    decoder_base_dim: int = Field(24, ge=4, description="decoder channels at full resolution")
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per resolution")

    def config(self) -> dict:
        """``AutoencoderKLWan`` keyword arguments: the Wan2.2 structure with these widths."""
        return dict(VAE_PRESETS["tiny"], base_dim=self.base_dim, decoder_base_dim=self.decoder_base_dim,
                    num_res_blocks=self.num_res_blocks)


class VAETrainSettings(StrictConfig):
    """How ``train_vae`` optimises: AdamW, linear warm-up then cosine decay to ``min_lr_ratio``
    (transformers' ``get_wsd_schedule`` without a plateau)."""

    steps: int = Field(1500, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="clips per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate / peak")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps")
    crop: tuple[int, int] | None = Field(None, description="(h, w) random crop of each clip, multiples of 16; "
                                         "null: whole frames. Crops smaller than the frames the VAE will code do "
                                         "not train it: the mid-block attention spans the whole latent grid")
    kl_weight: float = Field(1e-6, ge=0, description="KL term against the per-pixel L1 + MSE reconstruction loss")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    latent_noise: float = Field(0.0, ge=0, description="decoder_only: Gaussian noise added to the latents before "
                                "decoding, per clip of strength U(0, latent_noise) x each channel's standard "
                                "deviation (latents_std): a decoder for a generator's imperfect latents")
    seed: int = Field(0, description="weights, crops and clip order")
    log_every: int = Field(50, ge=1, description="steps between logged training metrics")

    @model_validator(mode="after")
    def _check(self) -> VAETrainSettings:
        if self.crop is not None and (self.crop[0] % 16 or self.crop[1] % 16 or min(self.crop) < 16):
            raise ValueError(f"crop must be multiples of 16 (the VAE's stride), got {self.crop}")
        return self


def build_trainable_vae(widths: VAEWidths | None = None, seed: int = 0) -> AutoencoderKLWan:
    """A Wan2.2-structure VAE of ``widths`` (default ``VAEWidths()``) with seeded random weights, in train mode."""
    return seeded_model(AutoencoderKLWan, (widths or VAEWidths()).config(), seed).train().requires_grad_(True)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2, as for images in [0, 1] with peak 1)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


def _random_batch(clips: torch.Tensor, s: VAETrainSettings, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, T, h, w) random crops (on the 16-pixel grid; whole frames without ``crop``) of random
    clips, randomly mirrored."""
    n, _, _, H, W = clips.shape
    h, w = s.crop if s.crop is not None else (H, W)
    if h > H or w > W:
        raise ValueError(f"crop {s.crop} is larger than the clips ({H}x{W})")
    out = []
    for _ in range(s.batch_size):
        i = int(torch.randint(n, (1,), generator=gen))
        y = int(torch.randint((H - h) // 16 + 1, (1,), generator=gen)) * 16
        x = int(torch.randint((W - w) // 16 + 1, (1,), generator=gen)) * 16
        crop = clips[i, :, :, y:y + h, x:x + w]
        if bool(torch.rand(1, generator=gen) < 0.5):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out).float()


def decoder_parameters(vae: AutoencoderKLWan) -> list[torch.nn.Parameter]:
    """The weights after the latent (``post_quant_conv`` and the decoder): what a decoder-only
    fine-tune changes, leaving every latent the encoder gives as it was."""
    return [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]


def train_vae(vae: AutoencoderKLWan, clips: torch.Tensor, settings: VAETrainSettings,
              callback: Callable[[dict], None] | None = None, decoder_only: bool = False) -> list[dict]:
    """Optimise ``vae`` (in place) to reconstruct ``clips`` (N, 3, 4n+1, H, W) in [-1, 1].

    AdamW with warm-up and cosine decay. ``decoder_only``: the encoder is frozen (run without
    gradients), so the latents of every video, and whatever was trained on them, stay valid.
    Returns the logged rows, one every ``settings.log_every`` steps and at the last (``step``,
    ``loss``, ``psnr`` of that batch in dB, ``lr``, ``seconds`` since the start), each also passed
    to ``callback``.
    """
    if clips.ndim != 5 or clips.shape[1] != 3 or (clips.shape[2] - 1) % 4:
        raise ValueError(f"clips: expected (N, 3, 4n+1, H, W), got {tuple(clips.shape)}")
    if settings.latent_noise > 0 and not decoder_only:
        raise ValueError("latent_noise trains a decoder for given latents: only with decoder_only")
    gen = torch.Generator().manual_seed(settings.seed)
    params = decoder_parameters(vae) if decoder_only else list(vae.parameters())
    vae.train().requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if decoder_only:  # the frozen half runs as at inference
        vae.encoder.eval()
        vae.quant_conv.eval()
    channel_std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.99))
    schedule = get_wsd_schedule(opt, num_warmup_steps=settings.warmup_steps,  # longer than the run: no peak
                                num_decay_steps=max(0, settings.steps - settings.warmup_steps),
                                num_training_steps=settings.steps, min_lr_ratio=settings.min_lr_ratio)
    history, start = [], time.perf_counter()
    for step in range(settings.steps):
        x = _random_batch(clips, settings, gen)
        with torch.set_grad_enabled(not decoder_only):
            posterior = vae.encode(x).latent_dist
        z = posterior.mode()
        if settings.latent_noise > 0:
            strength = torch.rand(len(z), 1, 1, 1, 1, generator=gen) * settings.latent_noise
            z = z + strength * channel_std * torch.randn(z.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + settings.kl_weight * posterior.kl().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE training diverged at step {step} (loss {float(loss)})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        if step % settings.log_every == 0 or step == settings.steps - 1:
            row = {"step": step, "loss": loss.item(), "psnr": psnr_db(rec.detach().clamp(-1, 1), x),
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
            history.append(row)
            log.info("VAE step %d/%d: loss %.4f, batch PSNR %.2f dB", step, settings.steps, row["loss"], row["psnr"])
            if callback is not None:
                callback(row)
        schedule.step()
    vae.eval().requires_grad_(False)
    return history


@torch.no_grad()
def raw_latent_statistics(vae: AutoencoderKLWan, clips: torch.Tensor, batch: int = 2) -> tuple[list, list]:
    """Per-channel mean and standard deviation of the un-normalised posterior-mode latents of
    ``clips`` (what ``latents_mean`` / ``latents_std`` of a Wan VAE config hold)."""
    total = sq = None
    count = 0
    for i in range(0, len(clips), batch):
        z = vae.encode(clips[i:i + batch].float()).latent_dist.mode().double()
        zc = z.transpose(0, 1).reshape(z.shape[1], -1)
        total = zc.sum(1) if total is None else total + zc.sum(1)
        sq = (zc ** 2).sum(1) if sq is None else sq + (zc ** 2).sum(1)
        count += zc.shape[1]
    mean = total / count
    std = (sq / count - mean ** 2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def set_latent_statistics(vae: AutoencoderKLWan, clips: torch.Tensor) -> None:
    """Write the latents' per-channel statistics over ``clips`` into ``vae.config`` (saved with it)."""
    mean, std = raw_latent_statistics(vae, clips)
    vae.register_to_config(latents_mean=mean, latents_std=std)


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKLWan, clips: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(PSNR in dB over all frames, reconstructions) of whole clips (N, 3, 4n+1, H, W) in [-1, 1],
    through the normalised path the pipeline uses (``encode_video`` then ``decode_latents``)."""
    recs = torch.cat([decode_latents(vae, encode_video(vae, clips[i:i + 1].float())) for i in range(len(clips))])
    return psnr_db(recs, clips), recs
