"""``mirage train-vae``: a Wan2.2-family VAE trained on video clips, saved as a diffusers directory.

    mirage synth-data --out runs/world/videos --n 24
    mirage train-vae --videos runs/world/videos --output runs/world

The videos (a directory, glob, manifest or ``s3://`` prefix) are split by name: the last
``held_out`` never reach training and give the reported PSNR. Training runs in up to two phases:
``image_train`` on single frames (the spatial code, fast), then ``train`` on clips of
``clip_frames`` frames (``4n + 1``: the causal temporal path) spread over each training video; the
recipe itself is ``mirage_model.training.vae_trainer``. Outputs, in ``output`` (a local directory):

* ``vae/``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (``AutoencoderKLWan``), with
  the latents' per-channel statistics in the config. ``mirage_model.vae.load_vae`` loads it, so
  it goes wherever a VAE is named: ``latents.vae`` of ``mirage preprocess``, the generator.
* ``vae_reconstructions.png``: held-out frames (top) and their reconstructions (bottom).
* ``vae_summary.json``: the PSNR on training and held-out clips, timings, the config.

Tracked in MLflow like every job (loss and PSNR curves, the summary and the PNG as artifacts).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.accounting import SUMMARY_FILE, job_summary, write_summary
from jobs.config import TrainVAEConfig
from jobs.tracking import Tracker
from mirage_model.io.atomic import atomic_write_text
from mirage_model.training.vae_trainer import (
    build_trainable_vae,
    reconstruction_psnr,
    set_latent_statistics,
    train_vae,
)
from pipeline import storage
from pipeline.stages import decode_uri

log = logging.getLogger(__name__)

SUMMARY_NAME = "vae_summary.json"
PREVIEW_NAME = "vae_reconstructions.png"


def _centre_crop(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    H, W = frames.shape[1:3]
    h, w = size if size is not None else (H // 16 * 16, W // 16 * 16)
    if h > H or w > W or h < 16 or w < 16:
        raise ValueError(f"frames of {H}x{W} cannot give a {h}x{w} crop (multiples of 16, at least 16)")
    y, x = (H - h) // 2, (W - w) // 2
    return frames[:, y:y + h, x:x + w]


def _decode(uris: list[str], size, options) -> list[tuple[str, np.ndarray]]:
    """(uri, centre-cropped uint8 frames) of each video; one that cannot be read is skipped with a warning."""
    out = []
    for uri in uris:
        try:
            out.append((uri, _centre_crop(decode_uri(uri, options).frames, size)))
        except ValueError as exc:
            log.warning("train-vae: skipping %s: %s", uri, exc)
    return out


def _windows(videos: list[tuple[str, np.ndarray]], frames_per_clip: int, per_video: int) -> torch.Tensor:
    """(N, 3, T, H, W) clips in [-1, 1]: ``per_video`` windows of ``frames_per_clip`` frames spread
    over each decoded video (fewer when it is short; none, with a warning, when it is too short)."""
    out = []
    for uri, frames in videos:
        n = len(frames)
        if n < frames_per_clip:
            log.warning("train-vae: skipping %s: %d frames, a clip needs %d", uri, n, frames_per_clip)
            continue
        starts = sorted(set(np.linspace(0, n - frames_per_clip, min(per_video, n - frames_per_clip + 1))
                            .round().astype(int).tolist()))
        for s in starts:
            clip = torch.from_numpy(np.ascontiguousarray(frames[s:s + frames_per_clip]))
            out.append(clip.permute(3, 0, 1, 2).float().div(127.5).sub(1))
    if not out:
        raise ValueError(f"no clip of {frames_per_clip} frames in {len(videos)} readable video(s)")
    sizes = {tuple(c.shape[-2:]) for c in out}
    if len(sizes) > 1:
        raise ValueError(f"videos of different sizes {sorted(sizes)}: give max_size to crop them alike")
    return torch.stack(out)


def _clips(uris: list[str], frames_per_clip: int, per_video: int, size, options) -> torch.Tensor:
    """``_windows`` of the videos at ``uris``."""
    return _windows(_decode(uris, size, options), frames_per_clip, per_video)


def _preview(truth: torch.Tensor, recon: torch.Tensor, path: Path, frames: int = 4) -> None:
    """Held-out frames (top row) over their reconstructions (bottom row), as a PNG."""
    from PIL import Image

    idx = np.linspace(0, truth.shape[2] - 1, frames).round().astype(int)
    to_img = lambda v: ((v.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()  # noqa: E731
    rows = [np.concatenate([to_img(v[:, i]) for i in idx], axis=1) for v in (truth[0], recon[0])]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def _save(vae, out: Path) -> Path:
    """``out/vae`` replaced atomically by the new weights (written next to it, then renamed)."""
    final, tmp = out / "vae", out / storage.tmp_name("vae")
    if tmp.exists():
        shutil.rmtree(tmp)
    vae.save_pretrained(tmp, safe_serialization=True)
    if final.exists():
        old = out / storage.tmp_name("vae-old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def run_train_vae(config: TrainVAEConfig) -> dict[str, Any]:
    """Train, score on the held-out videos, save ``output/vae``; returns the summary (also written)."""
    t_start = time.perf_counter()
    options = config.storage.options()
    uris = storage.list_files(config.videos, options)
    if len(uris) <= config.held_out:
        raise ValueError(f"{config.videos}: {len(uris)} video(s); need more than held_out={config.held_out}")
    train_uris, held_uris = uris[:-config.held_out], uris[-config.held_out:]
    log.info("train-vae: %d training videos, %d held out", len(train_uris), len(held_uris))
    videos = _decode(train_uris, config.max_size, options)  # decoded once for both phases
    clips = _windows(videos, config.clip_frames, config.clips_per_video)
    phases = [("clips", clips, config.train)]
    if config.image_train is not None:
        phases.insert(0, ("frames", _windows(videos, 1, config.image_frames_per_video), config.image_train))
    del videos
    held = _clips(held_uris, config.eval_frames, 1, config.max_size, options)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.train.seed)
    if config.init:
        from mirage_model.vae import load_vae

        vae = load_vae(config.init).train().requires_grad_(True)  # fine-tune: its own widths, not config.widths
    else:
        vae = build_trainable_vae(config.widths, seed=config.train.seed)
    n_params = sum(p.numel() for p in vae.parameters())
    tracker = Tracker.start(config.mlflow, "train-vae", params=config.model_dump(mode="json"))
    try:
        history, offset, train_s = [], 0, 0.0
        for phase, data, settings in phases:
            log.info("train-vae: %d steps on %d %s of %d frame(s)", settings.steps, len(data), phase, data.shape[2])
            rows = train_vae(vae, data, settings, decoder_only=config.decoder_only,
                             callback=lambda row, o=offset: tracker.log_metrics(
                                 {"loss": row["loss"], "batch_psnr": row["psnr"], "lr": row["lr"]},
                                 step=o + row["step"]))
            history += [dict(row, step=offset + row["step"], phase=phase, seconds=train_s + row["seconds"])
                        for row in rows]
            offset, train_s = offset + settings.steps, train_s + rows[-1]["seconds"]
        if not config.decoder_only:  # a decoder-only fine-tune keeps the latents, and so their statistics
            set_latent_statistics(vae, clips)
        t_eval = time.perf_counter()
        train_psnr, _ = reconstruction_psnr(vae, clips[:: max(1, len(clips) // 8)])
        held_psnr, recon = reconstruction_psnr(vae, held)
        eval_s = time.perf_counter() - t_eval
        path = _save(vae, out)
        _preview(held, recon, out / PREVIEW_NAME)
        summary = {
            "vae": str(path), "parameters": n_params, "train_videos": len(train_uris), "held_out_videos": held_uris,
            "train_clips": int(len(clips)), "clip_shape": list(clips.shape[1:]),
            "train_psnr_db": round(train_psnr, 3), "held_out_psnr_db": round(held_psnr, 3),
            "target_psnr_db": config.target_psnr, "target_met": bool(held_psnr >= config.target_psnr),
            "phases": {phase: {"steps": settings.steps, "items": int(len(data)), "frames": int(data.shape[2])}
                       for phase, data, settings in phases},
            "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
            "wall_s": round(time.perf_counter() - t_start, 1), "history": history,
            "preview": str(out / PREVIEW_NAME), "config": config.model_dump(mode="json"),
        }
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2))
        tracker.log_metrics({"train_psnr_db": train_psnr, "held_out_psnr_db": held_psnr,
                             "wall_s": summary["wall_s"]}, step=offset)
        frames = sum(int(data.shape[0] * data.shape[2]) for _, data, _ in phases)  # (N, 3, T, H, W) per phase
        summary["summary"] = write_summary(job_summary(
            "train-vae", summary["wall_s"], inputs=len(uris), clips=int(len(clips)) + len(held),
            frames=frames, bytes_in=sum(storage.size(u, options) for u in uris),
            stage_seconds={"train": summary["train_seconds"], "evaluate": summary["eval_seconds"]},
            stage_items={"train": sum(st.steps * st.batch_size for _, _, st in phases), "evaluate": len(held)},
            details={k: summary[k] for k in ("vae", "held_out_psnr_db", "train_psnr_db", "target_met")}),
            str(out / SUMMARY_FILE), options, tracker)
        tracker.log_artifact(str(out / SUMMARY_NAME))
        tracker.log_artifact(str(out / PREVIEW_NAME))
        tracker.finish()
    except BaseException:
        tracker.finish("FAILED")
        raise
    summary["mlflow"] = tracker.summary()
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    met = "met" if summary["target_met"] else "NOT met"
    return (f"VAE ({summary['parameters'] / 1e6:.1f} M parameters) trained on {summary['train_clips']} clips of "
            f"{summary['train_videos']} videos in {summary['train_seconds']:.0f} s: PSNR {summary['train_psnr_db']:.2f} dB "
            f"on training clips, {summary['held_out_psnr_db']:.2f} dB on {len(summary['held_out_videos'])} held-out "
            f"videos (target {summary['target_psnr_db']:.0f} dB: {met}).\nSaved to {summary['vae']}; preview "
            f"{summary['preview']}")
