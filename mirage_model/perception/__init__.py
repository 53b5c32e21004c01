"""Perception: camera poses (SfM), depth and dynamic/sky masks of a clip, and their accuracy metrics.

Pure functions (no Ray), shared by the data pipeline and by generation. ``poses`` estimates cameras
with pycolmap, ``depth`` runs plane-sweep stereo at known poses (or a local depth model),
``masks`` finds moving objects from optical flow vs the rigid flow of depth + poses (``params``:
the typed settings of the sweeps and of the moving-object test), ``evaluate``
measures all of it against ground truth, ``synthetic_clip`` renders a clip with exact ground truth.
"""

from .depth import (
    DepthResult,
    align_depth,
    default_depth_range,
    estimate_depth_video,
    geometric_consistency,
    learned_depth,
    plane_sweep_depth,
    select_neighbours,
)
from .evaluate import (
    ATEResult,
    align_sim3,
    ate,
    depth_abs_rel,
    evaluate_perception,
    mask_iou,
    rotation_error_deg,
)
from .masks import (
    clean_mask,
    epipolar_residual,
    learned_segmentation_mask,
    moving_object_mask,
    optical_flow,
    rigid_flow,
    sky_mask,
    static_mask,
    static_masks,
)
from .params import (
    GENERATION_STEREO,
    PREPROCESS_STEREO,
    WRITEBACK_CELL_STEREO,
    CellStereoParams,
    MotionMaskParams,
    StereoParams,
)
from .poses import (
    MATCHERS,
    PoseEstimationError,
    PoseResult,
    estimate_poses,
    fill_unregistered_poses,
    poses_agree,
    poses_from_file,
)
from .synthetic_clip import MOTIONS, SyntheticClip, synthetic_clip

__all__ = [
    # poses.py
    "MATCHERS",
    "PoseEstimationError",
    "PoseResult",
    "estimate_poses",
    "fill_unregistered_poses",
    "poses_agree",
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
    # depth.py
    "DepthResult",
    "align_depth",
    "default_depth_range",
    "estimate_depth_video",
    "geometric_consistency",
    "learned_depth",
    "plane_sweep_depth",
    "select_neighbours",
    # masks.py
    "clean_mask",
    "epipolar_residual",
    "learned_segmentation_mask",
    "moving_object_mask",
    "optical_flow",
    "rigid_flow",
    "sky_mask",
    "static_mask",
    "static_masks",
    # params.py
    "GENERATION_STEREO",
    "PREPROCESS_STEREO",
    "WRITEBACK_CELL_STEREO",
    "CellStereoParams",
    "MotionMaskParams",
    "StereoParams",
]
