"""End-to-end perception check on a synthetic clip: SfM poses -> stereo depth -> masks -> metrics.

What ``mirage eval-perception [--motion arc_down|follow]`` prints, and what the accuracy tests
assert (masks are made as the pipeline makes them, on the completed depth). Depth is computed at the
*estimated* poses (so it carries the SfM scale) and scored after the Sim(3) that aligns the
estimated cameras with the true ones: the number says whether depth and poses agree, not only
whether depth is right up to an arbitrary scale.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .completion import complete_depth_video
from .depth import estimate_depth_video
from .evaluate import evaluate_perception
from .masks import clip_masks, upsample_nearest
from .params import PREPROCESS_STEREO
from .poses import estimate_poses
from .synthetic_clip import synthetic_clip

TARGETS = {
    "rotation_error_deg_mean": ("<=", 0.5),
    "ate_percent": ("<=", 1.0),
    "depth_abs_rel_pose_scale": ("<=", 0.10),
    "dynamic_iou": (">=", 0.8),
    "dynamic_recall": (">=", 0.8),
}
FOLLOW_TARGETS = {
    # A camera following the ball (motion "follow"): the ball hardly moves in the image, the room
    # streams past. The mask targets of real footage apply; stereo has only 0.75 m of baseline
    # here and its depth is reported, not gated.
    "rotation_error_deg_mean": ("<=", 0.5),
    "ate_percent": ("<=", 1.0),
    "dynamic_iou": (">=", 0.6),
    "dynamic_recall": (">=", 0.8),
}


def run_eval_perception(seed: int = 0, n_frames: int = 21, image_size: tuple[int, int] = (240, 320),
                        depth_scale: float = 0.5, motion: str = "arc_down") -> dict[str, Any]:
    """Metrics of the weight-free perception defaults against synthetic ground truth (``motion``:
    a ``synthetic_clip`` camera motion): the preprocessing pipeline's stereo (``PREPROCESS_STEREO``
    at ``depth_scale``, the default ``depth.scale``) and masks (``clip_masks``' defaults)."""
    import cv2

    from mirage_model.geometry.camera import scale_intrinsics

    clip = synthetic_clip(seed=seed, n_frames=n_frames, image_size=image_size, moving_object=True,
                          motion=motion)
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
    results = estimate_depth_video(small, K_small, poses.c2w, params=PREPROCESS_STEREO)
    t_depth = time.perf_counter() - t0
    depth = torch.stack([torch.as_tensor(r.depth) for r in results])
    valid = torch.stack([torch.as_tensor(r.valid) for r in results])
    depth_full, valid_full = upsample_nearest(depth, (H, W)), upsample_nearest(valid, (H, W)) > 0.5

    # Motion masks as the pipeline makes them (``clip_masks``): on the completed depth (a moving
    # object has no confident stereo depth; completion gives it its surroundings' depth, which its
    # own motion then contradicts).
    t0 = time.perf_counter()
    dense, dense_valid, _, _ = complete_depth_video(small, depth.numpy(), valid.numpy())
    _, moving_full = clip_masks(frames, range(n_frames), dense, dense_valid, poses.K[0], poses.c2w)
    t_masks = time.perf_counter() - t0

    metrics = evaluate_perception(clip, poses=poses, depth=torch.where(valid_full, depth_full, 0),
                                  dynamic_mask=moving_full, depth_valid=valid_full)
    metrics.update(pose_seconds=t_poses, depth_seconds=t_depth, mask_seconds=t_masks,
                   frames=n_frames, image_size=list(image_size))
    checks = {}
    for name, (op, bound) in (FOLLOW_TARGETS if motion == "follow" else TARGETS).items():
        value = float(metrics[name])
        checks[name] = {"value": value, "target": f"{op} {bound}",
                        "met": value <= bound if op == "<=" else value >= bound}
    metrics["targets"] = checks
    return metrics
