"""Perception: camera poses (SfM), depth and dynamic/sky masks of a clip, and their accuracy metrics.

Pure functions (no Ray). ``poses`` estimates cameras with pycolmap, ``evaluate`` measures them
against ground truth, ``synthetic_clip`` renders a clip with exact ground truth to test them on.
"""

from .evaluate import (
    ATEResult,
    align_sim3,
    ate,
    depth_abs_rel,
    evaluate_perception,
    mask_iou,
    rotation_error_deg,
)
from .poses import (
    MATCHERS,
    PoseEstimationError,
    PoseResult,
    estimate_poses,
    fill_unregistered_poses,
    poses_from_file,
)
from .synthetic_clip import MOTIONS, SyntheticClip, synthetic_clip

# --- depth.py / masks.py (written separately): add their imports here -------------------------

__all__ = [
    # poses.py
    "MATCHERS",
    "PoseEstimationError",
    "PoseResult",
    "estimate_poses",
    "fill_unregistered_poses",
    "poses_from_file",
    # evaluate.py
    "ATEResult",
    "align_sim3",
    "ate",
    "depth_abs_rel",
    "evaluate_perception",
    "mask_iou",
    "rotation_error_deg",
    # synthetic_clip.py
    "MOTIONS",
    "SyntheticClip",
    "synthetic_clip",
    # depth.py / masks.py: add their public names here
]
