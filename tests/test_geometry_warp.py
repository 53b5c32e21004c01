"""mirage_model.geometry.warp: the relative camera warp shared by plane sweep, rigid flow and reprojection."""

import torch

from mirage_model.geometry.camera import backproject_depth, invert_pose, look_at, make_intrinsics, project_points
from mirage_model.geometry.warp import relative_warp, reproject_depth


def _cams():
    K0 = make_intrinsics(50.0, 52.0, 15.5, 11.5)
    K1 = make_intrinsics(45.0, 45.0, 16.0, 12.0)
    c0 = look_at(torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.1, 0.0, 1.0], dtype=torch.float64))
    c1 = look_at(torch.tensor([0.3, -0.1, 0.1], dtype=torch.float64), torch.tensor([0.0, 0.1, 2.0], dtype=torch.float64))
    return K0, c0, K1, c1


def test_reproject_depth_matches_backproject_then_project():
    K0, c0, K1, c1 = _cams()
    depth = 1.0 + torch.rand(24, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    uv, z = reproject_depth(depth, K0, c0, K1, c1)
    world = backproject_depth(depth, K0, c0).reshape(-1, 3)
    uv_ref, z_ref = project_points(world, K1[None], invert_pose(c1)[None])
    assert torch.allclose(uv.reshape(-1, 2), uv_ref[0], atol=1e-9)
    assert torch.allclose(z.reshape(-1), z_ref[0], atol=1e-12)


def test_plane_homography_and_batching():
    K0, c0, K1, c1 = _cams()
    A, b = relative_warp(K0, c0, K1, c1)
    d = 2.5
    uv, _ = reproject_depth(torch.full((24, 32), d, dtype=torch.float64), K0, c0, K1, c1)
    H = A + torch.outer(b, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)) / d
    p = torch.tensor([7.0, 5.0, 1.0], dtype=torch.float64)
    q = H @ p
    assert torch.allclose(q[:2] / q[2], uv[5, 7], atol=1e-9)
    # one source against two destinations == each separately
    Ks, cs = torch.stack([K1, K0]), torch.stack([c1, c0])
    Ab, bb = relative_warp(K0, c0, Ks, cs)
    assert Ab.shape == (2, 3, 3) and bb.shape == (2, 3)
    assert torch.allclose(Ab[0], A) and torch.allclose(bb[0], b)
    assert torch.allclose(Ab[1], torch.eye(3, dtype=torch.float64), atol=1e-12) and bb[1].abs().max() < 1e-12
    depth = torch.full((24, 32), d, dtype=torch.float64)
    uvb, zb = reproject_depth(depth, K0, c0, Ks, cs)
    assert uvb.shape == (2, 24, 32, 2) and zb.shape == (2, 24, 32)
    assert torch.allclose(uvb[0], uv, atol=1e-9)
    grid_uv = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(24.0), indexing="xy"), -1).double()
    assert torch.allclose(uvb[1], grid_uv, atol=1e-9) and torch.allclose(zb[1], depth)
