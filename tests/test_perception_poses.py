"""Camera poses by SfM (pycolmap) on a rendered clip with exact ground truth, and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirage_model.geometry.camera import look_at
from mirage_model.geometry.formats import write_re10k
from mirage_model.geometry.trajectory import orbit
from mirage_model.perception import (
    PoseEstimationError,
    PoseResult,
    align_sim3,
    ate,
    depth_abs_rel,
    estimate_poses,
    evaluate_perception,
    fill_unregistered_poses,
    mask_iou,
    poses_agree,
    poses_from_file,
    rotation_error_deg,
    synthetic_clip,
)
from mirage_model.perception.evaluate import _rotation_angle_deg
from mirage_model.perception.poses import _reconcile

N_FRAMES = 17
HW = (240, 320)


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(seed=0, n_frames=N_FRAMES, image_size=HW, moving_object=True, motion="arc")


def _check_accuracy(result: PoseResult, clip, max_rot_deg=0.5, max_ate=0.01, min_registered=0.9):
    m = evaluate_perception(clip, result)
    assert m["registered_fraction"] >= min_registered
    assert m["rotation_error_deg_max"] <= max_rot_deg, m
    assert m["ate_rel"] <= max_ate, m
    return m


# ----------------------------------------------------------------------------------------------
# SfM on the synthetic clip
# ----------------------------------------------------------------------------------------------
def test_synthetic_clip_ground_truth(clip):
    assert clip.frames.shape == (N_FRAMES, *HW, 3) and clip.frames.dtype == torch.uint8
    assert clip.depth.shape == (N_FRAMES, *HW) and float(clip.depth.min()) > 0
    assert clip.dynamic_mask.any() and not clip.sky_mask.any()
    traj = clip.trajectory
    assert len(traj) == N_FRAMES and traj.image_size == HW
    extent = float(torch.cdist(traj.centers, traj.centers).max())
    assert 0.9 < extent < 1.3  # about 1 m of baseline


def test_sfm_unknown_intrinsics(clip):
    result = estimate_poses(clip.frames)
    assert result.registered.all() and result.registered_fraction == 1.0
    assert not result.interpolated.any()
    m = _check_accuracy(result, clip)
    assert m["focal_error_rel"] < 0.02
    # Convention: the first registered frame is the identity, median depth of its points is 1.
    assert torch.equal(result.c2w[0], torch.eye(4, dtype=torch.float64))
    z = result.points3d[result.point_ids_per_frame[0], 2]
    assert float(z.median()) == pytest.approx(1.0, abs=1e-9)
    assert result.scale > 0 and "median" in result.scale_rule
    # Principal point in the project's convention (centred: (W - 1) / 2, (H - 1) / 2).
    assert float(result.K[0, 0, 2]) == pytest.approx((HW[1] - 1) / 2)
    assert float(result.K[0, 1, 2]) == pytest.approx((HW[0] - 1) / 2)
    assert result.reprojection_error < 1.0
    traj = result.to_trajectory()
    assert len(traj) == N_FRAMES and traj.image_size == HW
    assert result.to_trajectory((480, 640)).K[0, 0, 0] == pytest.approx(2 * float(result.K[0, 0, 0]))


def test_sfm_known_intrinsics_are_kept(clip):
    result = estimate_poses(clip.frames.float() / 255.0, K=clip.K, matcher="sequential")
    assert torch.allclose(result.K, clip.K.expand(N_FRAMES, 3, 3), atol=1e-9)
    assert result.distortion == ()
    _check_accuracy(result, clip)


def test_sfm_known_squeezed_intrinsics(clip):
    """Anamorphic frames (stored 3/4 as wide: fx = 0.75 fy) with their K: SfM runs on square pixels
    and hands back the given two focal lengths with accurate cameras."""
    import cv2

    from mirage_model.geometry.camera import scale_intrinsics

    h, w = HW
    squeezed_size = (h, w * 3 // 4)
    frames = np.stack([cv2.resize(f, squeezed_size[::-1], interpolation=cv2.INTER_AREA)
                       for f in clip.frames.numpy()])
    K = scale_intrinsics(clip.K, HW, squeezed_size)
    assert float(K[0, 0] / K[1, 1]) == pytest.approx(0.75)
    result = estimate_poses(frames, K=K)
    assert torch.allclose(result.K, K.expand(N_FRAMES, 3, 3), atol=1e-6)
    _check_accuracy(result, clip)


def test_unregistered_frames_are_interpolated_or_invalid(clip):
    frames = clip.frames.clone()
    frames[0] = 128   # leading frame without features: no pose at all
    frames[8] = 128  # interior frame: interpolated from frames 7 and 9
    result = estimate_poses(frames, max_side=240)
    assert not result.registered[0] and not result.registered[8]
    assert result.interpolated.tolist() == [i == 8 for i in range(N_FRAMES)]
    assert result.valid.tolist() == [i != 0 for i in range(N_FRAMES)]
    assert torch.isnan(result.c2w[0]).all()  # never a silent identity pose
    assert torch.equal(result.c2w[1], torch.eye(4, dtype=torch.float64))  # first registered frame
    assert result.valid_range == (1, N_FRAMES)
    with pytest.raises(PoseEstimationError, match=r"frames \[0\]"):
        result.to_trajectory()
    assert len(result.to_trajectory(valid_only=True)) == N_FRAMES - 1
    # K mapped back from the 180x240 SfM images to 240x320: still centred, focal close.
    assert float(result.K[0, 0, 2]) == pytest.approx((HW[1] - 1) / 2)
    assert float(result.K[0, 0, 0]) == pytest.approx(float(clip.K[0, 0]), rel=0.03)
    # Over the valid frames, the interpolated one included; 2 of 17 frames are blank by design.
    m = _check_accuracy(result, clip, min_registered=(N_FRAMES - 2) / N_FRAMES)
    assert m["valid_fraction"] == pytest.approx((N_FRAMES - 1) / N_FRAMES)


# ----------------------------------------------------------------------------------------------
# Failures name their cause
# ----------------------------------------------------------------------------------------------
def test_identical_frames_fail_as_static(clip):
    frames = clip.frames[:1].repeat(9, 1, 1, 1)
    with pytest.raises(PoseEstimationError, match="static camera"):
        estimate_poses(frames)


def test_static_camera_with_moving_object_fails_as_static():
    still = synthetic_clip(n_frames=9, image_size=(120, 160), motion="static")  # only the ball moves
    assert still.frames[0].ne(still.frames[-1]).any()
    with pytest.raises(PoseEstimationError, match="static camera"):
        estimate_poses(still.frames)


def test_constant_grey_fails_as_textureless():
    with pytest.raises(PoseEstimationError, match="textureless"):
        estimate_poses(torch.full((9, *HW, 3), 128, dtype=torch.uint8))


def test_smooth_frames_fail_as_textureless():
    x = np.linspace(0.0, 1.0, HW[1], dtype=np.float32)
    frames = np.stack([np.broadcast_to((0.1 + 0.7 * x + 0.02 * i)[None, :, None], (*HW, 3))
                       for i in range(9)])
    with pytest.raises(PoseEstimationError, match="textureless.*keypoints"):
        estimate_poses(frames)


def test_sfm_gives_the_same_cameras_for_the_same_frames(clip):
    """Every SfM step is single-threaded (threads only run attempts side by side): repeated calls,
    with threads to spare, return identical cameras."""
    a = estimate_poses(clip.frames, num_threads=2)
    b = estimate_poses(clip.frames, num_threads=2)
    assert torch.equal(a.c2w.nan_to_num(), b.c2w.nan_to_num()) and torch.equal(a.K, b.K)
    assert torch.equal(a.points3d, b.points3d)


def test_sfm_attempts_with_other_seeds_agree_on_a_sound_clip(clip):
    result = estimate_poses(clip.frames, attempts=2, num_threads=2)
    assert result.attempts["agreed"] == [0, 1] and result.attempts["of"] == [0, 1]
    _check_accuracy(result, clip)


def _gt_result(clip, K_scale=1.0) -> PoseResult:
    n = len(clip.c2w)
    return PoseResult(c2w=clip.c2w.clone(), K=(clip.K * torch.tensor([[K_scale], [K_scale], [1.0]],
                                                                      dtype=clip.K.dtype)).expand(n, 3, 3).clone(),
                      image_size=HW, registered=torch.ones(n, dtype=torch.bool),
                      interpolated=torch.zeros(n, dtype=torch.bool), reprojection_error=0.5)


def test_poses_agree_ignores_the_gauge_and_catches_a_wrong_camera(clip):
    a = _gt_result(clip)
    # the same cameras in another world frame and scale (what a second SfM run returns)
    G = torch.eye(4, dtype=torch.float64)
    G[:3, :3] = look_at(torch.tensor([0.0, 0, 0]), torch.tensor([1.0, 0.3, 2.0]))[:3, :3]
    G[:3, 3] = torch.tensor([3.0, -1.0, 0.5])
    moved = G @ a.c2w
    moved[:, :3, 3] = moved[:, :3, 3] * 2.5
    b = _gt_result(clip)
    b.c2w = moved
    assert poses_agree(a, b)[0]
    bent = _gt_result(clip)  # one camera turned by 5 degrees
    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))
    bent.c2w[8, :3, :3] = bent.c2w[8, :3, :3] @ torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    ok, why = poses_agree(a, bent)
    assert not ok and float(why.split("up to ")[1].split(" deg")[0]) > 4.0  # 5 degrees less the global fit
    ok, why = poses_agree(a, _gt_result(clip, K_scale=1.5))
    assert not ok and "focal" in why
    few = _gt_result(clip)
    few.registered[:] = False
    few.registered[0] = True
    assert poses_agree(a, few) == (False, "only 1 frames registered in both")


def test_reconcile_takes_two_that_agree_or_none(clip):
    good, other_gauge, bent = _gt_result(clip), _gt_result(clip), _gt_result(clip)
    other_gauge.c2w[:, :3, 3] *= 3.0
    other_gauge.registered[-1] = False  # fewer frames: the other one is picked
    bent.c2w[4:, :3, 3] += torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)  # a jump half-way
    pick, _ = _reconcile({0: bent, 1: good, 2: other_gauge}, {})
    assert pick is good and pick.attempts["agreed"] == [1, 2] and pick.attempts["of"] == [0, 1, 2]
    pick, why = _reconcile({0: bent, 1: good, 2: None}, {2: "too few registered frames"})
    assert pick is None and "seed 2: too few registered frames" in why and "seeds 0 and 1:" in why


def test_unstable_poses_is_a_manifest_reason():
    from pipeline.stages import reason_code

    assert reason_code(PoseEstimationError("no two agree", reason="unstable_poses"), "sfm_failed") == "unstable_poses"
    assert reason_code(PoseEstimationError("no reconstruction"), "sfm_failed") == "sfm_failed"


def test_bad_arguments(clip):
    with pytest.raises(PoseEstimationError, match="at least 2 frames"):
        estimate_poses(clip.frames[:1])
    with pytest.raises(ValueError, match="matcher"):
        estimate_poses(clip.frames, matcher="vocabtree")
    with pytest.raises(ValueError, match="frames"):
        estimate_poses(clip.frames[..., 0])


# ----------------------------------------------------------------------------------------------
# Interpolation bookkeeping
# ----------------------------------------------------------------------------------------------
def test_fill_unregistered_poses():
    traj = orbit(9, radius=2.0, degrees=80.0, image_size=HW)
    registered = torch.tensor([False, True, True, False, False, True, True, False, False])
    c2w, interpolated = fill_unregistered_poses(traj.c2w, registered)
    assert interpolated.tolist() == [False, False, False, True, True, False, False, False, False]
    for i in (0, 7, 8):  # leading / trailing: no pose
        assert torch.isnan(c2w[i]).all()
    assert torch.equal(c2w[registered], traj.c2w[registered])
    # Frames 3 and 4 sit 1/3 and 2/3 of the way from frame 2 to frame 5: rotation slerp, centre lerp.
    for i, t in ((3, 1 / 3), (4, 2 / 3)):
        centre = (1 - t) * traj.c2w[2, :3, 3] + t * traj.c2w[5, :3, 3]
        assert torch.allclose(c2w[i, :3, 3], centre, atol=1e-12)
        rel = traj.c2w[2, :3, :3].T @ c2w[i, :3, :3]
        assert float(_rotation_angle_deg(rel)) == pytest.approx(t * 30.0, abs=1e-6)  # 10 deg/frame
        assert torch.allclose(c2w[i, :3, :3].T @ c2w[i, :3, :3], torch.eye(3, dtype=torch.float64),
                              atol=1e-12)
    # Nothing registered / a single registered frame: nothing to interpolate from.
    c2w, interpolated = fill_unregistered_poses(traj.c2w, torch.zeros(9, dtype=torch.bool))
    assert torch.isnan(c2w).all() and not interpolated.any()


# ----------------------------------------------------------------------------------------------
# Cameras from a file
# ----------------------------------------------------------------------------------------------
def test_poses_from_file(tmp_path, clip):
    path = tmp_path / "cams.txt"
    write_re10k(path, clip.trajectory)
    result = poses_from_file(path, HW, n_frames=N_FRAMES)
    assert result.registered.all() and not result.interpolated.any() and result.source == "file"
    assert torch.allclose(result.c2w, clip.c2w, atol=1e-9)
    assert torch.allclose(result.K, clip.K.expand(N_FRAMES, 3, 3), atol=1e-9)
    m = evaluate_perception(clip, result)
    assert m["rotation_error_deg_max"] < 1e-6 and m["ate"] < 1e-9
    with pytest.raises(ValueError, match="17 cameras but the clip has 16"):
        poses_from_file(path, HW, n_frames=16)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def _random_similarity(seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm()
    w, x, y, z = q
    R = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]],
                     dtype=torch.float64)
    t = torch.randn(3, generator=g, dtype=torch.float64)
    return 2.7, R, t


def test_align_sim3_recovers_a_known_similarity():
    pts = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s, R, t = _random_similarity(1)
    s_est, R_est, t_est = align_sim3(pts, s * pts @ R.T + t)
    assert s_est == pytest.approx(s, rel=1e-12)
    assert torch.allclose(R_est, R, atol=1e-12) and torch.allclose(t_est, t, atol=1e-12)
    s_rigid, _, _ = align_sim3(pts, pts @ R.T + t, with_scale=False)
    assert s_rigid == 1.0
    with pytest.raises(ValueError, match="coincide"):
        align_sim3(torch.zeros(4, 3), pts[:4])


def test_pose_metrics_are_zero_up_to_a_similarity(clip):
    s, R, t = _random_similarity(2)
    # The prediction is the ground truth in another similarity frame: w' = (R w + t) / s.
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R.T, -R.T @ t
    pred = T @ clip.c2w
    pred[:, :3, 3] /= s
    a = ate(pred, clip.c2w)
    assert a.rmse < 1e-9 and a.relative < 1e-9 and a.scale == pytest.approx(s)
    assert a.extent == pytest.approx(float(torch.cdist(clip.c2w[:, :3, 3], clip.c2w[:, :3, 3]).max()))
    assert float(rotation_error_deg(pred, clip.c2w).max()) < 1e-6
    assert float(rotation_error_deg(pred, clip.c2w, align="sim3").max()) < 1e-6
    # Unaligned rotation error: the global rotation shows up.
    angle = float(_rotation_angle_deg(R))
    assert float(rotation_error_deg(pred, clip.c2w, align="none").mean()) == pytest.approx(angle, abs=1e-6)
    # A 1-degree perturbation of one frame is measured.
    bumped = pred.clone()
    bumped[3, :3, :3] = bumped[3, :3, :3] @ look_at((0, 0, 0), (math.tan(math.radians(1.0)), 0, 1))[:3, :3]
    err = rotation_error_deg(bumped, clip.c2w)
    assert float(err.max()) == pytest.approx(1.0, abs=0.1)


def test_depth_and_mask_metrics(clip):
    gt = clip.depth
    assert depth_abs_rel(gt, gt) == 0.0
    assert depth_abs_rel(3.0 * gt, gt) == pytest.approx(2.0)
    assert depth_abs_rel(3.0 * gt, gt, align_median=True) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros_like(gt, dtype=torch.bool)
    half[..., : HW[1] // 2] = True
    assert depth_abs_rel(gt * torch.where(half, 1.0, 2.0), gt, valid=half) == 0.0
    with pytest.raises(ValueError, match="no valid pixels"):
        depth_abs_rel(torch.zeros_like(gt), gt)

    m = clip.dynamic_mask
    assert mask_iou(m, m) == 1.0
    assert mask_iou(torch.zeros_like(m), torch.zeros_like(m)) == 1.0
    assert mask_iou(~m, m) == 0.0
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert mask_iou(a, b) == pytest.approx(1 / 3)

    metrics = evaluate_perception(clip, clip.c2w.numpy(), depth=2.0 * gt,
                                  dynamic_mask=clip.dynamic_mask, sky_mask=clip.sky_mask)
    assert metrics["ate"] < 1e-9 and metrics["rotation_error_deg_max"] < 1e-6
    assert metrics["depth_abs_rel"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["depth_abs_rel_median"] < 1e-6 and metrics["depth_delta1_median"] == 1.0
    assert metrics["depth_abs_rel_pose_scale"] == pytest.approx(1.0, abs=1e-6)  # pose scale is 1
    assert metrics["depth_coverage"] == 1.0
    assert metrics["dynamic_iou"] == 1.0 and metrics["sky_iou"] == 1.0
    assert evaluate_perception(clip) == {}


@pytest.mark.slow
@pytest.mark.parametrize("motion", ["arc_down", "follow"])
def test_eval_perception_meets_every_target(motion):
    """The reusable end-to-end check behind ``mirage eval-perception`` (SfM -> stereo -> completed
    depth -> masks): a ball rolling along the epipolar lines, and a camera following the ball."""
    from mirage_model.perception.report import run_eval_perception

    result = run_eval_perception(seed=0, n_frames=21, motion=motion)
    failed = {k: v for k, v in result["targets"].items() if not v["met"]}
    assert not failed, failed
