"""Trajectory container validation, builders and resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirage_model.geometry import (
    Trajectory,
    dolly,
    intrinsics_from_fov,
    orbit,
    pan_and_return,
    project_points,
    resample,
    resample_to_4n_plus_1,
)
from mirage_model.geometry.trajectory import _matrix_to_quaternion, _quaternion_to_matrix

SIZE = (64, 96)


def _eye_poses(n: int) -> torch.Tensor:
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, 0, 3] = torch.arange(n, dtype=torch.float64)
    return c2w


def _assert_orthonormal(c2w: torch.Tensor, tol: float = 1e-12) -> None:
    R = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=tol)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=tol)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def test_accepts_numpy_and_broadcasts_single_K():
    K = intrinsics_from_fov(60.0, SIZE).numpy()
    traj = Trajectory(_eye_poses(3).numpy(), K, [64, 96], timestamps=[0.0, 0.1, 0.2])
    assert len(traj) == 3
    assert traj.c2w.dtype == torch.float64 and traj.K.shape == (3, 3, 3)
    assert traj.image_size == (64, 96)
    assert traj.timestamps.dtype == torch.float64
    assert torch.allclose(traj.w2c @ traj.c2w, torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    assert torch.equal(traj.centers[:, 0], torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))


def test_non_finite_pose_names_field_and_frame():
    c2w = _eye_poses(4)
    c2w[2, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"c2w\[2\].*non-finite"):
        Trajectory(c2w, intrinsics_from_fov(60.0, SIZE), SIZE)


def test_non_orthonormal_rotation_rejected():
    c2w = _eye_poses(3)
    c2w[1, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"c2w\[1\].*orthonormal"):
        Trajectory(c2w, intrinsics_from_fov(60.0, SIZE), SIZE)


def test_reflection_rejected():
    c2w = _eye_poses(2)
    c2w[0, 2, 2] = -1.0
    with pytest.raises(ValueError, match=r"c2w\[0\].*determinant"):
        Trajectory(c2w, intrinsics_from_fov(60.0, SIZE), SIZE)


@pytest.mark.parametrize("c2w, K, ts, match", [
    (torch.eye(4), torch.eye(3), None, r"c2w: expected shape \(N, 4, 4\)"),
    (torch.eye(3).repeat(2, 1, 1), torch.eye(3), None, r"c2w: expected shape"),
    (torch.eye(4).repeat(2, 1, 1), torch.eye(3).repeat(3, 1, 1), None, r"K: expected shape"),
    (torch.eye(4).repeat(2, 1, 1), torch.eye(4), None, r"K: expected shape"),
    (torch.eye(4).repeat(2, 1, 1), torch.eye(3), [0.0], r"timestamps: expected shape"),
    (torch.zeros(0, 4, 4), torch.eye(3), None, r"N >= 1"),
])
def test_wrong_shapes_rejected(c2w, K, ts, match):
    with pytest.raises(ValueError, match=match):
        Trajectory(c2w, K, SIZE, ts)


def test_bad_intrinsics_named_with_frame():
    K = intrinsics_from_fov(60.0, SIZE).repeat(3, 1, 1)
    K[1, 0, 0] = -5.0
    with pytest.raises(ValueError, match=r"K\[1\].*positive"):
        Trajectory(_eye_poses(3), K, SIZE)
    K = intrinsics_from_fov(60.0, SIZE).repeat(3, 1, 1)
    K[2, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"K\[2\].*non-finite"):
        Trajectory(_eye_poses(3), K, SIZE)


def test_bad_image_size_rejected():
    with pytest.raises(ValueError, match="image_size"):
        Trajectory(_eye_poses(1), torch.eye(3), (0, 10))


def test_select_and_resized():
    traj = orbit(8, 2.0, image_size=SIZE)
    sub = traj.select([0, 2, 4])
    assert len(sub) == 3 and torch.equal(sub.c2w[1], traj.c2w[2])
    assert len(traj.select(slice(None, None, 2))) == 4
    big = traj.resized((128, 192))
    assert big.image_size == (128, 192)
    assert torch.allclose(big.K[0, 0, 0], 2 * traj.K[0, 0, 0])
    # Principal point stays at the image centre under the pixel-centre convention.
    assert torch.allclose(big.K[0, :2, 2], torch.tensor([95.5, 63.5], dtype=torch.float64))
    assert torch.equal(big.c2w, traj.c2w)


# ----------------------------------------------------------------------------------------------
# Quaternions
# ----------------------------------------------------------------------------------------------
def test_quaternion_round_trip_including_half_turns():
    gen = torch.Generator().manual_seed(0)
    R = torch.linalg.qr(torch.randn(200, 3, 3, generator=gen, dtype=torch.float64))[0]
    R = R * torch.linalg.det(R)[:, None, None]
    half_turns = torch.stack([torch.diag(torch.tensor(d, dtype=torch.float64))
                              for d in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1])])
    R = torch.cat([R, half_turns, torch.eye(3, dtype=torch.float64)[None]])
    q = _matrix_to_quaternion(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(R), dtype=torch.float64))
    assert torch.allclose(_quaternion_to_matrix(q), R, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [9, 10, 33])
def test_pan_and_return_mirrored_frames_identical(n):
    traj = pan_and_return(n, yaw_degrees=90.0, translation=(0.1, 0.0, 0.05), image_size=SIZE)
    for i in range(n):
        assert torch.equal(traj.c2w[i], traj.c2w[n - 1 - i])
    assert torch.equal(traj.c2w[0], torch.eye(4, dtype=torch.float64))
    # The turning point looks 90 degrees to the right (+x) and sits at start + translation.
    mid = traj.c2w[(n - 1) // 2]
    assert torch.allclose(mid[:3, 2], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(mid[:3, 3], torch.tensor([0.1, 0.0, 0.05], dtype=torch.float64))
    _assert_orthonormal(traj.c2w)


def test_orbit_looks_at_center():
    center = torch.tensor([[1.0, -0.5, 3.0]], dtype=torch.float64)
    traj = orbit(12, radius=2.5, center=center[0].tolist(), height=0.7, degrees=270.0, image_size=SIZE)
    uv, z = project_points(center, traj.K, traj.w2c)
    assert torch.allclose(uv[:, 0], traj.K[:, :2, 2], atol=1e-9)
    assert bool((z > 0).all())
    # On a horizontal circle: constant height (y) and constant horizontal distance to the centre.
    offsets = traj.centers - center
    assert torch.allclose(offsets[:, 1], torch.full((12,), -0.7, dtype=torch.float64))
    assert torch.allclose(offsets[:, [0, 2]].norm(dim=-1), torch.full((12,), 2.5, dtype=torch.float64))
    # Cameras stay upright: image "down" (+y) has a positive world-y (down) component.
    assert bool((traj.c2w[:, 1, 1] > 0).all())
    _assert_orthonormal(traj.c2w)


def test_full_orbit_is_a_closed_loop():
    traj = orbit(9, 1.0, image_size=SIZE)
    assert torch.allclose(traj.c2w[0], traj.c2w[-1], atol=1e-12)


def test_dolly_moves_along_direction():
    direction = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    traj = dolly(5, distance=2.0, start=(0.5, 0.0, 0.0), direction=direction.tolist(), image_size=SIZE)
    steps = traj.centers - torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    expected = torch.linspace(0, 2.0, 5, dtype=torch.float64)[:, None] * direction
    assert torch.allclose(steps, expected, atol=1e-12)
    assert torch.allclose(traj.c2w[:, :3, 2], direction.expand(5, 3), atol=1e-12)  # forward axis
    _assert_orthonormal(traj.c2w)


def test_builder_accepts_explicit_K():
    K = torch.tensor([[50.0, 0, 40.0], [0, 60.0, 30.0], [0, 0, 1]], dtype=torch.float64)
    traj = dolly(3, 1.0, K=K, image_size=SIZE)
    assert torch.equal(traj.K[2], K)


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------
def test_resample_to_4n_plus_1_keeps_endpoints_and_orthonormality():
    traj = orbit(14, 2.0, degrees=200.0, image_size=SIZE)
    traj = Trajectory(traj.c2w, traj.K, SIZE, torch.arange(14, dtype=torch.float64) / 10)
    out = resample_to_4n_plus_1(traj)
    assert len(out) == 17
    assert torch.equal(out.c2w[0], traj.c2w[0]) and torch.equal(out.c2w[-1], traj.c2w[-1])
    assert torch.equal(out.timestamps[[0, -1]], traj.timestamps[[0, -1]])
    _assert_orthonormal(out.c2w)
    # Interpolated cameras of an orbit still look (almost) at its centre.
    uv, z = project_points(torch.zeros(1, 3, dtype=torch.float64), out.K, out.w2c)
    assert bool((z > 0).all())
    assert (uv[:, 0] - out.K[:, :2, 2]).abs().max() < 0.5
    assert len(traj.to_4n_plus_1(33)) == 33


def test_resample_same_length_is_identity():
    traj = pan_and_return(9, translation=(0.2, 0.0, 0.0), image_size=SIZE)
    out = resample_to_4n_plus_1(traj, 9)
    assert torch.equal(out.c2w, traj.c2w) and torch.equal(out.K, traj.K)
    out = resample(traj, 9)  # the general path copies on-grid frames too
    assert torch.equal(out.c2w, traj.c2w) and torch.equal(out.K, traj.K)


def test_resample_interpolates_midpoints():
    traj = pan_and_return(3, yaw_degrees=90.0, translation=(1.0, 0.0, 0.0), image_size=SIZE)
    out = resample(traj.select([0, 1]), 3)  # 0 and 90 degrees -> midpoint at 45 degrees
    fwd = out.c2w[1, :3, 2]
    assert torch.allclose(fwd, torch.tensor([math.sqrt(0.5), 0.0, math.sqrt(0.5)], dtype=torch.float64))
    assert torch.allclose(out.c2w[1, :3, 3], torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("n", [0, 8, 10, 32])
def test_resample_to_4n_plus_1_rejects_other_counts(n):
    with pytest.raises(ValueError, match="4n\\+1"):
        resample_to_4n_plus_1(orbit(5, 1.0, image_size=SIZE), n)


def test_trajectory_copies_its_inputs():
    c2w = _eye_poses(2).numpy()
    traj = Trajectory(c2w, np.eye(3), SIZE)
    c2w[0, 0, 3] = 99.0  # mutating the caller's array must not change the trajectory
    assert float(traj.c2w[0, 0, 3]) == 0.0


# ----------------------------------------------------------------------------------------------
# Named presets
# ----------------------------------------------------------------------------------------------
def test_presets_one_set_of_defaults_and_overrides():
    from mirage_model.geometry.trajectory import PRESETS, make_trajectory

    assert set(PRESETS) == {"orbit", "dolly", "pan-and-return"}
    assert torch.equal(make_trajectory("orbit", 9, SIZE).c2w, orbit(9, radius=0.5, degrees=60.0, image_size=SIZE).c2w)
    assert torch.equal(make_trajectory("dolly", 5, SIZE, distance=3.0).c2w, dolly(5, 3.0, image_size=SIZE).c2w)
    pan = make_trajectory("pan-and-return", 9, SIZE, yaw_degrees=40.0)
    assert torch.equal(pan.c2w, pan_and_return(9, 40.0, translation=(0.3, 0.0, 0.0), image_size=SIZE).c2w)
    assert pan.image_size == SIZE
    with pytest.raises(ValueError, match="'spiral'.*orbit"):
        make_trajectory("spiral", 9, SIZE)
    with pytest.raises(ValueError, match="'wobble'"):
        make_trajectory("orbit", 9, SIZE, wobble=1)
