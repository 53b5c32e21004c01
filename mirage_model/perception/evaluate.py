"""Accuracy metrics of the perception stage against ground truth (poses, depth, masks).

Poses from SfM are defined up to a similarity, so pose metrics first align the predicted camera
centres to the ground truth with a Sim(3) (Umeyama, ``align_sim3``: ``gt ~ s R pred + t``):

* ``ate``: RMSE of the aligned camera centres, also relative to the trajectory extent (the largest
  distance between two ground-truth camera centres);
* ``rotation_error_deg``: per-frame angle between aligned predicted and true camera rotations.
  The global rotation is by default the one that best aligns the *orientations*
  (``align="rotation"``: the SO(3) projection of sum R_gt R_pred^T); ``align="sim3"`` uses the
  rotation of the centre Sim(3) instead, which is ill-defined when the centres are (nearly)
  collinear, e.g. a straight sideways move.

Depth: ``depth_abs_rel`` = mean |pred - gt| / gt over valid pixels (gt > 0, prediction finite and
> 0), optionally after one global median scale. Masks: ``mask_iou`` (two empty masks give 1).
Everything accepts numpy arrays or torch tensors and computes in float64 on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "ATEResult",
    "align_sim3",
    "ate",
    "depth_abs_rel",
    "evaluate_perception",
    "mask_iou",
    "rotation_error_deg",
]


def _t64(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(x), dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot convert to a tensor ({exc})") from exc


def _bool(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().bool()
    try:
        return torch.as_tensor(np.asarray(x)).bool()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot convert to a tensor ({exc})") from exc


def _poses_pair(pred_c2w, gt_c2w) -> tuple[torch.Tensor, torch.Tensor]:
    pred = _t64(pred_c2w, "pred_c2w")
    gt = _t64(gt_c2w, "gt_c2w")
    if pred.ndim != 3 or tuple(pred.shape[1:]) != (4, 4) or pred.shape != gt.shape:
        raise ValueError(f"expected two (N, 4, 4) pose arrays of the same N, got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")
    if not (torch.isfinite(pred).all() and torch.isfinite(gt).all()):
        raise ValueError("poses hold NaN/inf (select the valid frames first)")
    return pred, gt


# ----------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------
def _project_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (det +1) to a 3x3 matrix."""
    U, _, Vh = torch.linalg.svd(M)
    D = torch.eye(3, dtype=M.dtype)
    D[2, 2] = torch.sign(torch.linalg.det(U @ Vh))
    if D[2, 2] == 0:
        D[2, 2] = 1.0
    return U @ D @ Vh


def align_sim3(pred_centers, gt_centers,
               with_scale: bool = True) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Least-squares similarity (Umeyama 1991) with ``gt ~ s * R @ pred + t``.

    Args:
        pred_centers, gt_centers: (N, 3) corresponding points, N >= 2 (>= 3 non-collinear for a
            unique rotation).
        with_scale: estimate s (else s = 1: a rigid alignment).
    Returns:
        (s, R (3, 3) float64, t (3,) float64).
    """
    p = _t64(pred_centers, "pred_centers")
    g = _t64(gt_centers, "gt_centers")
    if p.ndim != 2 or p.shape[1] != 3 or p.shape != g.shape:
        raise ValueError(f"expected two (N, 3) arrays of the same N, got {tuple(p.shape)} and {tuple(g.shape)}")
    if p.shape[0] < 2:
        raise ValueError(f"need at least 2 points to align, got {p.shape[0]}")
    mp, mg = p.mean(0), g.mean(0)
    pc, gc = p - mp, g - mg
    var_p = float((pc * pc).sum(-1).mean())
    if var_p <= 1e-24:
        raise ValueError("predicted centres all coincide: no similarity can be estimated")
    cov = gc.T @ pc / p.shape[0]
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.ones(3, dtype=torch.float64)
    if float(torch.linalg.det(U) * torch.linalg.det(Vh)) < 0:
        D[2] = -1.0
    R = U @ torch.diag(D) @ Vh
    s = float((S * D).sum() / var_p) if with_scale else 1.0
    t = mg - s * R @ mp
    return s, R, t


def _rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Angles (degrees) of (..., 3, 3) rotations, accurate for small angles (atan2 form)."""
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                        R[..., 1, 0] - R[..., 0, 1]], dim=-1)
    sin = skew.norm(dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sin, cos))


def rotation_error_deg(pred_c2w, gt_c2w, align: str = "rotation") -> torch.Tensor:
    """(N,) angle in degrees between each aligned predicted rotation and the true one.

    ``align``: "rotation" (default; the global rotation best aligning the orientations),
    "sim3" (the rotation of ``align_sim3`` on the camera centres) or "none".
    """
    pred, gt = _poses_pair(pred_c2w, gt_c2w)
    Rp, Rg = pred[:, :3, :3], gt[:, :3, :3]
    if align == "rotation":
        Ra = _project_so3((Rg @ Rp.transpose(-1, -2)).sum(0))
    elif align == "sim3":
        Ra = align_sim3(pred[:, :3, 3], gt[:, :3, 3])[1]
    elif align == "none":
        Ra = torch.eye(3, dtype=torch.float64)
    else:
        raise ValueError(f"align must be 'rotation', 'sim3' or 'none', got {align!r}")
    return _rotation_angle_deg(Rg.transpose(-1, -2) @ Ra @ Rp)


class ATEResult(NamedTuple):
    """Absolute trajectory error after Sim(3) alignment of the camera centres."""

    rmse: float
    """RMSE of the aligned centres, in ground-truth units."""
    relative: float
    """``rmse / extent`` (a fraction; 0.01 = 1 %)."""
    extent: float
    """Largest distance between two ground-truth camera centres."""
    scale: float
    """Sim(3) scale s (gt ~ s R pred + t): ground-truth units per predicted unit."""
    R: torch.Tensor
    t: torch.Tensor


def ate(pred_c2w, gt_c2w, with_scale: bool = True) -> ATEResult:
    """Absolute trajectory error of the camera centres after ``align_sim3`` (see ``ATEResult``)."""
    pred, gt = _poses_pair(pred_c2w, gt_c2w)
    pc, gc = pred[:, :3, 3], gt[:, :3, 3]
    s, R, t = align_sim3(pc, gc, with_scale)
    err = (s * pc @ R.T + t - gc).norm(dim=-1)
    rmse = float(err.pow(2).mean().sqrt())
    extent = float(torch.cdist(gc, gc).max())
    rel = rmse / extent if extent > 0 else math.inf
    return ATEResult(rmse, rel, extent, s, R, t)


# ----------------------------------------------------------------------------------------------
# Depth and masks
# ----------------------------------------------------------------------------------------------
def _depth_pixels(pred, gt, valid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pred values, gt values, mask of evaluated pixels over the gt-valid pixels)."""
    p = _t64(pred, "pred depth")
    g = _t64(gt, "gt depth")
    if p.shape != g.shape:
        raise ValueError(f"depth shapes differ: pred {tuple(p.shape)} vs gt {tuple(g.shape)}")
    gt_ok = torch.isfinite(g) & (g > 0)
    if valid is not None:
        v = _bool(valid, "valid")
        if v.shape != g.shape:
            raise ValueError(f"valid: expected shape {tuple(g.shape)}, got {tuple(v.shape)}")
        gt_ok &= v
    ok = gt_ok & torch.isfinite(p) & (p > 0)
    return p[ok], g[ok], ok[gt_ok]


def depth_abs_rel(pred, gt, valid=None, *, align_median: bool = False) -> float:
    """Mean |pred - gt| / gt over pixels with gt > 0, finite pred > 0 and ``valid`` (optional).

    ``align_median``: first scale the prediction by median(gt) / median(pred) over those pixels
    (one scale for everything passed: call per frame for per-frame alignment).
    """
    p, g, _ = _depth_pixels(pred, gt, valid)
    if not len(g):
        raise ValueError("depth_abs_rel: no valid pixels (gt > 0 and prediction finite and > 0)")
    if align_median:
        p = p * (g.median() / p.median())
    return float(((p - g).abs() / g).mean())


def _delta1(pred, gt, valid, scale: float) -> float:
    p, g, _ = _depth_pixels(pred, gt, valid)
    r = torch.maximum(p * scale / g, g / (p * scale))
    return float((r < 1.25).double().mean())


def mask_iou(pred, gt) -> float:
    """Intersection over union of two boolean masks of the same shape; 1.0 when both are empty."""
    p = _bool(pred, "pred mask")
    g = _bool(gt, "gt mask")
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: pred {tuple(p.shape)} vs gt {tuple(g.shape)}")
    union = int((p | g).sum())
    if union == 0:
        return 1.0
    return int((p & g).sum()) / union


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------
def _gt_field(gt: Any, name: str):
    if isinstance(gt, Mapping):
        return gt.get(name)
    return getattr(gt, name, None)


def evaluate_perception(gt: Any, poses=None, depth=None, dynamic_mask=None, sky_mask=None, *,
                        depth_valid=None) -> dict[str, float]:
    """All perception metrics at once; every prediction is optional.

    Args:
        gt: ground truth with fields (attributes or mapping keys) ``c2w`` (N, 4, 4), ``K`` (3, 3)
            or (N, 3, 3), ``depth`` (N, H, W), ``dynamic_mask`` and ``sky_mask`` (N, H, W);
            a ``SyntheticClip`` works as is. Only the fields needed by the given predictions
            are required.
        poses: a ``PoseResult`` (pose metrics over its valid frames) or (N, 4, 4) c2w.
        depth: (N, H, W) predicted z-depth (any scale), <= 0 / non-finite = no prediction.
        dynamic_mask, sky_mask: (N, H, W) bool predictions.
        depth_valid: optional (N, H, W) bool restricting the depth metrics.
    Returns:
        A flat dict. Poses: ``registered_fraction``, ``interpolated_frames``, ``valid_fraction``,
        ``rotation_error_deg_mean``/``_max``, ``ate``, ``ate_rel`` (fraction of the extent),
        ``ate_percent``, ``trajectory_extent``, ``sim3_scale``, ``focal_error_rel``,
        ``pose_runtime_s``. Depth: ``depth_abs_rel`` (as predicted), ``depth_abs_rel_median``
        (one global median scale), ``depth_delta1_median``, ``depth_abs_rel_pose_scale`` (scaled
        by the pose Sim(3) scale: consistency of depth with the poses), ``depth_coverage``.
        Masks: ``dynamic_iou``, ``sky_iou`` (pooled over all frames), and ``dynamic_recall``,
        ``sky_recall`` (the fraction of the true mask found) where the truth is not empty.
    """
    metrics: dict[str, float] = {}
    sim3_scale = None
    if poses is not None:
        gt_c2w = _gt_field(gt, "c2w")
        if gt_c2w is None:
            raise ValueError("evaluate_perception: poses given but the ground truth has no 'c2w'")
        gt_c2w = _t64(gt_c2w, "gt c2w")
        if hasattr(poses, "c2w") and hasattr(poses, "valid"):
            pred_c2w = poses.c2w
            valid = poses.valid
            metrics["registered_fraction"] = float(poses.registered_fraction)
            metrics["interpolated_frames"] = float(poses.interpolated.sum())
            metrics["pose_runtime_s"] = float(getattr(poses, "runtime_s", float("nan")))
            gt_K = _gt_field(gt, "K")
            if gt_K is not None and hasattr(poses, "K"):
                gk = _t64(gt_K, "gt K")
                fg = float(gk.reshape(-1, 3, 3)[0, 0, 0])
                fp = float(_t64(poses.K, "K").reshape(-1, 3, 3)[0, 0, 0])
                metrics["focal_error_rel"] = abs(fp - fg) / fg
        else:
            pred_c2w = _t64(poses, "poses")
            valid = torch.isfinite(pred_c2w.reshape(len(pred_c2w), -1)).all(-1)
        pred_c2w = _t64(pred_c2w, "pred c2w")
        if pred_c2w.shape != gt_c2w.shape:
            raise ValueError(f"poses: {tuple(pred_c2w.shape)} vs ground truth {tuple(gt_c2w.shape)}")
        metrics["valid_fraction"] = float(valid.double().mean())
        if int(valid.sum()) >= 2:
            rot = rotation_error_deg(pred_c2w[valid], gt_c2w[valid])
            metrics["rotation_error_deg_mean"] = float(rot.mean())
            metrics["rotation_error_deg_max"] = float(rot.max())
            a = ate(pred_c2w[valid], gt_c2w[valid])
            metrics.update(ate=a.rmse, ate_rel=a.relative, ate_percent=100.0 * a.relative,
                           trajectory_extent=a.extent, sim3_scale=a.scale)
            sim3_scale = a.scale

    if depth is not None:
        gt_depth = _gt_field(gt, "depth")
        if gt_depth is None:
            raise ValueError("evaluate_perception: depth given but the ground truth has no 'depth'")
        p, g, covered = _depth_pixels(depth, gt_depth, depth_valid)
        metrics["depth_coverage"] = float(covered.double().mean()) if len(covered) else 0.0
        if len(g):
            metrics["depth_abs_rel"] = float(((p - g).abs() / g).mean())
            med = float(g.median() / p.median())
            metrics["depth_abs_rel_median"] = float(((p * med - g).abs() / g).mean())
            metrics["depth_delta1_median"] = _delta1(depth, gt_depth, depth_valid, med)
            if sim3_scale is not None:
                metrics["depth_abs_rel_pose_scale"] = float(((p * sim3_scale - g).abs() / g).mean())

    for name, pred in (("dynamic", dynamic_mask), ("sky", sky_mask)):
        if pred is None:
            continue
        gt_mask = _gt_field(gt, f"{name}_mask")
        if gt_mask is None:
            raise ValueError(f"evaluate_perception: {name} mask given but the ground truth has no "
                             f"'{name}_mask'")
        metrics[f"{name}_iou"] = mask_iou(pred, gt_mask)
        pred_b, gt_b = torch.as_tensor(pred).bool(), torch.as_tensor(gt_mask).bool()
        if bool(gt_b.any()):
            metrics[f"{name}_recall"] = float((pred_b & gt_b).sum() / gt_b.sum())
    return metrics
