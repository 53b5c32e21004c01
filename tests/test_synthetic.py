"""Tests of the synthetic renderer: exact geometry, view-independent textures, masks, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mirage_model.geometry.camera import (
    backproject_depth,
    intrinsics_from_fov,
    invert_pose,
    look_at,
    make_intrinsics,
    project_points,
)
from mirage_model.synthetic import (
    ROOM_ID,
    SKY_ID,
    Box,
    MovingSphere,
    SyntheticScene,
    default_scene,
    render,
    render_trajectory,
)

HW = (360, 480)
K = intrinsics_from_fov(90.0, HW)


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    return rgb @ torch.tensor([0.299, 0.587, 0.114])


def test_output_types_and_ranges():
    out = render(default_scene(0, moving_object=True), K.numpy(), look_at((0, 0, 0), (0, 0, 1)).numpy(), HW)
    h, w = HW
    assert out.rgb.shape == (h, w, 3) and out.rgb.dtype == torch.float32
    assert out.depth.shape == (h, w) and out.depth.dtype == torch.float32
    assert out.points.shape == (h, w, 3) and out.points.dtype == torch.float32
    assert out.surface_id.dtype == torch.int32
    assert out.dynamic_mask.dtype == torch.bool and out.sky_mask.dtype == torch.bool
    assert float(out.rgb.min()) >= 0.0 and float(out.rgb.max()) <= 1.0
    assert not out.sky_mask.any() and float(out.depth.min()) > 0


def test_depth_backprojects_to_points_exactly():
    scene = default_scene(3, moving_object=True)
    K_skew = make_intrinsics(300.0, 310.0, 241.3, 177.8)
    K_skew[0, 1] = 2.5
    c2w = look_at((0.4, -0.3, 0.2), (1.5, 0.6, 2.0))
    out = render(scene, K_skew, c2w, HW, time=0.5)
    pts = backproject_depth(out.depth, K_skew, c2w)
    valid = ~out.sky_mask
    assert torch.allclose(pts[valid], out.points[valid], atol=1e-4)
    # Round trip: the points project back onto the pixel centres.
    uv, z = project_points(out.points.reshape(-1, 3).double(), K_skew[None], invert_pose(c2w)[None])
    grid = torch.stack(torch.meshgrid(torch.arange(HW[0]), torch.arange(HW[1]), indexing="ij")[::-1], -1)
    assert torch.allclose(uv[0], grid.reshape(-1, 2).double(), atol=2e-3)
    assert torch.allclose(z[0].float(), out.depth.reshape(-1), atol=1e-4)


def test_points_lie_on_their_surfaces():
    scene = default_scene(0)
    out = render(scene, K, look_at((0.2, 0.1, -0.3), (-1.0, 0.8, 1.0)), HW)
    pts = out.points.double()
    sid = out.surface_id
    room = pts[sid == ROOM_ID]
    q = (room - torch.tensor(scene.room_center)).abs() / torch.tensor(scene.room_half_size)
    assert torch.allclose(q.amax(-1), torch.ones(len(q), dtype=torch.float64), atol=1e-5)
    seen = 0
    for i, box in enumerate(scene.boxes):
        p = pts[sid == i + 1]
        seen += len(p)
        q = (p - torch.tensor(box.center)).abs() / torch.tensor(box.half_size)
        assert torch.allclose(q.amax(-1), torch.ones(len(q), dtype=torch.float64), atol=1e-5)
    assert seen > 0


def test_fronto_parallel_wall_depth_is_exact():
    scene = SyntheticScene(room_half_size=(4.0, 1.5, 3.0), boxes=(), seed=1)
    hw = (121, 161)  # odd sizes: the principal point is a pixel centre
    k = intrinsics_from_fov(70.0, hw)
    out = render(scene, k, look_at((0, 0, 0), (0, 0, 1)), hw)
    assert abs(float(out.depth[60, 80]) - 3.0) < 1e-5
    wall = out.points[..., 2] > 3.0 - 1e-4
    assert wall.float().mean() > 0.5
    assert torch.allclose(out.depth[wall], torch.full_like(out.depth[wall], 3.0), atol=1e-5)
    # Sideways by 1 m and turned to face -x: the wall x = -4 is 3 m away.
    out = render(scene, k, look_at((-1, 0, 0), (-2, 0, 0)), hw)
    assert abs(float(out.depth[60, 80]) - 3.0) < 1e-5


def test_texture_is_view_independent():
    scene = default_scene(0)
    c2w_a = look_at((0, 0, 0), (0.2, 0.2, 1.0))
    c2w_b = look_at((0.35, -0.15, 0.25), (0.0, 0.3, 1.5))
    a = render(scene, K, c2w_a, HW)
    b = render(scene, K, c2w_b, HW)
    pts = a.points.reshape(-1, 3).double()
    uv, z = project_points(pts, K[None], invert_pose(c2w_b)[None])
    uv, z = uv[0], z[0]
    h, w = HW
    inb = (z > 0.1) & (uv[:, 0] > 0) & (uv[:, 0] < w - 1) & (uv[:, 1] > 0) & (uv[:, 1] < h - 1)
    near = uv.round().long()
    near[:, 0].clamp_(0, w - 1)
    near[:, 1].clamp_(0, h - 1)
    depth_b = b.depth[near[:, 1], near[:, 0]].double()
    covisible = inb & ((depth_b - z).abs() < 0.01 * z)
    assert covisible.float().mean() > 0.5
    # Bilinear sample of B at the projected (continuous) positions; align_corners=True puts -1/1
    # on the first/last pixel centres, matching the pixel-centre convention.
    grid = torch.stack([uv[:, 0] / (w - 1) * 2 - 1, uv[:, 1] / (h - 1) * 2 - 1], -1).float()
    sampled = F.grid_sample(b.rgb.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                            align_corners=True)[0, :, 0].T
    diff = (sampled - a.rgb.reshape(-1, 3)).abs().amax(-1)[covisible]
    # Exact surface texture gives a median of ~5e-4 here; B sampled 1 px off gives ~7e-3.
    assert float(diff.median()) < 0.005
    assert float((diff < 0.05).float().mean()) > 0.9


def _sphere_depth(sphere: MovingSphere, time: float, k: torch.Tensor, c2w: torch.Tensor, hw) -> np.ndarray:
    """Analytic z-depth of the sphere per pixel (inf where the ray misses it)."""
    h, w = hw
    k, c2w = k.numpy(), c2w.numpy()
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    y = (v - k[1, 2]) / k[1, 1]
    x = (u - k[0, 2]) / k[0, 0]
    d = np.stack([x, y, np.ones_like(x)], -1) @ c2w[:3, :3].T
    oc = c2w[:3, 3] - sphere.center_at(time).numpy()
    a = (d * d).sum(-1)
    b = d @ oc
    c = oc @ oc - sphere.radius ** 2
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def test_moving_sphere_mask_and_motion():
    scene = default_scene(0, moving_object=True)
    c2w = look_at((0, 0, 0), (0, 0.4, 1))
    masks = []
    for time in (0.0, 1.0):
        out = render(scene, K, c2w, HW, time=time)
        analytic = _sphere_depth(scene.moving, time, K, c2w, HW)
        on_sphere = np.abs(out.depth.numpy() - analytic) < 1e-4
        assert out.dynamic_mask.sum() > 500
        assert np.array_equal(out.dynamic_mask.numpy(), on_sphere)
        assert torch.equal(out.dynamic_mask, out.surface_id == scene.moving_id)
        masks.append(out.dynamic_mask)
    assert not torch.equal(masks[0], masks[1])
    cols = [torch.nonzero(m)[:, 1].double().mean() for m in masks]
    assert cols[1] > cols[0] + 20  # it rolls along +x, i.e. to the right in this view
    static = render(default_scene(0), K, c2w, HW, time=1.0)
    assert not static.dynamic_mask.any()


def test_open_ceiling_sky():
    up = look_at((0, 0, 0), (0, -1, 0), up=(0, 0, -1))
    sky = render(default_scene(0, open_ceiling=True), K, up, HW)
    assert sky.sky_mask.all()
    assert (sky.depth == 0).all() and (sky.surface_id == SKY_ID).all()
    assert torch.isfinite(sky.rgb).all() and float(sky.rgb.min()) >= 0 and float(sky.rgb.max()) <= 1
    closed = render(default_scene(0), K, up, HW)
    assert not closed.sky_mask.any()
    assert abs(float(closed.depth[HW[0] // 2, HW[1] // 2]) - 1.5) < 1e-3
    # Looking horizontally through an open ceiling: sky above the walls only.
    side = render(default_scene(0, open_ceiling=True), K, look_at((0, 0, 0), (1, 0, 0)), HW)
    rows = side.sky_mask.float().mean(1)
    assert rows[0] > 0.5 and rows[HW[0] // 2:].sum() == 0


def test_determinism_and_seed():
    c2w = look_at((0, 0, 0), (1, 0.2, 1))
    a = render(default_scene(5), K, c2w, HW)
    b = render(default_scene(5), K, c2w, HW)
    c = render(default_scene(6), K, c2w, HW)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    assert torch.equal(a.depth, c.depth)  # the layout does not depend on the seed
    assert float((a.rgb - c.rgb).abs().mean()) > 0.05


@pytest.mark.parametrize("yaw", [0, 90, 180, 270])
def test_texture_is_rich(yaw):
    target = (math.sin(math.radians(yaw)), 0.0, math.cos(math.radians(yaw)))
    out = render(default_scene(0), K, look_at((0, 0, 0), target), HW)
    g = _gray(out.rgb)
    gx = torch.zeros_like(g)
    gy = torch.zeros_like(g)
    gx[:, 1:-1] = (g[:, 2:] - g[:, :-2]) / 2
    gy[1:-1] = (g[2:] - g[:-2]) / 2
    mag = torch.hypot(gx, gy)
    assert float((mag > 0.01).float().mean()) > 0.3
    # No large flat areas: every 40x40 block has texture.
    blocks = (mag > 0.01).float()[:HW[0] // 40 * 40, :HW[1] // 40 * 40]
    blocks = blocks.reshape(HW[0] // 40, 40, HW[1] // 40, 40).mean((1, 3))
    assert float(blocks.min()) > 0.05


def test_texture_scale_smooths_the_surfaces_not_the_geometry():
    c2w = look_at((0, 0, 0), (1, 0.2, 1))
    detailed, smooth = (render(default_scene(2, texture_scale=s), K, c2w, HW) for s in (1.0, 3.0))
    assert torch.equal(detailed.depth, smooth.depth) and torch.equal(detailed.surface_id, smooth.surface_id)

    def high_frequency(rgb):  # energy left after a 4x area down- and upsampling (what a 16x VAE keeps)
        x = rgb.permute(2, 0, 1)[None]
        low = F.interpolate(F.avg_pool2d(x, 4), size=HW, mode="bilinear", align_corners=False)
        return float(((x - low) ** 2).mean())

    assert high_frequency(smooth.rgb) < 0.5 * high_frequency(detailed.rgb)
    with pytest.raises(ValueError, match="texture_scale"):
        default_scene(0, texture_scale=0.0)


def test_render_trajectory_matches_single_frames():
    scene = default_scene(0, moving_object=True)
    c2ws = torch.stack([look_at((0.1 * i, 0, 0), (0.1 * i, 0.4, 1)) for i in range(3)])
    hw = (60, 80)
    k = intrinsics_from_fov(90.0, hw)
    traj = render_trajectory(scene, k, c2ws, hw, fps=2.0)
    assert traj.rgb.shape == (3, 60, 80, 3) and traj.dynamic_mask.shape == (3, 60, 80)
    for i in range(3):
        single = render(scene, k, c2ws[i], hw, time=i / 2.0)
        assert torch.equal(traj.rgb[i], single.rgb) and torch.equal(traj.depth[i], single.depth)


def test_invalid_inputs_raise():
    scene = default_scene(0)
    bad = torch.eye(4, dtype=torch.float64)
    bad[0, 0] = 2.0
    with pytest.raises(ValueError):
        render(scene, K, bad, HW)
    with pytest.raises(ValueError):
        render(scene, K, torch.eye(4), (0, 10))
    with pytest.raises(ValueError):
        Box(center=(0, 0, 0), half_size=(1, -1, 1))
    with pytest.raises(ValueError):
        MovingSphere(start=(0, 0, 0), velocity=(0, 0, 0), radius=0.0)


def test_default_scene_keeps_centre_free():
    scene = default_scene(0)
    for box in scene.boxes:
        c, hs = torch.tensor(box.center), torch.tensor(box.half_size)
        nearest = torch.clamp(torch.zeros(3, dtype=torch.float64), c - hs, c + hs)
        assert float(nearest.norm()) > 1.0
        assert abs(box.center[1] + box.half_size[1] - scene.floor_y) < 1e-12  # on the floor
