"""The camera convention: pixel centres, latent-grid intrinsics, pose validation, projection."""

import math

import pytest
import torch

from mirage_model.geometry.camera import (
    backproject_depth,
    invert_pose,
    latent_grid_size,
    latent_intrinsics,
    look_at,
    make_intrinsics,
    opengl_to_opencv,
    project_points,
    scale_intrinsics,
    validate_intrinsics,
    validate_pose,
)

H, W = 704, 1280
K = make_intrinsics(900.0, 910.0, 641.3, 349.8)
EYE = torch.eye(4, dtype=torch.float64)


def test_latent_grid_of_the_paper_resolution():
    assert latent_grid_size((704, 1280)) == (44, 80)
    assert latent_grid_size((704, 1280))[0] * latent_grid_size((704, 1280))[1] == 3520
    with pytest.raises(ValueError, match="multiple"):
        latent_grid_size((700, 1280))


def test_latent_cell_centre_is_pixel_16u_plus_7_5():
    """A 3-D point seen at the centre of latent cell (u, v) projects to pixel (16u+7.5, 16v+7.5)."""
    Kl = latent_intrinsics(K, (H, W))
    us, vs = torch.meshgrid(torch.arange(80.0, dtype=torch.float64), torch.arange(44.0, dtype=torch.float64),
                            indexing="xy")
    depth = torch.full((44, 80), 3.0, dtype=torch.float64)
    pts = backproject_depth(depth, Kl, EYE).reshape(-1, 3)  # latent cells at integer (u, v)
    uv, z = project_points(pts, K[None], EYE[None])
    torch.testing.assert_close(uv[0, :, 0], (16 * us + 7.5).reshape(-1), atol=1e-9, rtol=0)
    torch.testing.assert_close(uv[0, :, 1], (16 * vs + 7.5).reshape(-1), atol=1e-9, rtol=0)
    torch.testing.assert_close(z[0], torch.full_like(z[0], 3.0))


def test_plain_scaling_of_the_release_is_half_a_cell_off():
    """Scaling cx by w / W alone puts the point seen at a block's centre ~0.47 cells off its cell."""
    Kl = latent_intrinsics(K, (H, W))
    naive = K.clone()
    naive[:2] /= 16
    cells = torch.stack(torch.meshgrid(torch.arange(80.0, dtype=torch.float64),
                                       torch.arange(44.0, dtype=torch.float64), indexing="xy"), -1).reshape(-1, 2)
    centres = torch.cat([16 * cells + 7.5, torch.ones(len(cells), 1, dtype=torch.float64)], 1)
    pts = 2.0 * torch.linalg.solve(K, centres.T).T  # the world point seen at each block centre
    ours, _ = project_points(pts, Kl[None], EYE[None])
    theirs, _ = project_points(pts, naive[None], EYE[None])
    assert float((ours[0] - cells).abs().max()) < 1e-9
    torch.testing.assert_close((theirs[0] - cells).abs(), torch.full_like(cells, 7.5 / 16))


def test_scale_intrinsics_round_trip_and_image_corners():
    small = scale_intrinsics(K, (H, W), (176, 320))
    back = scale_intrinsics(small, (176, 320), (H, W))
    torch.testing.assert_close(back, K)
    # The outer image edge (-0.5) maps to the outer edge of the smaller image.
    edge = torch.tensor([-0.5, -0.5, 1.0], dtype=torch.float64)
    ray = torch.linalg.solve(K, edge)
    px = small @ ray
    torch.testing.assert_close(px[:2], torch.tensor([-0.5, -0.5], dtype=torch.float64))


def test_backproject_then_project_is_identity():
    c2w = look_at([0.3, -0.2, -1.0], [0.0, 0.0, 2.0])
    g = torch.Generator().manual_seed(0)
    depth = 1 + torch.rand(60, 80, generator=g, dtype=torch.float64)
    Ks = make_intrinsics(70, 70, 39.5, 29.5)
    pts = backproject_depth(depth, Ks, c2w).reshape(-1, 3)
    uv, z = project_points(pts, Ks[None], invert_pose(c2w)[None])
    ys, xs = torch.meshgrid(torch.arange(60.0, dtype=torch.float64), torch.arange(80.0, dtype=torch.float64),
                            indexing="ij")
    torch.testing.assert_close(uv[0, :, 0], xs.reshape(-1))
    torch.testing.assert_close(uv[0, :, 1], ys.reshape(-1))
    torch.testing.assert_close(z[0], depth.reshape(-1))


def test_invert_pose_and_look_at():
    c2w = look_at([1.0, -0.5, 2.0], [0.0, 0.0, 0.0])
    torch.testing.assert_close(c2w @ invert_pose(c2w), EYE)
    uv, z = project_points(torch.zeros(1, 3, dtype=torch.float64), K[None], invert_pose(c2w)[None])
    torch.testing.assert_close(uv[0, 0], K[:2, 2])  # the target is at the principal point
    assert float(z) > 0
    torch.testing.assert_close(look_at([0, 0, 0], [0, 0, 1]), EYE)


def test_opengl_flip_is_hand_checked():
    gl = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(opengl_to_opencv(gl), torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0],
                                                                               dtype=torch.float64)))


def test_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="c2w: .*non-finite"):
        validate_pose(torch.full((4, 4), float("nan")))
    bad = EYE.clone().expand(3, 4, 4).clone()
    bad[2, 0, 0] = 1.1
    with pytest.raises(ValueError, match=r"poses\[2\]: rotation is not orthonormal"):
        validate_pose(bad, "poses")
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="determinant"):
        validate_pose(mirror)
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 4, 4\)"):
        validate_pose(torch.eye(3))
    with pytest.raises(ValueError, match="last row"):
        validate_pose(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="focal"):
        validate_intrinsics(make_intrinsics(-1, 1, 0, 0))
    # within tolerance is accepted
    a = math.radians(1e-5)
    ok = EYE.clone()
    ok[0, 0] += 1e-5 * a
    validate_pose(ok)
