"""Revisit consistency: do frames generated at the same camera pose on the way out and on the way
back agree? (The closed-loop "return to start" check of docs/method.md §7; a spatial memory should make them
agree, a memoryless generator forgets what it saw.)

* ``psnr(a, b)`` and ``ssim(a, b)`` compare uint8 RGB frames, (H, W, 3) or batches (N, H, W, 3).
  SSIM is the standard one (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
  K2 = 0.03, dynamic range 255, computed per colour channel over the "valid" window positions
  (no padding; this equals scikit-image's ``gaussian_weights=True, use_sample_covariance=False``
  after its border crop) and averaged over positions, channels and frames.
* ``revisit_pairs(trajectory)`` finds frame pairs (i, j), j > i + min_gap, whose cameras have the
  same pose (rotation within ``rot_tol_deg``, centre within ``trans_tol`` x the trajectory extent).
* ``revisit_consistency(frames, trajectory)`` averages PSNR / SSIM over those pairs.

Pure torch / numpy: no Ray, no I/O.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from mirage_model.geometry.trajectory import Trajectory

__all__ = ["MAX_PSNR_DB", "psnr", "revisit_consistency", "revisit_pairs", "ssim"]

MAX_PSNR_DB = 100.0
"""PSNR of identical frames is infinite; ``revisit_consistency`` caps each pair here so means stay
finite (and JSON-serialisable)."""

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_DATA_RANGE = 255.0


def _as_images(x: Any, name: str) -> torch.Tensor:
    """uint8 (H, W), (H, W, C) or (N, H, W, C) -> float64 (N, C, H, W)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 frames, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim != 4:
        raise ValueError(f"{name}: expected (H, W), (H, W, C) or (N, H, W, C), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float64).permute(0, 3, 1, 2)


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _as_images(a, "a"), _as_images(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return ta, tb


def psnr(a: Any, b: Any, max_db: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB of uint8 frames ``b`` against ``a`` (MSE over all pixels).

    Identical inputs give ``inf`` (or ``max_db`` when given; every result is capped at it).
    """
    ta, tb = _pair(a, b)
    mse = float(((ta - tb) ** 2).mean())
    value = math.inf if mse == 0 else 10.0 * math.log10(_DATA_RANGE ** 2 / mse)
    return min(value, max_db) if max_db is not None else value


@lru_cache(maxsize=4)
def _gaussian_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(x: torch.Tensor) -> torch.Tensor:
    """Separable 11x11 Gaussian filter, valid positions only: (B, 1, H, W) -> (B, 1, H-10, W-10)."""
    g = _gaussian_1d()
    x = torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1))
    return torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1))


def ssim(a: Any, b: Any) -> float:
    """Mean structural similarity of uint8 frames (see the module docstring); 1.0 when identical.

    Frames must be at least 11x11 pixels.
    """
    ta, tb = _pair(a, b)
    n, c, h, w = ta.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise ValueError(f"ssim: frames must be at least {_SSIM_WIN}x{_SSIM_WIN}, got {h}x{w}")
    x = ta.reshape(n * c, 1, h, w)
    y = tb.reshape(n * c, 1, h, w)
    mu_x, mu_y = _filter(x), _filter(y)
    var_x = _filter(x * x) - mu_x ** 2
    var_y = _filter(y * y) - mu_y ** 2
    cov = _filter(x * y) - mu_x * mu_y
    c1 = (_SSIM_K1 * _DATA_RANGE) ** 2
    c2 = (_SSIM_K2 * _DATA_RANGE) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


def _rotation_angles_deg(R: torch.Tensor) -> torch.Tensor:
    """(N, N) pairwise rotation angles in degrees of (N, 3, 3) rotations.

    Uses ``theta = 2 asin(||Ri - Rj||_F / (2 sqrt 2))``, which (unlike ``acos`` of the trace) stays
    accurate for nearly identical rotations.
    """
    flat = R.reshape(len(R), 9)
    dist = torch.cdist(flat, flat)
    return torch.rad2deg(2 * torch.asin((dist / (2 * math.sqrt(2))).clamp(max=1.0)))


def revisit_pairs(trajectory: Trajectory, rot_tol_deg: float = 0.5, trans_tol: float = 0.01,
                  min_gap: int = 8) -> list[tuple[int, int]]:
    """Frame pairs (i, j) with ``j > i + min_gap`` whose cameras share a pose.

    Two poses match when their rotations differ by at most ``rot_tol_deg`` degrees and their
    centres by at most ``trans_tol`` times the trajectory extent (the largest distance between two
    camera centres; a trajectory that never moves matches on rotation alone). For each later frame
    ``j`` the earliest visit is used: the first run of consecutive matching earlier frames, and
    within it the frame whose pose is closest to ``j``'s (so a finely sampled path pairs exactly
    mirrored frames, not the first one inside the tolerance). ``min_gap`` keeps neighbouring frames
    of a slow camera from counting as revisits.
    """
    if rot_tol_deg < 0 or trans_tol < 0 or min_gap < 0:
        raise ValueError("rot_tol_deg, trans_tol and min_gap must be >= 0")
    n = len(trajectory)
    if n < min_gap + 2:
        return []
    c2w = trajectory.c2w.to(torch.float64)
    centres = c2w[:, :3, 3]
    rot = _rotation_angles_deg(c2w[:, :3, :3])
    dist = torch.cdist(centres, centres)
    extent = float(dist.max())
    tol = trans_tol * extent
    match = (rot <= rot_tol_deg) & (dist <= tol)
    # pose distance used to pick the best frame inside a run: angle relative to the tolerance plus
    # centre distance relative to the extent
    score = rot / max(rot_tol_deg, 1e-12) + (dist / extent if extent > 0 else torch.zeros_like(dist))
    pairs: list[tuple[int, int]] = []
    for j in range(min_gap + 1, n):
        limit = j - min_gap  # candidates i < limit, i.e. j > i + min_gap
        cand = torch.nonzero(match[j, :limit]).flatten()
        if len(cand) == 0:
            continue
        first = int(cand[0])
        end = first
        while end + 1 < limit and bool(match[j, end + 1]):
            end += 1
        best = first + int(torch.argmin(score[j, first:end + 1]))
        pairs.append((best, j))
    return pairs


def revisit_consistency(frames: Any, trajectory: Trajectory, **pair_kwargs: Any) -> dict[str, Any]:
    """Mean PSNR / SSIM between frames at revisited poses: ``{"psnr", "ssim", "pairs"}``.

    ``frames`` is (N, H, W, 3) uint8 with ``N == len(trajectory)``. Each pair's PSNR is capped at
    ``MAX_PSNR_DB``. A trajectory without revisits gives ``psnr = ssim = nan`` and ``pairs = 0``.
    ``pair_kwargs`` go to ``revisit_pairs`` (``rot_tol_deg``, ``trans_tol``, ``min_gap``).
    """
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames: expected (N, H, W, 3), got shape {arr.shape}")
    if len(arr) != len(trajectory):
        raise ValueError(f"frames: {len(arr)} frames for a trajectory of {len(trajectory)} cameras")
    pairs = revisit_pairs(trajectory, **pair_kwargs)
    if not pairs:
        return {"psnr": math.nan, "ssim": math.nan, "pairs": 0}
    # one pair at a time: full-size frames in float64 would otherwise need GBs for a long video
    psnrs = [psnr(arr[i], arr[j], max_db=MAX_PSNR_DB) for i, j in pairs]
    ssims = [ssim(arr[i], arr[j]) for i, j in pairs]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "pairs": len(pairs)}
