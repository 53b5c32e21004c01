"""The memory ablation (docs/method.md §12): closed camera paths through a scene with exact ground
truth, and what a generated video along them is measured by.

* ``ABLATION_PATHS`` / ``closed_path(name, frames, image_size)``: pan-and-return, orbit-and-back and
  forward-and-back, each a one-way path followed by the same poses in reverse, so every frame of the
  second half revisits a view of the first.
* ``latent_snr_db(pred, ref)``: fidelity in the model's own latent space, ``10 log10(content / MSE)``
  with ``content`` the spatial variance of the reference latent frames (0 dB = no better than each
  latent frame's per-channel mean, which holds nothing of the scene's layout). It isolates the memory and the transformer
  from the VAE: pixel PSNR can never exceed what the VAE's own reconstruction reaches.
* ``score_generation(...)``: per generated video, PSNR / SSIM against the ground-truth render on the
  revisit frames and on all frames, latent SNR against the ground truth's own latents, revisit
  self-consistency (frame out vs frame back), the memory's coverage of the revisit frames, the
  per-chunk seconds of each memory operation and the cache size.

Pure torch / numpy: the job ``mirage eval-memory`` runs it over scenes with Ray Data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mirage_model.geometry.trajectory import Trajectory, dolly, orbit, pan_and_return, there_and_back
from mirage_model.memory.latent import TEMPORAL_STRIDE  # latent k is pixel frame 4k

from .revisit import MAX_PSNR_DB, psnr, revisit_consistency, revisit_pairs, ssim

__all__ = ["ABLATION_PATHS", "closed_path", "latent_snr_db", "revisit_latent_pairs", "score_generation"]

ABLATION_PATHS = ("pan-and-return", "orbit-and-back", "forward-and-back")


def closed_path(name: str, frames: int, image_size: tuple[int, int], fov_x_deg: float = 60.0) -> Trajectory:
    """A camera path of ``frames`` (odd) cameras that returns to its start along the same poses.

    Sized for ``mirage_model.synthetic.default_scene`` (a camera at the origin sees walls and
    furniture at 1.5-5.7 m): ``pan-and-return`` turns 60 degrees right while moving 0.3 m right;
    ``orbit-and-back`` arcs 40 degrees around the point 1.5 m ahead; ``forward-and-back`` walks 1 m
    ahead. Frame ``i`` and ``frames - 1 - i`` share a pose.
    """
    if frames < 3 or frames % 2 == 0:
        raise ValueError(f"closed_path: frames must be odd and >= 3, got {frames}")
    half = (frames + 1) // 2
    if name == "pan-and-return":
        return pan_and_return(frames, yaw_degrees=60.0, translation=(0.3, 0.0, 0.0), image_size=image_size,
                              fov_x_deg=fov_x_deg)
    if name == "orbit-and-back":
        out = orbit(half, radius=1.5, center=(0.0, 0.0, 1.5), degrees=40.0, image_size=image_size,
                    fov_x_deg=fov_x_deg)
    elif name == "forward-and-back":
        out = dolly(half, distance=1.0, image_size=image_size, fov_x_deg=fov_x_deg)
    else:
        raise ValueError(f"unknown ablation path {name!r}; choose from {', '.join(ABLATION_PATHS)}")
    return there_and_back(out)


def latent_snr_db(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """``10 log10(content(ref) / mean((pred - ref)^2))``, capped at ``MAX_PSNR_DB``.

    For latent grids (``(..., h, w)``) ``content`` is the spatial variance of each latent frame and
    channel, averaged: 0 dB is no better than filling every latent frame with its per-channel mean,
    which carries nothing of the scene's layout (with the CPU world's VAE that flat part is ~90 % of
    the latents' total variance, so a plain variance would flatter any prediction). For
    ``(channels, cells)`` inputs (selected cells) it is each channel's variance over the cells,
    averaged; for 1-D inputs the plain variance.
    """
    pred, ref = torch.as_tensor(pred).double(), torch.as_tensor(ref).double()
    if pred.shape != ref.shape:
        raise ValueError(f"latent_snr_db: shapes differ, {tuple(pred.shape)} vs {tuple(ref.shape)}")
    mse = float(((pred - ref) ** 2).mean())
    if ref.ndim >= 3:
        var = float(ref.var(dim=(-2, -1), unbiased=False).mean())
    elif ref.ndim == 2:
        var = float(ref.var(dim=-1, unbiased=False).mean())
    else:
        var = float(ref.var())
    if mse == 0:
        return MAX_PSNR_DB
    return min(10.0 * math.log10(max(var, 1e-30) / mse), MAX_PSNR_DB)


def revisit_latent_pairs(trajectory: Trajectory, pairs: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Latent-frame pairs (k_out, k_back) whose pixel frames (4k) form a revisit pair (``pairs``:
    the trajectory's ``revisit_pairs`` when already computed)."""
    pairs = revisit_pairs(trajectory) if pairs is None else pairs
    return [(i // TEMPORAL_STRIDE, j // TEMPORAL_STRIDE) for i, j in pairs
            if i % TEMPORAL_STRIDE == 0 and j % TEMPORAL_STRIDE == 0]


def _frame_scores(frames: np.ndarray, reference: np.ndarray, idx: list[int]) -> tuple[float, float]:
    if not idx:
        return math.nan, math.nan
    ps = [psnr(reference[i], frames[i], max_db=MAX_PSNR_DB) for i in idx]
    ss = [ssim(reference[i], frames[i]) for i in idx]
    return float(np.mean(ps)), float(np.mean(ss))


def score_generation(frames: np.ndarray, latents: torch.Tensor | None, visibility: torch.Tensor | None,
                     chunk_stats: list[dict], trajectory: Trajectory, reference: np.ndarray,
                     reference_latents: torch.Tensor) -> dict[str, Any]:
    """Every figure of one generated video against its ground truth.

    Args:
        frames: (N, H, W, 3) uint8 generated; ``reference``: the ground-truth render, same shape.
        latents: (48, N // 4 + 1, h, w) generated latents (``GenerationResult.latents``).
        visibility: (N // 4 + 1, h, w) memory cells read per latent frame (None without memory).
        chunk_stats: ``GenerationResult.chunk_stats``.
        reference_latents: the VAE's latents of ``reference`` (same shape as ``latents``).
    Returns:
        ``psnr_gt_revisit`` / ``ssim_gt_revisit`` (frames of the way back that revisit a view),
        ``psnr_gt_all`` / ``ssim_gt_all`` (every generated frame after the first),
        ``latent_snr_revisit`` / ``latent_snr_all`` (dB, against ``reference_latents``),
        ``revisit_consistency_psnr`` / ``_ssim`` (frame out vs frame back) and
        ``revisit_consistency_latent_snr`` (latent out vs latent back), ``revisit_pairs``,
        ``covered_consistency_latent_snr`` (the same, on the cells the memory covered when the way
        back was generated: the readout's wiring, exact copies give ``MAX_PSNR_DB``),
        ``coverage_revisit`` (fraction of the revisit latents' cells the memory covered),
        ``chunk_seconds``, ``memory_seconds`` and ``op_seconds`` (means per chunk), ``cache_bytes``,
        ``points_written`` and ``cells`` (the write-back's cell accounting summed over chunks:
        read, covered, written, and skipped by reason; see ``generator.py``).
    """
    n = len(trajectory)
    if frames.shape != reference.shape or len(frames) != n:
        raise ValueError(f"frames {frames.shape} and reference {reference.shape} must both be ({n}, H, W, 3)")
    pairs = revisit_pairs(trajectory)
    back = sorted({j for _, j in pairs})
    out: dict[str, Any] = {"revisit_pairs": len(pairs), "frames": n}
    out["psnr_gt_revisit"], out["ssim_gt_revisit"] = _frame_scores(frames, reference, back)
    out["psnr_gt_all"], out["ssim_gt_all"] = _frame_scores(frames, reference, list(range(1, n)))
    lat_pairs = revisit_latent_pairs(trajectory, pairs)
    lat_out, lat_back = [i for i, _ in lat_pairs], [j for _, j in lat_pairs]  # one entry per pair
    out["covered_consistency_latent_snr"] = math.nan
    if latents is not None:
        if latents.shape != reference_latents.shape:
            raise ValueError(f"latents {tuple(latents.shape)} and reference latents "
                             f"{tuple(reference_latents.shape)} differ")
        revisited = sorted(set(lat_back))
        out["latent_snr_revisit"] = latent_snr_db(latents[:, revisited], reference_latents[:, revisited]) \
            if revisited else math.nan
        out["latent_snr_all"] = latent_snr_db(latents[:, 1:], reference_latents[:, 1:])
        out["revisit_consistency_latent_snr"] = latent_snr_db(latents[:, lat_back], latents[:, lat_out]) \
            if lat_pairs else math.nan
        if visibility is not None and lat_pairs and bool(visibility[lat_back].any()):
            cells = visibility[lat_back].reshape(-1)  # the covered cells of the revisit latents
            flat = latents.shape[0], -1
            out["covered_consistency_latent_snr"] = latent_snr_db(
                latents[:, lat_back].reshape(flat)[:, cells], latents[:, lat_out].reshape(flat)[:, cells])
    rc = revisit_consistency(frames, trajectory)
    out["revisit_consistency_psnr"], out["revisit_consistency_ssim"] = rc["psnr"], rc["ssim"]
    if visibility is not None and lat_back:
        out["coverage_revisit"] = float(visibility[sorted(set(lat_back))].float().mean())
    else:
        out["coverage_revisit"] = 0.0
    ops: dict[str, float] = {}
    for c in chunk_stats:
        for k, v in (c.get("op_seconds") or {}).items():
            ops[k] = ops.get(k, 0.0) + v / len(chunk_stats)
    out["op_seconds"] = ops
    out["chunk_seconds"] = float(np.mean([c["seconds"] for c in chunk_stats])) if chunk_stats else math.nan
    out["memory_seconds"] = float(np.mean([c.get("memory_seconds", 0.0) for c in chunk_stats])) \
        if chunk_stats else math.nan
    out["cache_bytes"] = int(chunk_stats[-1]["cache_bytes"]) if chunk_stats else 0
    out["points_written"] = int(sum(c.get("points_written", 0) for c in chunk_stats))
    cells: dict[str, int] = {}
    for c in chunk_stats:
        for k, v in (c.get("cells") or {}).items():
            cells[k] = cells.get(k, 0) + int(v)
    out["cells"] = cells
    return out
