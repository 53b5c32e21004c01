"""Pose-quality gates that do not trust the reprojection error alone (mirage_model/perception/pose_quality.py)."""

import torch

from mirage_model.perception.pose_quality import PoseThresholds, assess_poses
from mirage_model.perception.poses import PoseResult

SIZE = (240, 320)


def _result(n=33, focal=300.0, fy=None, jump_at=None, unregistered=(), distortion=(), reproj=0.5):
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, 0, 3] = torch.arange(n, dtype=torch.float64) * 0.05  # a steady dolly to the right
    if jump_at is not None:
        c2w[jump_at:, 0, 3] += 2.0
    registered = torch.ones(n, dtype=torch.bool)
    registered[list(unregistered)] = False
    K = torch.tensor([[focal, 0, 160], [0, fy or focal, 120], [0, 0, 1]], dtype=torch.float64).expand(n, 3, 3)
    return PoseResult(c2w=c2w, K=K.clone(), image_size=SIZE, registered=registered,
                      interpolated=~registered, reprojection_error=reproj, distortion=distortion)


def test_a_clean_path_passes():
    q = assess_poses(_result())
    assert q.ok and q.good_span == (0, 33) and q.max_step_ratio < 1.5


def test_each_failure_is_named_even_with_a_normal_reprojection_error():
    reasons = lambda r, **kw: [p[0] for p in assess_poses(r, **kw).problems]  # noqa: E731
    assert reasons(_result(focal=1600.0)) == ["implausible_focal"]  # 5 x max(H, W): a 11 deg lens
    assert reasons(_result(focal=300.0, fy=380.0)) == ["implausible_focal"]  # squeezed, though not given
    assert reasons(_result(focal=300.0, fy=380.0), intrinsics_given=True) == []  # a camera file's K stands
    assert reasons(_result(distortion=(2.58,))) == ["degenerate_sfm"]
    assert reasons(_result(reproj=3.0)) == ["high_reprojection_error"]
    assert reasons(_result(jump_at=20)) == ["path_jump"]
    assert reasons(_result(unregistered=range(10, 16))) == ["registration_gap"]


def test_the_good_span_avoids_jumps_and_long_gaps():
    assert assess_poses(_result(jump_at=20)).good_span == (0, 20)
    assert assess_poses(_result(jump_at=8)).good_span == (8, 33)
    assert assess_poses(_result(unregistered=range(10, 16))).good_span == (16, 33)
    assert assess_poses(_result(unregistered=(5, 6))).good_span == (0, 33)  # short gaps are interpolated
    strict = PoseThresholds(max_gap=1)
    assert assess_poses(_result(unregistered=(5, 6)), strict).good_span == (7, 33)


def test_frames_without_any_pose_are_a_gap():
    r = _result()
    r.c2w[:3] = float("nan")
    r.registered[:3] = False
    r.interpolated[:3] = False
    q = assess_poses(r)
    assert [p[0] for p in q.problems] == ["registration_gap"] and q.good_span == (3, 33)


def test_undistortion_makes_the_frames_agree_with_the_pinhole_K():
    """A frame with k1 = 0.2 barrel distortion (COLMAP SIMPLE_RADIAL = OpenCV k1) comes back to the
    undistorted image; the pinhole K is unchanged."""
    import cv2
    import numpy as np

    from mirage_model.perception.poses import undistort_frames

    h, w, f = 120, 160, 150.0
    K = torch.tensor([[f, 0, 79.5], [0, f, 59.5], [0, 0, 1]], dtype=torch.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    ideal = (127 + 100 * np.sin(xx / 6.0) * np.cos(yy / 7.0)).astype(np.uint8)
    ideal = np.repeat(ideal[None, ..., None], 3, axis=-1)
    pix = np.stack([xx, yy], -1).reshape(-1, 1, 2).astype(np.float64)
    und = cv2.undistortPoints(pix, K.numpy(), np.array([0.2, 0.0, 0.0, 0.0]))[:, 0]
    mx, my = (und[:, 0] * f + 79.5).reshape(h, w), (und[:, 1] * f + 59.5).reshape(h, w)
    distorted = cv2.remap(ideal[0], mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR)[None]
    inner = (0, slice(20, 100), slice(30, 130))
    before = np.abs(distorted[inner].astype(int) - ideal[inner]).mean()
    after = np.abs(undistort_frames(distorted, K, (0.2,))[inner].astype(int) - ideal[inner]).mean()
    assert before > 2.0 and after < 0.5
    assert undistort_frames(distorted, K, ()) is distorted  # nothing estimated: frames untouched


def test_undistorted_valid_marks_the_black_border_and_only_it():
    """Undistorting k1 = 0.2 (COLMAP's / OpenCV's sign) pulls the corners in from outside the source:
    exactly the pixels ``undistort_frames`` leaves black (a white frame shows them) are not valid."""
    import numpy as np

    from mirage_model.perception.poses import undistort_frames, undistorted_valid

    h, w, f = 120, 160, 150.0
    K = torch.tensor([[f, 0, 79.5], [0, f, 59.5], [0, 0, 1]], dtype=torch.float64)
    valid = undistorted_valid((h, w), K, (0.2,))
    white = undistort_frames(np.full((1, h, w, 3), 255, np.uint8), K, (0.2,))[0, ..., 0]
    assert undistorted_valid((h, w), K, (-0.2,)).all()  # the other sign samples inside the source only
    assert not valid[0, 0] and not valid[-1, -1] and valid[h // 2, w // 2]
    assert 0.5 < valid.mean() < 0.99
    assert (white[valid] > 0).all() and (white[~valid] < 255).all()
    assert undistorted_valid((h, w), K, ()).all() and undistorted_valid((h, w), K[None].repeat(3, 1, 1), (0.0,)).all()


def test_a_camera_that_waits_then_moves_has_no_jump():
    """Half the clip standing still, then a smooth dolly: the median step is ~0 but no step is a jump."""
    r = _result()
    r.c2w[:, 0, 3] = torch.clamp(torch.arange(33, dtype=torch.float64) - 16, min=0) * 0.05
    q = assess_poses(r)
    assert q.ok and q.good_span == (0, 33), q.problems


def test_the_poses_stage_passes_the_camera_model_and_widens_the_aspect_gate_for_two_focals():
    from pipeline.config import PreprocessConfig
    from pipeline.stages import EstimatePoses

    base = {"source": "s", "output": "o"}
    square = EstimatePoses(PreprocessConfig.model_validate(base))._thresholds()
    anamorphic = EstimatePoses(PreprocessConfig.model_validate({**base, "poses": {"camera_model": "OPENCV"}}))
    assert square.max_aspect_error == 0.1 and anamorphic._thresholds().max_aspect_error == 0.5
    squeezed = _result(focal=300.0, fy=400.0)  # 1.33x anamorphic
    assert [p[0] for p in assess_poses(squeezed, square).problems] == ["implausible_focal"]
    assert assess_poses(squeezed, anamorphic._thresholds()).ok
