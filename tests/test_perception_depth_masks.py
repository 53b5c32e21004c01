"""Plane-sweep depth, rigid/optical flow and dynamic/sky/static masks against exact synthetic ground truth.

The clip: 11 frames of 240x320 in ``default_scene(seed=0, moving_object=True)`` (frame ``i`` at
``time = i / 16``), the camera translating 0.7 m sideways (+x) and 0.6 m down while looking into
the room (+z, slightly down), so the rolling ball (radius 0.35 m, along +x at z = 2.6 m) is large
in view (~5,000 px).

Why not a purely sideways line: a camera moving at constant speed along +x, parallel to the ball's
motion, sees the ball exactly as it would see a *static* ball at another depth (the relative
displacement stays parallel to the baseline), so no method based on depth + flow from those
frames alone can tell it moves. Any component of camera motion across the ball's direction breaks
the ambiguity; this clip has 40 degrees of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_depth_anything

from mirage_model.geometry.camera import intrinsics_from_fov, invert_pose, look_at, pixel_grid, project_points
from mirage_model.perception.depth import (
    DepthResult,
    StereoParams,
    align_depth,
    cell_sweep_depth,
    default_depth_range,
    estimate_depth_video,
    geometric_consistency,
    learned_depth,
    plane_sweep_depth,
    select_neighbours,
)
from mirage_model.perception.masks import (
    MotionMaskParams,
    clean_mask,
    epipolar_residual,
    learned_segmentation_mask,
    moving_object_mask,
    optical_flow,
    rigid_flow,
    sky_mask,
    static_mask,
)
from mirage_model.synthetic import default_scene, render, render_trajectory

HW = (240, 320)
N_FRAMES = 11
FPS = 16.0
REF = 5
START = (-0.5, -0.25, 0.3)
END = (0.2, 0.35, 0.3)
LOOK = (0.0, 0.3, 1.0)
HALF = StereoParams(scale=0.5)


def _path(n: int = N_FRAMES) -> torch.Tensor:
    poses = []
    for i in range(n):
        a = i / (n - 1)
        eye = torch.tensor(START, dtype=torch.float64) * (1 - a) + torch.tensor(END, dtype=torch.float64) * a
        poses.append(look_at(eye, eye + torch.tensor(LOOK, dtype=torch.float64)))
    return torch.stack(poses)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def _abs_rel(depth: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((depth[mask] - gt[mask]).abs() / gt[mask]).mean())


@pytest.fixture(scope="module")
def clip():
    K = intrinsics_from_fov(60.0, HW)
    c2w = _path()
    out = render_trajectory(default_scene(seed=0, moving_object=True), K, c2w, HW, fps=FPS)
    return K, c2w, out


@pytest.fixture(scope="module")
def sweep(clip):
    K, c2w, out = clip
    return plane_sweep_depth(out.rgb, K, c2w, REF)


# ----------------------------------------------------------------------------------------------
# Plane-sweep depth
# ----------------------------------------------------------------------------------------------
def test_plane_sweep_depth_accuracy_and_coverage(clip, sweep):
    K, c2w, out = clip
    gt = out.depth[REF]
    assert int(out.dynamic_mask[REF].sum()) > 4000  # the ball is large in view
    r = sweep
    assert isinstance(r, DepthResult)
    assert r.depth.shape == HW and r.depth.dtype == torch.float32
    assert r.confidence.shape == HW and r.confidence.dtype == torch.float32
    assert r.valid.shape == HW and r.valid.dtype == torch.bool
    assert float(r.confidence.min()) >= 0.0 and float(r.confidence.max()) <= 1.0
    assert bool((r.depth[~r.valid] == 0).all()) and bool((r.depth[r.valid] > 0).all())
    assert r.neighbours == (3, 4, 6, 7)
    non_sky = ~out.sky_mask[REF]
    coverage = float(r.valid[non_sky].float().mean())
    abs_rel = _abs_rel(r.depth, gt, r.valid)  # every valid pixel, the moving ball included
    assert coverage >= 0.5, coverage
    assert abs_rel <= 0.10, abs_rel
    assert _abs_rel(r.depth, gt, r.valid & ~out.dynamic_mask[REF]) <= 0.05


def _cell_median(depth: torch.Tensor, cell: int) -> torch.Tensor:
    h, w = depth.shape[0] // cell, depth.shape[1] // cell
    return depth.reshape(h, cell, w, cell).permute(0, 2, 1, 3).reshape(h, w, -1).median(-1).values


def test_cell_sweep_one_depth_per_latent_cell(clip):
    """One depth per 16 x 16 cell: most non-sky cells valid, within a few percent of the cells' depth."""
    K, c2w, out = clip
    r = cell_sweep_depth(out.rgb, K, c2w, REF, cell=16)
    assert r.depth.shape == (15, 20) and r.valid.dtype == torch.bool and r.neighbours == (3, 4, 6, 7)
    gt = _cell_median(out.depth[REF], 16)
    still = _cell_median((~out.dynamic_mask[REF] & ~out.sky_mask[REF]).float(), 16) > 0.5
    assert float(r.valid[still].float().mean()) >= 0.6
    assert _abs_rel(r.depth, gt, r.valid & still) <= 0.05
    assert bool((r.depth[~r.valid] == 0).all())
    # The range may come from known points (the memory's): the sweep then covers their depths.
    near, far = default_depth_range(K, c2w[REF], c2w[[3, 4, 6, 7]], HW, points=_points_of(out, K, c2w, REF))
    r2 = cell_sweep_depth(out.rgb, K, c2w, REF, cell=16, depth_range=(near, far))
    assert r2.depth_range == (near, far)
    assert _abs_rel(r2.depth, gt, r2.valid & still) <= 0.05


def _points_of(out, K, c2w, i):
    from mirage_model.geometry.camera import backproject_depth

    pts = backproject_depth(out.depth[i], K, c2w[i])
    return pts[out.depth[i] > 0][::50]


def test_cell_sweep_refuses_what_it_cannot_observe(clip):
    K, c2w, out = clip
    rotation = c2w.clone()
    rotation[:, :3, 3] = rotation[REF, :3, 3]  # every camera at the same centre: no parallax
    with pytest.raises(ValueError, match="parallax"):
        cell_sweep_depth(out.rgb, K, rotation, REF, cell=16, neighbours=[4, 6], depth_range=(0.5, 20.0))
    with pytest.raises(ValueError, match="multiple of the cell"):
        cell_sweep_depth(out.rgb[:, :, :250], K, c2w, REF, cell=16)
    flat = torch.full_like(out.rgb, 0.5)  # no texture anywhere: nothing to match
    assert not bool(cell_sweep_depth(flat, K, c2w, REF, cell=16).valid.any())


def test_plane_sweep_first_frame_one_sided(clip):
    """Frame 0 has neighbours on one side only: border pixels they never see must not be trusted."""
    K, c2w, out = clip
    r = plane_sweep_depth(out.rgb, K, c2w, 0, params=HALF)
    assert r.neighbours == (1, 2, 3, 4)
    assert r.depth.shape == HW  # upsampled back to full resolution
    assert float(r.valid.float().mean()) >= 0.35  # (0.45 measured: one-sided borders are dropped)
    assert _abs_rel(r.depth, out.depth[0], r.valid) <= 0.10


def test_depth_scales_with_the_poses(clip):
    """Scaling every camera translation by s scales the depth by s (default range follows)."""
    K, c2w, out = clip
    s = 2.5
    scaled = c2w.clone()
    scaled[:, :3, 3] *= s
    frames = out.rgb[3:8]
    a = plane_sweep_depth(frames, K, c2w[3:8], 2, params=HALF)
    b = plane_sweep_depth(frames, K, scaled[3:8], 2, params=HALF)
    assert b.depth_range[0] == pytest.approx(s * a.depth_range[0], rel=1e-9)
    both = a.valid & b.valid
    assert float(both.float().sum()) >= 0.99 * float(a.valid.float().sum())
    ratio = b.depth[both] / a.depth[both]
    assert float((ratio - s).abs().max()) <= 1e-3 * s
    # An explicit range scales the same way.
    c = plane_sweep_depth(frames, K, scaled[3:8], 2, depth_range=(s * 1.0, s * 20.0), params=HALF)
    d = plane_sweep_depth(frames, K, c2w[3:8], 2, depth_range=(1.0, 20.0), params=HALF)
    both = c.valid & d.valid
    assert float(((c.depth[both] / d.depth[both]) - s).abs().max()) <= 1e-3 * s


def test_estimate_depth_video_consistency_removes_outliers(clip):
    K, c2w, out = clip
    idx = [4, 5, 6]
    plain = estimate_depth_video(out.rgb, K, c2w, idx, consistency=False, params=HALF)
    assert [r.neighbours for r in plain] == [(2, 3, 5, 6), (3, 4, 6, 7), (4, 5, 7, 8)]
    # What estimate_depth_video(..., consistency=None) does: neighbours among idx vote.
    checked = geometric_consistency(dict(zip(idx, plain)), K, c2w)
    checked = [checked[i] for i in idx]
    for i, p, q in zip(idx, plain, checked):
        assert bool((q.valid <= p.valid).all())
        assert float(q.valid.float().mean()) >= 0.4
        assert _abs_rel(q.depth, out.depth[i], q.valid) <= _abs_rel(p.depth, out.depth[i], p.valid)
        # most of the (inconsistent) moving ball is dropped
        ball = out.dynamic_mask[i]
        assert int((q.valid & ball).sum()) < 0.6 * int((p.valid & ball).sum()) + 1


def test_sky_is_invalid():
    K = intrinsics_from_fov(70.0, (120, 160))
    scene = default_scene(seed=0, open_ceiling=True)
    poses, outs = [], []
    for i in range(5):
        eye = torch.tensor([-0.2 + 0.1 * i, 0.1 + 0.05 * i, 0.0], dtype=torch.float64)
        poses.append(look_at(eye, eye + torch.tensor([0.0, -0.35, 1.0], dtype=torch.float64)))
        outs.append(render(scene, K, poses[-1], (120, 160)))
    frames = torch.stack([o.rgb for o in outs])
    r = plane_sweep_depth(frames, K, torch.stack(poses), 2)
    sky = outs[2].sky_mask
    assert 0.2 < float(sky.float().mean()) < 0.8
    # Sky is never valid except a <= 2 px fringe along the wall's top edge (patch fattening).
    assert int((r.valid & sky).sum()) <= 0.01 * int(sky.sum())
    import cv2

    dist = cv2.distanceTransform(sky.numpy().astype(np.uint8), cv2.DIST_L2, 3)
    assert float(dist[(r.valid & sky).numpy()].max(initial=0.0)) <= 2.5
    assert float(r.valid[~sky].float().mean()) >= 0.5
    assert _abs_rel(r.depth, outs[2].depth, r.valid & ~sky) <= 0.05
    predicted_sky = sky_mask(r.depth, r.valid)
    assert float(predicted_sky[sky].float().mean()) >= 0.99


def test_select_neighbours_skips_small_baselines():
    c2w = torch.eye(4, dtype=torch.float64).repeat(9, 1, 1)
    xs = [0.0, 0.1, 0.2, 0.2001, 0.3, 0.4, 0.4, 0.5, 0.6]
    c2w[:, 0, 3] = torch.tensor(xs, dtype=torch.float64)
    assert select_neighbours(c2w, 4) == [1, 3, 5, 7]  # 2 ~ 3 and 6 == 5 add no parallax
    assert select_neighbours(c2w, 0) == [1, 2, 4, 5]  # one side only: it gives all four
    assert select_neighbours(c2w, 8, per_side=1) == [6, 7]
    with pytest.raises(IndexError):
        select_neighbours(c2w, 9)


def test_default_depth_range_from_points_and_errors():
    K = intrinsics_from_fov(60.0, HW)
    ref = torch.eye(4, dtype=torch.float64)
    nb = ref.clone()[None]
    nb[0, 0, 3] = 0.1
    pts = torch.stack([torch.zeros(50), torch.zeros(50), torch.linspace(2.0, 5.0, 50)], dim=1).double()
    near, far = default_depth_range(K, ref, nb, HW, points=pts)
    assert near < 2.0 and far > 5.0
    near2, far2 = default_depth_range(K, ref, nb, HW)
    assert 0 < near2 < far2
    frames = torch.rand(2, 32, 32)
    rot = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    with pytest.raises(ValueError, match="baseline"):
        plane_sweep_depth(frames, intrinsics_from_fov(60.0, (32, 32)), rot, 0, neighbours=[1])
    with pytest.raises(IndexError):
        plane_sweep_depth(frames, intrinsics_from_fov(60.0, (32, 32)), rot, 2)


# ----------------------------------------------------------------------------------------------
# Flows
# ----------------------------------------------------------------------------------------------
def test_rigid_flow_matches_projection_exactly(clip):
    K, c2w, out = clip
    for dst in (REF + 1, REF + 3, 0):
        flow = rigid_flow(out.depth[REF], K, c2w[REF], c2w[dst])
        assert flow.shape == (*HW, 2) and flow.dtype == torch.float32
        uv, z = project_points(out.points[REF].reshape(-1, 3).double(), K[None], invert_pose(c2w[dst])[None])
        target = uv[0].reshape(*HW, 2).float()
        landed = pixel_grid(*HW) + flow
        ok = z[0].reshape(HW) > 0
        assert float((landed - target)[ok].abs().max()) < 2e-3
    depth = out.depth[REF].clone()
    depth[:10] = 0
    flow = rigid_flow(depth, K, c2w[REF], c2w[REF + 1])
    assert bool(torch.isnan(flow[:10]).all()) and not bool(torch.isnan(flow[10:]).any())
    assert float(rigid_flow(out.depth[REF], K, c2w[REF], c2w[REF]).abs().max()) < 1e-4


def test_optical_flow_methods(clip):
    K, c2w, out = clip
    gt = rigid_flow(out.depth[REF], K, c2w[REF], c2w[REF + 1])
    static = ~out.dynamic_mask[REF]
    for method, tol in (("dis", 0.2), ("farneback", 0.5)):
        flow = optical_flow(out.rgb[REF], out.rgb[REF + 1], method=method)
        assert flow.shape == (*HW, 2) and flow.dtype == torch.float32
        err = (flow - gt).norm(dim=-1)[static]
        assert float(err.median()) < tol, (method, float(err.median()))
    u8 = (out.rgb[REF] * 255).round().to(torch.uint8).numpy()
    assert optical_flow(u8, u8).abs().max() < 1e-3
    with pytest.raises(ValueError):
        optical_flow(u8, u8, method="raft")


def test_epipolar_residual(clip):
    K, c2w, out = clip
    rig = rigid_flow(out.depth[REF], K, c2w[REF], c2w[REF + 2])
    res = epipolar_residual(rig, K, c2w[REF], c2w[REF + 2], near=0.5)
    assert float(res.max()) < 1e-2  # every static point lies on its epipolar segment
    # Move the flow across the epipolar line by 3 px: the residual is 3 px.
    line = rigid_flow(out.depth[REF] * 2, K, c2w[REF], c2w[REF + 2]) - rig
    normal = torch.stack([-line[..., 1], line[..., 0]], -1)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    res = epipolar_residual(rig + 3 * normal, K, c2w[REF], c2w[REF + 2], near=0.5)
    assert float((res - 3).abs().median()) < 0.05


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------
def test_moving_object_mask_with_gt_depth(clip):
    K, c2w, out = clip
    for i in (REF, 2, 8):
        mask = moving_object_mask(out.rgb, out.depth, K, c2w, i)
        assert mask.shape == HW and mask.dtype == torch.bool
        iou = _iou(mask, out.dynamic_mask[i])
        assert iou >= 0.8, (i, iou)
    last = moving_object_mask(out.rgb, out.depth[N_FRAMES - 1], K, c2w, N_FRAMES - 1)  # one side only
    assert _iou(last, out.dynamic_mask[N_FRAMES - 1]) >= 0.8


def test_moving_object_mask_with_plane_sweep_depth(clip, sweep):
    K, c2w, out = clip
    gt_mask = out.dynamic_mask[REF]
    mask = moving_object_mask(out.rgb, sweep, K, c2w, REF)
    iou = _iou(mask, gt_mask)
    assert iou >= 0.8, iou
    # The same as a list / dict of results, and with Farneback flow it still finds the ball.
    assert torch.equal(moving_object_mask(out.rgb, {REF: sweep}, K, c2w, REF), mask)
    fb = moving_object_mask(out.rgb, sweep, K, c2w, REF, params=MotionMaskParams(flow_method="farneback"))
    assert float((fb & gt_mask).sum()) >= 0.7 * float(gt_mask.sum())
    # Static masks: valid, not moving, not sky.
    sky = sky_mask(sweep.depth, sweep.valid)
    stat = static_mask(mask, sky, sweep.valid)
    assert not bool((stat & mask).any()) and not bool((stat & ~sweep.valid).any())
    assert float((stat & gt_mask).sum()) <= 0.02 * float(gt_mask.sum())


def test_static_scene_mask_is_empty(clip):
    _, c2w, _ = clip
    hw = (120, 160)  # half resolution keeps the extra render cheap
    K = intrinsics_from_fov(60.0, hw)
    idx = list(range(3, 8))
    static = render_trajectory(default_scene(seed=0), K, c2w[idx], hw, fps=FPS)
    n_px = hw[0] * hw[1]
    mask = moving_object_mask(static.rgb, static.depth, K, c2w[idx], 2)
    assert int(mask.sum()) <= 0.002 * n_px
    r = plane_sweep_depth(static.rgb, K, c2w[idx], 2)
    mask = moving_object_mask(static.rgb, r, K, c2w[idx], 2)
    assert int(mask.sum()) <= 0.002 * n_px


def test_sky_and_static_mask_logic():
    depth = torch.tensor([[0.0, 1.0, 2.0], [50.0, 3.0, 4.0]])
    valid = torch.tensor([[False, True, False], [True, True, True]])
    assert sky_mask(depth).tolist() == [[True, False, False], [False, False, False]]
    assert sky_mask(depth, valid).tolist() == [[True, False, True], [False, False, False]]
    assert sky_mask(depth, valid, far=10.0).tolist() == [[True, False, True], [True, False, False]]
    moving = torch.tensor([[False, False, False], [False, True, False]])
    sky = sky_mask(depth, valid, far=10.0)
    assert static_mask(moving, sky, valid).tolist() == [[False, True, False], [False, False, True]]
    assert static_mask(moving.numpy(), sky.numpy(), valid.numpy()).dtype == torch.bool


def test_clean_mask():
    m = torch.zeros(60, 80, dtype=torch.bool)
    m[10:40, 10:40] = True
    m[20:24, 20:24] = False  # a hole: filled
    m[50, 70] = True  # a speck: opened away
    m[2:6, 60:64] = True  # a small blob: dropped by area
    out = clean_mask(m, min_area=50)
    assert bool(out[11:39, 11:39].all())  # (opening with the 3x3 ellipse may trim the corners)
    assert not bool(out[50, 70]) and not bool(out[2:6, 60:64].any())
    assert not bool(clean_mask(torch.zeros(8, 8, dtype=torch.bool)).any())


# ----------------------------------------------------------------------------------------------
# Learned options
# ----------------------------------------------------------------------------------------------
def test_align_depth_recovers_metric_depth():
    gen = torch.Generator().manual_seed(0)
    gt = 1.0 + 4.0 * torch.rand(40, 50, generator=gen)
    disparity = 0.37 / gt + 0.08  # what a relative inverse-depth model gives, up to scale/shift
    valid = torch.rand(40, 50, generator=gen) < 0.05  # sparse metric samples
    sparse = torch.where(valid, gt, torch.zeros_like(gt))
    depth, s, t = align_depth(disparity, sparse, inverse=True)
    assert s == pytest.approx(1 / 0.37, rel=1e-6) and t == pytest.approx(-0.08 / 0.37, rel=1e-5)
    assert float(((depth - gt).abs() / gt).max()) < 1e-4
    depth, s, _ = align_depth(gt * 0.2, sparse, inverse=False, fit_shift=False)
    assert s == pytest.approx(5.0, rel=1e-6) and float((depth - gt).abs().max()) < 1e-4
    # scale-free reference (e.g. plane-sweep depth in pose scale) works the same way
    depth, _, _ = align_depth(disparity, 3.0 * gt, valid, inverse=True)
    assert float(((depth - 3.0 * gt).abs() / gt).max()) < 1e-3
    with pytest.raises(ValueError, match="samples"):
        align_depth(disparity, torch.zeros_like(gt))


def test_learned_depth_is_aligned_to_sfm_points_robustly_and_a_bad_fit_is_measured(clip):
    """A depth model's relative inverse depth is the truth under an affine map the pipeline does not
    know, plus noise; the SfM points are world points of the scene, a tenth of them wrong (outliers,
    as SfM has). The depth aligned to them matches the ground truth (AbsRel <= 0.02) and its fit
    reports a small residual; a prediction unrelated to the scene reports a large one."""
    from mirage_model.perception.depth import align_predictions, sparse_depth_samples

    K, c2w, out = clip
    frames = [2, 6, 10]
    gen = torch.Generator().manual_seed(0)
    gt = out.depth[frames].double()
    seen = (gt > 0) & ~out.sky_mask[frames]
    truth_inv = torch.where(seen, 1.0 / gt.clamp_min(1e-6), torch.zeros_like(gt))
    pred = 7.3 * truth_inv + 0.41 + 0.004 * torch.randn(truth_inv.shape, generator=gen, dtype=torch.float64)
    points = out.points[frames[1], ::12, ::12].reshape(-1, 3)
    points = points[torch.isfinite(points).all(1) & (points.abs().sum(1) > 0)].double()
    wrong = torch.rand(len(points), generator=gen) < 0.1
    points[wrong] += torch.randn(int(wrong.sum()), 3, generator=gen, dtype=torch.float64) * 0.8
    targets = sparse_depth_samples(points, K, c2w[frames], HW)
    assert int((targets > 0).sum()) > 100
    results = align_predictions(pred.float(), targets, inverse=True)
    for r, g, m in zip(results, gt, seen):
        abs_rel = float(((r.depth.double() - g).abs() / g)[m].mean())
        assert abs_rel <= 0.02, abs_rel
        assert r.fit.residual < 0.05 and r.fit.explained > 0.9
        assert 0.6 < r.fit.inliers < 1.0  # wrong and occluded points dropped out
    unrelated = align_predictions(torch.rand(pred.shape, generator=gen) + 0.1, targets, inverse=True)
    assert max(r.fit.explained for r in unrelated) < 0.5  # what depth.min_fit_explained rejects


def _tiny_dpt(path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                    image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                    neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16)
    torch.manual_seed(0)
    DPTForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False,
                      ensure_multiple_of=16).save_pretrained(path)


@pytest.mark.parametrize("build", [_tiny_dpt, tiny_depth_anything], ids=["dpt", "depth_anything"])
def test_learned_depth_tiny_local_model(tmp_path, clip, build):
    K, c2w, out = clip
    build(tmp_path)
    frames = out.rgb[[4, 5], ::4, ::4]  # 60 x 80
    ref_depth = out.depth[[4, 5], ::4, ::4]
    raw = learned_depth(frames, tmp_path)
    assert len(raw) == 2 and raw[0].depth.shape == (60, 80) and raw[0].raw_depth.shape == (60, 80)
    aligned = learned_depth(frames, tmp_path, reference=(ref_depth, ref_depth > 0))
    for r in aligned:
        assert r.depth.shape == (60, 80) and r.depth.dtype == torch.float32
        assert bool((r.depth[r.valid] > 0).all()) and bool((r.depth[~r.valid] == 0).all())
    one = learned_depth(frames[0], tmp_path, output="depth")
    assert len(one) == 1 and one[0].depth.shape == (60, 80)
    # sparse world points as the metric samples
    pts = out.points[4, ::8, ::8].reshape(-1, 3)
    Ks = K.clone()
    Ks[:2] /= 4.0  # [::4] subsampling: pixel i of the small image is pixel 4i of the full one
    sp = learned_depth(frames[:1], tmp_path, sparse_points=pts, K=Ks, c2w=c2w[4])
    assert sp[0].depth.shape == (60, 80)
    with pytest.raises(ValueError):
        learned_depth(frames, tmp_path, sparse_points=pts)


def test_learned_segmentation_tiny_local_model(tmp_path, clip):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                          decoder_hidden_size=16, num_labels=4,
                          id2label={0: "wall", 1: "person;individual", 2: "car, auto", 3: "sky"})
    SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    frame = clip[2].rgb[REF, ::4, ::4]
    mask = learned_segmentation_mask(frame, tmp_path, classes=(0, 1, 2, 3))
    assert mask.shape == frame.shape[:2] and mask.dtype == torch.bool and bool(mask.all())
    assert not bool(learned_segmentation_mask(frame, tmp_path, classes=()).any())
    some = learned_segmentation_mask((frame.numpy() * 255).astype(np.uint8), tmp_path, classes=(1,))
    assert some.shape == frame.shape[:2]
    # by default the model's classes of moving things (person, car), found by their names
    from mirage_model.perception.masks import dynamic_classes

    assert dynamic_classes(cfg.id2label) == (1, 2)
    assert torch.equal(learned_segmentation_mask(frame, tmp_path), learned_segmentation_mask(frame, tmp_path, (1, 2)))
    with pytest.raises(ValueError, match="no class of a moving thing.*wall"):
        dynamic_classes({0: "wall", 1: "floor"})


def test_moving_objects_are_seeded_from_one_frame_and_propagated_by_a_video_model(tmp_path, clip):
    """The moving mask's components seed the objects; a SAM2 video model (tiny, random: its masks
    mean nothing) follows them forwards and backwards over the clip and answers for the frames
    asked. Without objects nothing is run."""
    from tiny_models import tiny_sam2_video
    from transformers import Sam2VideoModel

    from mirage_model.io.images import to_uint8
    from mirage_model.perception.masks import propagate_objects, seed_objects

    K, c2w, out = clip
    moving = out.dynamic_mask[6]
    objects = seed_objects(moving, min_area=0.002)
    assert len(objects) == 1 and torch.equal(objects[0], moving)  # the ball, one component
    speck = torch.zeros_like(moving)
    speck[0, 0] = True
    assert seed_objects(speck, min_area=0.002) == []
    model = Sam2VideoModel.from_pretrained(tiny_sam2_video(tmp_path / "sam2")).eval()
    frames = to_uint8(out.rgb[:9, ::4, ::4].numpy())
    small = [o[::4, ::4] for o in objects]
    found = propagate_objects(model, frames, 4, small, [0, 4, 8])
    assert found.shape == (3, 60, 80) and found.dtype == torch.bool
    assert not propagate_objects(model, frames, 4, [], [0, 4, 8]).any()
