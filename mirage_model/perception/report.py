"""End-to-end perception check on a synthetic clip: SfM poses -> stereo depth -> masks -> metrics.

What ``mirage eval-perception`` prints, and what the accuracy tests assert. Depth is computed at the
*estimated* poses (so it carries the SfM scale) and scored after the Sim(3) that aligns the
estimated cameras with the true ones: the number says whether depth and poses agree, not only
whether depth is right up to an arbitrary scale.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .depth import estimate_depth_video
from .evaluate import evaluate_perception
from .masks import moving_object_mask
from .poses import estimate_poses
from .synthetic_clip import synthetic_clip

TARGETS = {
    "rotation_error_deg_mean": ("<=", 0.5),
    "ate_percent": ("<=", 1.0),
    "depth_abs_rel_pose_scale": ("<=", 0.10),
    "dynamic_iou": (">=", 0.8),
}


def run_eval_perception(seed: int = 0, n_frames: int = 21, image_size: tuple[int, int] = (240, 320),
                        depth_scale: float = 0.5) -> dict[str, Any]:
    """Metrics of the weight-free perception defaults against synthetic ground truth."""
    import cv2

    from mirage_model.geometry.camera import scale_intrinsics

    clip = synthetic_clip(seed=seed, n_frames=n_frames, image_size=image_size, moving_object=True,
                          motion="arc_down")
    t0 = time.perf_counter()
    poses = estimate_poses(clip.frames)
    t_poses = time.perf_counter() - t0

    # Stereo at reduced resolution, then back to full size for scoring.
    H, W = image_size
    h, w = round(H * depth_scale), round(W * depth_scale)
    frames = clip.frames.numpy() if torch.is_tensor(clip.frames) else np.asarray(clip.frames)
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    K_small = scale_intrinsics(poses.K[0], (H, W), (h, w))
    t0 = time.perf_counter()
    results = estimate_depth_video(small, K_small, poses.c2w)
    t_depth = time.perf_counter() - t0
    depth = torch.stack([torch.as_tensor(r.depth) for r in results])
    valid = torch.stack([torch.as_tensor(r.valid) for r in results])
    depth_full = torch.nn.functional.interpolate(depth[:, None], size=(H, W), mode="nearest")[:, 0]
    valid_full = torch.nn.functional.interpolate(valid[:, None].float(), size=(H, W), mode="nearest")[:, 0] > 0.5

    # Motion masks at full resolution (flow is what finds a small object; depth only feeds the
    # rigid flow, so the upsampled stereo depth is enough).
    t0 = time.perf_counter()
    depths = {i: (torch.where(valid_full[i], depth_full[i], 0.0)) for i in range(n_frames)}
    moving_full = torch.stack([moving_object_mask(frames, depths, poses.K[0], poses.c2w, i, valid=valid_full[i])
                               for i in range(n_frames)])
    t_masks = time.perf_counter() - t0

    metrics = evaluate_perception(clip, poses=poses, depth=torch.where(valid_full, depth_full, 0),
                                  dynamic_mask=moving_full, depth_valid=valid_full)
    metrics.update(pose_seconds=t_poses, depth_seconds=t_depth, mask_seconds=t_masks,
                   frames=n_frames, image_size=list(image_size))
    checks = {}
    for name, (op, bound) in TARGETS.items():
        value = float(metrics[name])
        checks[name] = {"value": value, "target": f"{op} {bound}",
                        "met": value <= bound if op == "<=" else value >= bound}
    metrics["targets"] = checks
    return metrics
