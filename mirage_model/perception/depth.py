"""Depth for frames with known cameras: weight-free plane-sweep stereo, and an optional learned model.

Conventions are those of ``mirage_model.geometry.camera``: OpenCV axes, 4x4 float64 camera-to-world
poses, intrinsics in pixels, the centre of pixel column ``i`` at ``x = i``. Depth is camera
z-depth (not ray length) in the units of the poses' translations ("pose scale"): scaling every
camera translation by ``s`` scales the estimated depth by ``s``.

Plane sweep (``plane_sweep_depth``)
    Its settings (``num_depths``, ``patch``, ... below) are the fields of one ``StereoParams``
    (``mirage_model.perception.params``), passed as ``params=``. For a reference frame and a few
    neighbours with known poses, ``num_depths`` fronto-parallel planes (in the reference camera)
    are sampled uniformly in *inverse* depth. A plane at depth
    ``d`` induces the homography ``H = K_n (R + t e3^T / d) K_r^-1`` from the reference into
    neighbour ``n`` (``[R | t]`` = reference-to-neighbour), so a reference pixel ``p`` lands at
    ``A p + rho b`` with ``A = K_n R K_r^-1``, ``b = K_n t`` and ``rho = 1 / d`` -- one
    multiply-add per plane (``mirage_model.geometry.warp.relative_warp``). Each neighbour is resampled with ``grid_sample`` (all planes of a chunk
    in one call) and compared with the reference by zero-mean normalised cross-correlation (ZNCC)
    over a ``patch`` x ``patch`` window on grey images. The cost ``1 - ZNCC`` (0 = perfect) is
    aggregated over neighbours by the mean of the best half (robust to occlusion in some views),
    optionally smoothed over a small window, then winner-take-all with a parabola fit through the
    three costs around the minimum (sub-plane refinement in inverse depth).

    A view that does not see the pixel on a plane (outside its image or behind it) contributes the
    uninformative cost ``unseen_cost`` (= ZNCC 0) there, so planes seen by few views cannot win on
    a single lucky match.

    Confidence = match quality (``1 - best cost``) x distinctiveness (gap between the best cost
    and the best cost more than two planes away, relative to ``ratio_margin`` -- the cost-ratio
    test). Invalid (depth 0) when any of:

    * confidence below ``min_confidence``;
    * low texture: the reference patch is almost flat (sky, blank walls);
    * the minimum is on the first or last plane (the surface is outside the depth range);
    * some plane was not seen by any neighbour (the true depth may be one nobody could test --
      image borders of the first/last frames);
    * multi-view disagreement: of the neighbours that saw the pixel on every plane, fewer than
      ``min_agree`` have their own best plane within ``agree_planes`` of the winner (this also
      removes most of an independently moving object, whose matches do not agree).

    ``estimate_depth_video`` additionally checks multi-view geometric consistency (each depth
    must agree with a neighbour's depth after reprojection, the multi-view analogue of a
    left-right check). Depth discontinuities fatten by up to ~2 px (the ZNCC window), e.g. a thin
    valid fringe of sky along a wall's top edge.

Learned depth (``learned_depth``)
    A transformers depth model (DPT / Depth Anything) loaded from a *local* directory predicts
    relative depth or inverse depth; ``fit_depth_alignment`` fits scale (and shift, in inverse
    depth) to known metric samples -- the SfM points that project into the frame, or a stereo
    depth -- robustly (least squares repeated on the samples whose relative residual stays within
    three median residuals: wrong points and the model's own outliers drop out), and records the
    median residual as the fit's quality (``DepthFit``); ``align_depth`` applies it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mirage_model.geometry.camera import (
    as_tensor,
    invert_pose,
    pixel_grid,
    project_points,
    scale_intrinsics,
    validate_intrinsics,
    validate_pose,
)
from mirage_model.geometry.warp import relative_warp, reproject_depth
from mirage_model.io.images import to_uint8

from .params import CellStereoParams, StereoParams

logger = logging.getLogger(__name__)

__all__ = [
    "CellStereoParams",
    "DepthResult",
    "StereoParams",
    "align_depth",
    "cell_sweep_depth",
    "default_depth_range",
    "estimate_depth_video",
    "geometric_consistency",
    "learned_depth",
    "plane_sweep_depth",
    "select_neighbours",
    "to_gray",
]

_GRAY = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Result type and input helpers
# ----------------------------------------------------------------------------------------------
@dataclass
class DepthResult:
    """Depth of one frame.

    depth: (H, W) float32 camera z-depth in pose scale, 0 where invalid.
    confidence: (H, W) float32 in [0, 1].
    valid: (H, W) bool.
    raw_depth: (H, W) float32 winner-take-all depth before any filtering (0 where no neighbour saw
        the pixel); useful for diagnostics, never for writing memory.
    depth_range: the (near, far) that was swept.
    neighbours: the frame indices that were matched against.
    """

    depth: torch.Tensor
    confidence: torch.Tensor
    valid: torch.Tensor
    raw_depth: torch.Tensor | None = None
    depth_range: tuple[float, float] | None = None
    neighbours: tuple[int, ...] = field(default_factory=tuple)
    fit: DepthFit | None = None  # learned depth: its alignment to the metric samples

    @property
    def coverage(self) -> float:
        """Fraction of pixels with valid depth."""
        return float(self.valid.float().mean())


def to_gray(frames) -> torch.Tensor:
    """Grey images (..., H, W) float32 in [0, 1] from RGB (..., H, W, 3) or grey (..., H, W).

    Accepts torch tensors or numpy arrays, float in [0, 1] or uint8 in [0, 255].
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
    if x.ndim >= 3 and x.shape[-1] == 3:
        x = x @ torch.tensor(_GRAY, dtype=x.dtype, device=x.device)
    elif x.ndim >= 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x.contiguous()


def _intrinsics_per_frame(K, n: int) -> torch.Tensor:
    K = validate_intrinsics(K, "K")
    if K.ndim == 2:
        return K.expand(n, 3, 3).clone()
    if K.shape != (n, 3, 3):
        raise ValueError(f"K: expected (3, 3) or ({n}, 3, 3), got {tuple(K.shape)}")
    return K


def _poses(c2w, n: int | None = None) -> torch.Tensor:
    c2w = validate_pose(c2w, "c2w")
    if c2w.ndim != 3 or (n is not None and c2w.shape[0] != n):
        raise ValueError(f"c2w: expected ({n if n is not None else 'N'}, 4, 4), got {tuple(c2w.shape)}")
    return c2w


# ----------------------------------------------------------------------------------------------
# Neighbours and depth range
# ----------------------------------------------------------------------------------------------
def select_neighbours(c2w, ref_index: int, *, per_side: int = 2, min_baseline: float | None = None,
                      max_offset: int = 8) -> list[int]:
    """Frames to match ``ref_index`` against: up to ``per_side`` before and after it.

    Walking outwards from the reference on each side, a frame is taken when its camera centre is at
    least ``min_baseline`` from the reference's and from the frames already taken (near-duplicate
    views add cost but no parallax). Default ``min_baseline``: half the median distance between
    consecutive camera centres of the sequence (scale-free). If a side has no usable frame, the
    other side may contribute up to ``2 * per_side``.
    """
    c2w = _poses(c2w)
    n = c2w.shape[0]
    if not 0 <= ref_index < n:
        raise IndexError(f"ref_index {ref_index} out of range for {n} frames")
    centres = c2w[:, :3, 3]
    if min_baseline is None:
        steps = (centres[1:] - centres[:-1]).norm(dim=-1)
        steps = steps[steps > 0]
        min_baseline = 0.5 * float(steps.median()) if len(steps) else 0.0
    chosen: list[int] = []

    def take(candidates, limit):
        got = 0
        for j in candidates:
            if got >= limit:
                break
            if float((centres[j] - centres[ref_index]).norm()) < max(min_baseline, 1e-12):
                continue
            if any(float((centres[j] - centres[k]).norm()) < min_baseline for k in chosen):
                continue
            chosen.append(j)
            got += 1
        return got

    before = range(ref_index - 1, max(-1, ref_index - 1 - max_offset), -1)
    after = range(ref_index + 1, min(n, ref_index + 1 + max_offset))
    nb = take(before, per_side)
    na = take(after, per_side)
    if nb < per_side:
        take([j for j in after if j not in chosen], per_side - nb)
    if na < per_side:
        take([j for j in before if j not in chosen], per_side - na)
    return sorted(chosen)


def default_depth_range(K_ref: torch.Tensor, c2w_ref: torch.Tensor, c2w_nb: torch.Tensor,
                        image_size: tuple[int, int], points=None, *,
                        max_disparity: float = 0.3, min_disparity: float = 0.25) -> tuple[float, float]:
    """(near, far) for a sweep.

    With ``points`` (M, 3) world points (e.g. the SfM sparse cloud): the 2nd / 98th percentiles of
    their depth in the reference camera (points in front and inside the image), widened by 0.6x /
    1.6x. Otherwise from the baselines alone: ``near`` makes the largest disparity
    ``max_disparity`` x image width in the widest-baseline neighbour, ``far`` leaves
    ``min_disparity`` pixels in the narrowest one (both scale with the poses).
    """
    h, w = image_size
    if points is not None:
        pts = as_tensor(points, torch.float64, "points").reshape(-1, 3)
        uv, z = project_points(pts, K_ref[None], invert_pose(c2w_ref)[None])
        uv, z = uv[0], z[0]
        ok = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
        if int(ok.sum()) >= 8:
            zs = z[ok]
            near = float(torch.quantile(zs, 0.02)) * 0.6
            far = float(torch.quantile(zs, 0.98)) * 1.6
            return near, far
        logger.debug("default_depth_range: only %d points in view; using baselines", int(ok.sum()))
    base = (c2w_nb[:, :3, 3] - c2w_ref[:3, 3]).norm(dim=-1)
    if float(base.max()) <= 0:
        raise ValueError("default_depth_range: neighbours have no baseline (pure rotation); give depth_range")
    f = float(K_ref[0, 0])
    near = f * float(base.max()) / (max_disparity * w)
    far = f * float(base[base > 0].min()) / min_disparity
    return near, max(far, 2.0 * near)


# ----------------------------------------------------------------------------------------------
# Plane sweep
# ----------------------------------------------------------------------------------------------
def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a k x k window (same size; the window shrinks at the border)."""
    if k <= 1:
        return x
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-style (antialiased) resize of (..., H, W) images."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    lead = img.shape[:-2]
    out = F.interpolate(img.reshape(-1, 1, *img.shape[-2:]), size=size, mode="bilinear",
                        align_corners=False, antialias=True)
    return out.reshape(*lead, *size)


MIN_PLANES = 8
"""Fewest planes a sweep uses, however narrow its disparity span."""
PLANE_SPACING_PX = 0.75
"""Disparity between neighbouring planes (widest-baseline neighbour) when the range is narrow."""


def _sweep_inputs(frames, K, c2w, ref_index: int, neighbours, depth_range, points, who: str):
    """Checked inputs of a sweep: grey frames, per-frame K and poses (CPU), the neighbours and (near, far)."""
    gray = to_gray(frames)
    if gray.ndim != 3:
        raise ValueError(f"frames: expected (N, H, W[, 3]), got {tuple(gray.shape)}")
    n, H, W = gray.shape
    Ks = _intrinsics_per_frame(K, n).cpu()
    c2w = _poses(c2w, n).cpu()
    if not 0 <= ref_index < n:
        raise IndexError(f"ref_index {ref_index} out of range for {n} frames")
    if neighbours is None:
        neighbours = select_neighbours(c2w, ref_index)
    neighbours = [int(j) for j in neighbours if int(j) != ref_index]
    if not neighbours:
        raise ValueError(f"{who}: no neighbours for frame {ref_index}")
    if depth_range is None:
        depth_range = default_depth_range(Ks[ref_index], c2w[ref_index], c2w[neighbours], (H, W), points)
    near, far = (float(v) for v in depth_range)
    if not (0 < near < far):
        raise ValueError(f"depth_range must satisfy 0 < near < far, got {depth_range}")
    return gray, Ks, c2w, neighbours, near, far


def check_parallax(Kw: torch.Tensor, c2w: torch.Tensor, ref_index: int, neighbours: Sequence[int],
                   near: float, far: float, min_px: float, who: str) -> float:
    """Disparity span of the range ``[near, far]`` in the widest-baseline neighbour, in pixels of the
    intrinsics ``Kw`` (a sweep's working resolution, or the frames').

    Raises ``ValueError`` below ``min_px``: a sweep there cannot tell its planes apart (a pure
    rotation, or too short a baseline for the scene's depth), so depth is not observable.
    """
    baseline = float((c2w[list(neighbours), :3, 3] - c2w[ref_index, :3, 3]).norm(dim=-1).max())
    span = float(Kw[ref_index, 0, 0]) * baseline * (1.0 / near - 1.0 / far)
    if span < min_px:
        raise ValueError(f"{who}: frame {ref_index} has {span:.2f} px of parallax over "
                         f"[{near:.3g}, {far:.3g}] (a rotation?); depth is not observable")
    return span


def plane_sweep_depth(frames, K, c2w, ref_index: int, *, neighbours: Sequence[int] | None = None,
                      depth_range: tuple[float, float] | None = None, points=None,
                      params: StereoParams = StereoParams()) -> DepthResult:
    """Plane-sweep multi-view stereo for frame ``ref_index`` with known cameras.

    Args:
        frames: (N, H, W, 3) RGB or (N, H, W) grey, float [0, 1] or uint8 (torch or numpy).
        K: (3, 3) shared or (N, 3, 3) intrinsics of ``frames``.
        c2w: (N, 4, 4) OpenCV camera-to-world poses.
        ref_index: the frame to estimate.
        neighbours: frames to match against (default ``select_neighbours``).
        depth_range: (near, far) in pose units; default ``default_depth_range`` (from ``points``
            when given, else from the baselines).
        points: optional (M, 3) world points (sparse SfM cloud) for the default range.
        params: the sweep's settings (``StereoParams``: planes, window, thresholds, working scale).
    Returns:
        ``DepthResult`` at the input resolution, on the device of ``frames``.

    Cost: ~2 s of one CPU core at 240x320 with 4 neighbours and 64 planes (``scale=0.5``: ~0.5 s).
    """
    num_depths, patch, scale, chunk = params.num_depths, params.patch, params.scale, params.chunk
    gray, Ks, c2w, neighbours, near, far = _sweep_inputs(frames, K, c2w, ref_index, neighbours, depth_range,
                                                         points, "plane_sweep_depth")
    H, W = gray.shape[1:]
    dev = gray.device

    # Working resolution.
    h, w = (H, W) if scale == 1.0 else (max(8, round(H * scale)), max(8, round(W * scale)))
    imgs = _resize(gray[[ref_index] + neighbours], (h, w))
    Kw = scale_intrinsics(Ks, (H, W), (h, w)) if (h, w) != (H, W) else Ks
    ref = imgs[0][None, None]  # (1, 1, h, w)
    nbr = imgs[1:][:, None]  # (V, 1, h, w)
    V = len(neighbours)

    # Reference patch statistics.
    mu_r = _box(ref, patch)
    var_r = (_box(ref * ref, patch) - mu_r * mu_r).clamp_min(0)
    textured = var_r[0, 0] >= params.min_texture ** 2
    eps = 1e-6

    # p -> A p + rho * b for each neighbour (float64 set-up, float32 sweep).
    grid = pixel_grid(h, w, torch.float64)
    p = torch.cat([grid.reshape(-1, 2), torch.ones(h * w, 1, dtype=torch.float64)], dim=1)  # (P, 3)
    A, b = relative_warp(Kw[ref_index], c2w[ref_index], Kw[neighbours], c2w[neighbours])  # (V, 3, 3), (V, 3)
    Ap = torch.einsum("vij,pj->vip", A, p).float()  # (V, 3, P)
    b = b.float()
    Ap, b = Ap.to(dev), b.to(dev)
    # Planes about 0.75 px of disparity apart in the widest-baseline neighbour, at most
    # ``num_depths``: the distinctiveness and agreement tests count planes, so a tight range (from
    # sparse points) must not pack the planes sub-pixel close, where every plane costs the same.
    span_px = check_parallax(Kw, c2w, ref_index, neighbours, near, far, 0.0, "plane_sweep_depth")
    num_depths = int(min(num_depths, max(MIN_PLANES, math.ceil(span_px / PLANE_SPACING_PX) + 1)))
    rho = torch.linspace(1.0 / near, 1.0 / far, num_depths, dtype=torch.float64, device=dev)  # near first
    rho32 = rho.float()

    k_best = max(1, math.ceil(V / 2))
    cost = torch.empty(num_depths, h, w, device=dev)
    seen = torch.empty(num_depths, h, w, dtype=torch.uint8, device=dev)
    view_min = torch.full((V, h, w), float("inf"), device=dev)  # per-neighbour best cost and plane
    view_arg = torch.zeros((V, h, w), dtype=torch.long, device=dev)
    complete = torch.ones((V, h, w), dtype=torch.bool, device=dev)  # the view saw the pixel on every plane
    sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    margin = patch // 2
    for s in range(0, num_depths, chunk):
        r = rho32[s:s + chunk]
        C = len(r)
        q = Ap[:, None] + r[None, :, None, None] * b[:, None, :, None]  # (V, C, 3, P)
        z = q[:, :, 2]
        zs = torch.where(z > 1e-6, z, torch.full_like(z, 1e-6))
        u = q[:, :, 0] / zs
        v = q[:, :, 1] / zs
        # The whole patch must land inside the neighbour (margin of half a patch: the warp is
        # locally close to a translation).
        ok = (z > 1e-6) & (u >= margin - 0.5) & (u <= w - 0.5 - margin) \
            & (v >= margin - 0.5) & (v <= h - 0.5 - margin)
        g = torch.stack([u * sx - 1.0, v * sy - 1.0], dim=-1).reshape(V, C * h, w, 2)
        warped = F.grid_sample(nbr, g, mode="bilinear", padding_mode="border", align_corners=True)
        warped = warped.reshape(V * C, 1, h, w)
        mu_w = _box(warped, patch)
        m_rw = _box(warped * ref, patch)
        var_w = (_box(warped.square_(), patch) - mu_w * mu_w).clamp_min(0)
        cov = m_rw - mu_w * mu_r
        zncc = cov / torch.sqrt((var_w + eps) * (var_r + eps))
        c = (1.0 - zncc.clamp(-1.0, 1.0)).reshape(V, C, h, w)
        ok = ok.reshape(V, C, h, w)
        c = torch.where(ok, c, torch.full_like(c, float("inf")))
        complete &= ok.all(dim=1)
        cm, ci = c.min(dim=1)
        better = cm < view_min
        view_min = torch.where(better, cm, view_min)
        view_arg = torch.where(better, ci + s, view_arg)
        if V > 1:
            c = torch.sort(c, dim=0).values[:k_best]
        n_ok = ok.sum(0)
        # A view that does not see the pixel on this plane counts as an uninformative match.
        c = torch.where(torch.isfinite(c), c, torch.full_like(c, params.unseen_cost))
        cost[s:s + C] = c.mean(0)
        seen[s:s + C] = n_ok.to(torch.uint8)

    if params.cost_window > 1:
        cost = _box(cost[None], params.cost_window)[0]

    # Winner-take-all and parabola refinement in plane-index space.
    c1, best = cost.min(dim=0)
    lo = (best - 1).clamp_min(0)
    hi = (best + 1).clamp_max(num_depths - 1)
    c_lo = cost.gather(0, lo[None])[0]
    c_hi = cost.gather(0, hi[None])[0]
    denom = c_lo - 2.0 * c1 + c_hi
    offset = torch.where(denom > 1e-9, 0.5 * (c_lo - c_hi) / denom.clamp_min(1e-9), torch.zeros_like(c1))
    offset = offset.clamp(-0.5, 0.5)
    interior = (best > 0) & (best < num_depths - 1)
    offset = torch.where(interior, offset, torch.zeros_like(offset))
    idx = best.double() + offset.double()
    step = (rho[-1] - rho[0]) / (num_depths - 1)
    rho_hat = rho[0] + idx * step
    raw_depth = (1.0 / rho_hat).float()

    # Confidence: match quality x distinctiveness (cost ratio to the best plane away from the winner).
    planes = torch.arange(num_depths, device=dev)[:, None, None]
    away = (planes - best[None]).abs() > 2
    c2 = torch.where(away, cost, torch.full_like(cost, float("inf"))).amin(0)
    c2 = torch.where(torch.isfinite(c2), c2, torch.full_like(c2, 2.0))
    quality = (1.0 - c1).clamp(0.0, 1.0)
    distinct = ((c2 - c1) / params.ratio_margin).clamp(0.0, 1.0)
    confidence = quality * distinct
    n_seen = seen.gather(0, best[None])[0]
    tested = seen.amin(0) >= 1  # every depth hypothesis was compared with at least one view
    # Multi-view agreement: views that tested every plane vote with their own best plane.
    agree = ((view_arg - best[None]).abs() <= params.agree_planes) & complete
    n_agree = agree.sum(0)
    n_complete = complete.sum(0)
    need = torch.clamp(n_complete, max=params.min_agree).clamp_min(1)
    valid = (interior & textured & tested & (n_seen >= params.min_views) & (n_agree >= need)
             & (confidence >= params.min_confidence))
    confidence = torch.where(textured & (n_seen >= params.min_views), confidence, torch.zeros_like(confidence))
    raw_depth = torch.where(n_seen > 0, raw_depth, torch.zeros_like(raw_depth))

    if (h, w) != (H, W):
        raw_depth, confidence, valid = _upsample_result(raw_depth, confidence, valid, (H, W))
    depth = torch.where(valid, raw_depth, torch.zeros_like(raw_depth))
    return DepthResult(depth=depth.float(), confidence=confidence.float(), valid=valid,
                       raw_depth=raw_depth.float(), depth_range=(near, far), neighbours=tuple(neighbours))


def cell_sweep_depth(frames, K, c2w, ref_index: int, *, cell: int, neighbours: Sequence[int] | None = None,
                     depth_range: tuple[float, float] | None = None, points=None,
                     params: CellStereoParams = CellStereoParams()) -> DepthResult:
    """Plane-sweep stereo with one depth per ``cell`` x ``cell`` pixel cell (e.g. a latent cell).

    The same sweep as ``plane_sweep_depth`` (planes uniform in inverse depth, ``A p + rho b``
    warps, best half of the views, winner-take-all with a parabola fit, confidence = quality x
    distinctiveness), but the ZNCC window *is* the cell: the frames are resized so that a cell
    spans ``params.work_cell`` pixels, and each plane's cost is one normalised cross-correlation
    over the cell's pixels that land inside the neighbour (weighted, so cells at the image border
    are compared on what the neighbour sees). A memory that stores one point per latent cell needs
    nothing finer, a whole cell is far more distinctive than a 5x5 patch on soft (generated)
    frames, and the cost is a few milliseconds per frame.

    Args:
        frames, K, c2w, ref_index, neighbours, points: as in ``plane_sweep_depth``.
        cell: pixels per cell side; the frame size must be a multiple of it.
        depth_range: (near, far); default ``default_depth_range`` (from ``points`` when given,
            e.g. the memory's own points, else from the baselines).
        params: the sweep's settings (``CellStereoParams``); too little parallax for
            ``params.min_parallax_px`` raises ``ValueError`` (depth is not observable).
    Returns:
        ``DepthResult`` on the cell grid, (H / cell, W / cell).
    """
    num_depths, work_cell, chunk = params.num_depths, params.work_cell, params.chunk
    gray, Ks, c2w, neighbours, near, far = _sweep_inputs(frames, K, c2w, ref_index, neighbours, depth_range,
                                                         points, "cell_sweep_depth")
    H, W = gray.shape[1:]
    if cell < 1 or H % cell or W % cell:
        raise ValueError(f"cell_sweep_depth: frame size {H}x{W} is not a multiple of the cell {cell}")
    dev = gray.device

    gh, gw = H // cell, W // cell
    h, w = gh * work_cell, gw * work_cell
    imgs = _resize(gray[[ref_index] + neighbours], (h, w))
    Kw = scale_intrinsics(Ks, (H, W), (h, w))
    span_px = check_parallax(Kw, c2w, ref_index, neighbours, near, far, params.min_parallax_px, "cell_sweep_depth")
    num_depths = int(min(num_depths, max(MIN_PLANES, math.ceil(span_px / PLANE_SPACING_PX) + 1)))
    ref = imgs[0][None, None]  # (1, 1, h, w)
    nbr = imgs[1:][:, None]  # (V, 1, h, w)
    V = len(neighbours)

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, work_cell, stride=work_cell)

    var_ref = (pool(ref * ref) - pool(ref).square()).clamp_min(0)[0, 0]
    textured = var_ref >= params.min_texture ** 2
    grid = pixel_grid(h, w, torch.float64)
    p = torch.cat([grid.reshape(-1, 2), torch.ones(h * w, 1, dtype=torch.float64)], dim=1)
    A, b = relative_warp(Kw[ref_index], c2w[ref_index], Kw[neighbours], c2w[neighbours])
    Ap = torch.einsum("vij,pj->vip", A, p).float().to(dev)
    b = b.float().to(dev)
    rho = torch.linspace(1.0 / near, 1.0 / far, num_depths, dtype=torch.float64, device=dev)  # near first
    rho32 = rho.float()

    k_best = max(1, math.ceil(V / 2))
    cost = torch.empty(num_depths, gh, gw, device=dev)
    seen = torch.empty(num_depths, gh, gw, dtype=torch.uint8, device=dev)
    sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    eps = 1e-6
    for s in range(0, num_depths, chunk):
        r = rho32[s:s + chunk]
        C = len(r)
        q = Ap[:, None] + r[None, :, None, None] * b[:, None, :, None]  # (V, C, 3, P)
        z = q[:, :, 2]
        zs = torch.where(z > 1e-6, z, torch.full_like(z, 1e-6))
        u, v = q[:, :, 0] / zs, q[:, :, 1] / zs
        ok = ((z > 1e-6) & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)).float()
        g = torch.stack([u * sx - 1.0, v * sy - 1.0], dim=-1).reshape(V, C * h, w, 2)
        warped = F.grid_sample(nbr, g, mode="bilinear", padding_mode="border", align_corners=True)
        warped = warped.reshape(V * C, 1, h, w)
        wt = ok.reshape(V * C, 1, h, w)
        n_ok = pool(wt)
        norm = n_ok.clamp_min(eps)
        mr = pool(wt * ref) / norm
        mw = pool(wt * warped) / norm
        var_r = (pool(wt * ref * ref) / norm - mr * mr).clamp_min(0)
        var_w = (pool(wt * warped * warped) / norm - mw * mw).clamp_min(0)
        cov = pool(wt * warped * ref) / norm - mr * mw
        zncc = (cov / torch.sqrt((var_r + eps) * (var_w + eps))).clamp(-1.0, 1.0)
        visible = (n_ok >= params.min_overlap).reshape(V, C, gh, gw)
        c = torch.where(visible, (1.0 - zncc).reshape(V, C, gh, gw), torch.full_like(visible, float("inf"),
                                                                                      dtype=zncc.dtype))
        if V > 1:
            c = torch.sort(c, dim=0).values[:k_best]
        c = torch.where(torch.isfinite(c), c, torch.full_like(c, params.unseen_cost))
        cost[s:s + C] = c.mean(0)
        seen[s:s + C] = visible.sum(0).to(torch.uint8)

    c1, best = cost.min(dim=0)
    lo, hi = (best - 1).clamp_min(0), (best + 1).clamp_max(num_depths - 1)
    c_lo, c_hi = cost.gather(0, lo[None])[0], cost.gather(0, hi[None])[0]
    denom = c_lo - 2.0 * c1 + c_hi
    offset = torch.where(denom > 1e-9, 0.5 * (c_lo - c_hi) / denom.clamp_min(1e-9), torch.zeros_like(c1))
    interior = (best > 0) & (best < num_depths - 1)
    offset = torch.where(interior, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
    step = (rho[-1] - rho[0]) / (num_depths - 1)
    raw_depth = (1.0 / (rho[0] + (best.double() + offset.double()) * step)).float()

    planes = torch.arange(num_depths, device=dev)[:, None, None]
    c2 = torch.where((planes - best[None]).abs() > 2, cost, torch.full_like(cost, float("inf"))).amin(0)
    c2 = torch.where(torch.isfinite(c2), c2, torch.full_like(c2, 2.0))
    confidence = (1.0 - c1).clamp(0.0, 1.0) * ((c2 - c1) / params.ratio_margin).clamp(0.0, 1.0)
    n_seen = seen.gather(0, best[None])[0]
    confidence = torch.where(textured & (n_seen >= 1), confidence, torch.zeros_like(confidence))
    valid = interior & textured & (n_seen >= 1) & (confidence >= params.min_confidence)
    depth = torch.where(valid, raw_depth, torch.zeros_like(raw_depth))
    return DepthResult(depth=depth, confidence=confidence.float(), valid=valid, raw_depth=raw_depth,
                       depth_range=(near, far), neighbours=tuple(neighbours))


def _upsample_result(depth: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor,
                     size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upsample a low-resolution result: inverse depth interpolated over valid pixels only."""
    inv = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    vf = valid.float()[None, None]
    num = F.interpolate((inv * valid)[None, None], size=size, mode="bilinear", align_corners=False)
    den = F.interpolate(vf, size=size, mode="bilinear", align_corners=False)
    inv_up = (num / den.clamp_min(1e-6))[0, 0]
    valid_up = (den[0, 0] > 0.999) & (inv_up > 0)
    raw_inv = F.interpolate(inv[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    raw_up = torch.where(raw_inv > 0, 1.0 / raw_inv.clamp_min(1e-12), torch.zeros_like(raw_inv))
    depth_up = torch.where(valid_up, 1.0 / inv_up.clamp_min(1e-12), raw_up)
    conf_up = F.interpolate(confidence[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return depth_up, conf_up.clamp(0, 1), valid_up


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------
def geometric_consistency(results: dict[int, DepthResult], K, c2w, *, rel_tol: float = 0.03,
                          min_consistent: int = 1) -> dict[int, DepthResult]:
    """Multi-view check: keep a depth only if it agrees with >= ``min_consistent`` neighbours' depths.

    Each valid pixel of frame i is reprojected into every neighbour j that has a result; it is
    consistent with j when j's valid depth at the (rounded) landing pixel matches the reprojected
    depth within ``rel_tol`` (relative). Neighbours that see nothing there do not vote against.
    Frames with no neighbour result are returned unchanged.
    """
    c2w = _poses(c2w).cpu()
    Ks = _intrinsics_per_frame(K, c2w.shape[0]).cpu()
    out = {}
    for i, res in results.items():
        others = [j for j in res.neighbours if j in results]
        if not others:
            out[i] = res
            continue
        h, w = res.depth.shape
        votes = torch.zeros(h, w, dtype=torch.int32, device=res.depth.device)
        for j in others:
            uv, zd = reproject_depth(res.depth, Ks[i], c2w[i], Ks[j], c2w[j])
            col = torch.floor(uv[..., 0] + 0.5).long()
            row = torch.floor(uv[..., 1] + 0.5).long()
            inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (zd > 0)
            dj = results[j].depth[row.clamp(0, h - 1), col.clamp(0, w - 1)].double()
            agree = inside & (dj > 0) & ((dj - zd).abs() <= rel_tol * zd)
            votes += agree.int()
        keep = res.valid & (votes >= min_consistent)
        depth = torch.where(keep, res.depth, torch.zeros_like(res.depth))
        conf = torch.where(keep, res.confidence, res.confidence * 0.5)
        out[i] = DepthResult(depth=depth, confidence=conf, valid=keep, raw_depth=res.raw_depth,
                             depth_range=res.depth_range, neighbours=res.neighbours)
    return out


def estimate_depth_video(frames, K, c2w, indices: Sequence[int] | None = None, *,
                         params: StereoParams = StereoParams(), points=None,
                         depth_range: tuple[float, float] | None = None, per_side: int = 2,
                         min_baseline: float | None = None, consistency: bool | None = None,
                         consistency_tol: float = 0.03) -> list[DepthResult]:
    """Plane-sweep depth for ``indices`` (default: every frame) of a posed video.

    Each frame is swept by ``plane_sweep_depth`` with ``params`` (``StereoParams``), ``points`` /
    ``depth_range`` (see there) and neighbours chosen per frame by ``select_neighbours``
    (``per_side`` before and after, skipping views closer than ``min_baseline``). Multi-view
    geometric consistency (``geometric_consistency`` with ``consistency_tol``, which removes most
    mismatches and independently moving objects):

    * ``None`` (default): check each frame against those of its neighbours that are among
      ``indices`` (no extra work; with every frame requested, all of them);
    * ``True``: also compute the missing neighbours' depths for the check (up to ~5x the work);
    * ``False``: off.

    Returns one ``DepthResult`` per requested index, in order.
    """
    gray = to_gray(frames)
    n = gray.shape[0]
    c2w = _poses(c2w, n)
    Ks = _intrinsics_per_frame(K, n)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    nbrs = {i: select_neighbours(c2w, i, per_side=per_side, min_baseline=min_baseline) for i in range(n)}
    todo = list(dict.fromkeys(indices))
    if consistency:
        todo = list(dict.fromkeys(todo + [j for i in indices for j in nbrs[i]]))
    results = {}
    for i in todo:
        results[i] = plane_sweep_depth(gray, Ks, c2w, i, neighbours=nbrs[i], depth_range=depth_range,
                                       points=points, params=params)
    if consistency is not False and len(todo) > 1:
        checked = geometric_consistency({i: results[i] for i in todo}, Ks, c2w, rel_tol=consistency_tol)
        results.update({i: checked[i] for i in indices})
    return [results[i] for i in indices]


# ----------------------------------------------------------------------------------------------
# Learned depth (optional)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthFit:
    """A fitted alignment ``s * pred + t`` of a relative prediction to metric samples.

    residual: median over all samples of ``|fit - y| / y`` (``y``: inverse depth, or depth);
    explained: ``1 - residual / (the same for the best constant)``: near 1 when the prediction
    explains the samples' depths, near 0 (or below) when a flat depth would do as well;
    inliers: the fraction of samples the final fit used; samples: how many there were."""

    scale: float
    shift: float
    residual: float
    explained: float
    inliers: float
    samples: int


def fit_depth_alignment(pred, target_depth, valid=None, *, inverse: bool = True, fit_shift: bool = True,
                        min_samples: int = 8, rounds: int = 5) -> DepthFit:
    """Fit ``s * pred (+ t)`` to metric samples, robustly.

    Args:
        pred: (H, W) relative prediction. With ``inverse`` it is inverse depth / disparity (larger
            = nearer) and ``s * pred + t`` is fitted to ``1 / target_depth``; otherwise it is
            depth-like and ``s * pred (+ t)`` is fitted to ``target_depth``.
        target_depth: (H, W) metric depth samples (0 = no sample).
        valid: (H, W) bool of usable samples (default ``target_depth > 0``).
        fit_shift: fit the shift ``t`` too (default; without it, scale only).
        rounds: least-squares rounds; after each, only the samples whose relative residual is within
            three times the median (and at least 1 %) are kept for the next.
    """
    pred = _as_double(pred)
    target = _as_double(target_depth)
    if pred.shape != target.shape:
        raise ValueError(f"align_depth: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    m = target > 0
    if valid is not None:
        m &= _as_double(valid).bool()
    m &= torch.isfinite(pred)
    if int(m.sum()) < min_samples:
        raise ValueError(f"align_depth: only {int(m.sum())} valid samples (need {min_samples})")
    x = pred[m]
    y = 1.0 / target[m] if inverse else target[m]
    keep = torch.ones_like(x, dtype=torch.bool)
    for _ in range(rounds):
        xs, ys = x[keep], y[keep]
        if fit_shift:
            A = torch.stack([xs, torch.ones_like(xs)], dim=1)
            sol = torch.linalg.lstsq(A, ys[:, None]).solution[:, 0]
            s, t = float(sol[0]), float(sol[1])
        else:
            s, t = float((xs * ys).sum() / (xs * xs).sum().clamp_min(1e-24)), 0.0
        r = (s * x + t - y).abs() / y.abs().clamp_min(1e-12)
        new_keep = r <= max(3.0 * float(r[keep].median()), 0.01)
        if int(new_keep.sum()) < min_samples or torch.equal(new_keep, keep):
            break
        keep = new_keep
    flat = float(((y.median() - y).abs() / y.abs().clamp_min(1e-12)).median())
    residual = float(r.median())
    return DepthFit(scale=s, shift=t, residual=residual, explained=1.0 - residual / max(flat, 1e-12),
                    inliers=float(keep.double().mean()), samples=int(x.numel()))


def _as_double(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()


def apply_depth_alignment(pred, fit: DepthFit, *, inverse: bool = True) -> torch.Tensor:
    """(H, W) float32 depth of ``fit`` applied to ``pred``, 0 where the aligned value is not positive."""
    fitted = fit.scale * _as_double(pred) + fit.shift
    if inverse:
        depth = torch.where(fitted > 1e-12, 1.0 / fitted.clamp_min(1e-12), torch.zeros_like(fitted))
    else:
        depth = fitted.clamp_min(0.0)
    return depth.float()


def align_depth(pred, target_depth, valid=None, *, inverse: bool = True, fit_shift: bool = True,
                min_samples: int = 8) -> tuple[torch.Tensor, float, float]:
    """``fit_depth_alignment`` applied: (depth (H, W) float32, 0 where not positive, s, t)."""
    fit = fit_depth_alignment(pred, target_depth, valid, inverse=inverse, fit_shift=fit_shift,
                              min_samples=min_samples)
    return apply_depth_alignment(pred, fit, inverse=inverse), fit.scale, fit.shift


def load_depth_model(model_dir):
    """(model, image processor) of a transformers depth checkpoint in a local directory (eval mode)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    processor = AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
    return model, processor


def to_uint8_rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 of a frame given as float [0, 1] or uint8, RGB or grey, tensor or array."""
    x = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    x = to_uint8(x)  # uint8 passes through
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    return x


def learned_depth(frames, model_dir, *, sparse_points=None, K=None, c2w=None, reference=None,
                  output: str = "auto", fit_shift: bool = True, model=None, processor=None,
                  batch_size: int = 4) -> list[DepthResult]:
    """Monocular depth from a transformers model in a local directory, aligned to metric samples.

    Args:
        frames: (N, H, W, 3) or (H, W, 3) RGB, float [0, 1] or uint8.
        model_dir: a local directory with a DPT / Depth Anything checkpoint and its image processor
            (loaded with ``local_files_only=True``; nothing is downloaded).
        sparse_points: optional (M, 3) world points; with ``K`` and ``c2w`` ((N, 4, 4) or (4, 4))
            they give metric samples where they project (nearest pixel).
        reference: optional ``(depth, valid)`` per frame (tensors (N, H, W) or (H, W)), e.g. a
            plane-sweep result, used as metric samples instead.
        output: what the model predicts: ``"disparity"`` (inverse depth; DPT / Depth Anything
            relative checkpoints), ``"depth"``, or ``"auto"`` (``config.depth_estimation_type ==
            "metric"`` -> depth, else disparity).
        fit_shift: fit scale and shift (in inverse depth for disparity); else scale only.
    Returns:
        one ``DepthResult`` per frame. Without samples the raw prediction (``1 / disparity`` for
        disparity models) is returned with confidence 0.5 -- relative, not in pose scale.
    """
    if output not in ("auto", "disparity", "depth"):
        raise ValueError(f"output must be 'auto', 'disparity' or 'depth', got {output!r}")
    if model is None or processor is None:
        model, processor = load_depth_model(model_dir)
    single = (np.asarray(frames).ndim == 3) if not isinstance(frames, torch.Tensor) else frames.ndim == 3
    imgs = [to_uint8_rgb(f) for f in ([frames] if single else list(frames))]
    n = len(imgs)
    H, W = imgs[0].shape[:2]
    pred = predict_depth(model, processor, imgs, batch_size)

    targets = None
    if reference is not None:
        rd, rv = reference
        rd = torch.as_tensor(np.asarray(rd) if not isinstance(rd, torch.Tensor) else rd).float().reshape(n, H, W)
        rv = torch.as_tensor(np.asarray(rv) if not isinstance(rv, torch.Tensor) else rv).bool().reshape(n, H, W)
        targets = torch.where(rv, rd, torch.zeros_like(rd))
    elif sparse_points is not None:
        if K is None or c2w is None:
            raise ValueError("learned_depth: sparse_points need K and c2w")
        targets = sparse_depth_samples(sparse_points, K, c2w, (H, W))
    return align_predictions(pred, targets, inverse=depth_output(model, output) == "disparity", fit_shift=fit_shift)


def depth_output(model, output: str = "auto") -> str:
    """What a depth model predicts: ``output``, or for ``"auto"`` ``"depth"`` for metric
    checkpoints (``config.depth_estimation_type == "metric"``) and ``"disparity"`` otherwise."""
    if output not in ("auto", "disparity", "depth"):
        raise ValueError(f"output must be 'auto', 'disparity' or 'depth', got {output!r}")
    if output == "auto":
        return "depth" if getattr(model.config, "depth_estimation_type", None) == "metric" else "disparity"
    return output


@torch.no_grad()
def predict_depth(model, processor, images: Sequence[np.ndarray], batch_size: int = 4) -> torch.Tensor:
    """(N, H, W) float32 raw predictions of a transformers depth model for N uint8 RGB images of one
    size, ``batch_size`` images per forward, resized back to the images' size (bicubic)."""
    H, W = images[0].shape[:2]
    preds = []
    for s in range(0, len(images), batch_size):
        inputs = processor(images=list(images[s:s + batch_size]), return_tensors="pt").to(model.device)
        out = model(**inputs).predicted_depth.float().cpu()  # (B, h, w)
        preds.append(F.interpolate(out[:, None], size=(H, W), mode="bicubic", align_corners=False)[:, 0])
    return torch.cat(preds)


def sparse_depth_samples(points, K, c2w, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) depth of world ``points`` (M, 3) in each camera (``K`` (3, 3) or (N, 3, 3), ``c2w``
    (4, 4) or (N, 4, 4)) at their nearest pixel (the nearest point where several land on one), 0
    where none does."""
    H, W = size
    c2ws = validate_pose(c2w, "c2w").reshape(-1, 4, 4)
    n = c2ws.shape[0]
    Ks = _intrinsics_per_frame(K, n)
    pts = as_tensor(points, torch.float64, "sparse_points").reshape(-1, 3)
    targets = torch.zeros(n, H, W)
    uv, z = project_points(pts, Ks, invert_pose(c2ws))
    for i in range(n):
        col = torch.floor(uv[i, :, 0] + 0.5).long()
        row = torch.floor(uv[i, :, 1] + 0.5).long()
        ok = (z[i] > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
        order = torch.argsort(z[i][ok], descending=True)  # the nearest written last wins
        targets[i, row[ok][order], col[ok][order]] = z[i][ok][order].float()
    return targets


def align_predictions(pred: torch.Tensor, targets: torch.Tensor | None, *, inverse: bool = True,
                      fit_shift: bool = True) -> list[DepthResult]:
    """One ``DepthResult`` per frame of ``pred`` (N, H, W): aligned to ``targets`` (N, H, W metric
    samples, 0 = none) with ``fit_depth_alignment`` (confidence 1, the fit recorded); without
    targets the raw prediction (``1 / disparity`` for disparity models) with confidence 0.5 --
    relative, not in pose scale."""
    results = []
    for i in range(pred.shape[0]):
        fit = None
        if targets is None:
            raw = pred[i]
            depth = torch.where(raw > 1e-12, 1.0 / raw.clamp_min(1e-12), torch.zeros_like(raw)) if inverse \
                else raw.clamp_min(0)
            conf = 0.5
        else:
            fit = fit_depth_alignment(pred[i], targets[i], inverse=inverse, fit_shift=fit_shift)
            depth, conf = apply_depth_alignment(pred[i], fit, inverse=inverse), 1.0
        valid = depth > 0
        results.append(DepthResult(depth=depth.float(), confidence=valid.float() * conf, valid=valid,
                                   raw_depth=pred[i].float(), fit=fit))
    return results
