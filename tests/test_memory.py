"""LatentMemory / RGBPointCache: exact round trips, z-buffer order, dedup, persistence, bad input."""

import math

import pytest
import torch

from mirage_model.geometry.camera import invert_pose, make_intrinsics
from mirage_model.memory import (
    LatentMemory,
    MemoryConfig,
    RGBPointCache,
    gather_features,
    latent_frame_indices,
    nearest_fill,
    resize_depth,
    zbuffer,
)
from mirage_model.vae import build_vae

H, W = 176, 320
K = make_intrinsics(280.0, 280.0, (W - 1) / 2, (H - 1) / 2)
EYE = torch.eye(4, dtype=torch.float64)


def _yaw(deg: float, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    a = math.radians(deg)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    c2w[:3, 3] = torch.tensor(t)
    return c2w


def _depth_with_holes() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    depth = 2.0 + torch.rand(H, W, generator=g)
    depth[:40, :64] = 0.0  # unknown depth (e.g. sky)
    return depth


def test_round_trip_is_bit_exact_and_visibility_matches_valid_mask():
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(48, H // 16, W // 16, generator=g)
    depth = _depth_with_holes()
    exclude = torch.zeros(H, W, dtype=torch.bool)
    exclude[100:140, 200:260] = True  # a moving object
    mem = LatentMemory()
    added = mem.insert(latent, depth, K, EYE, (H, W), exclude=exclude)
    out = mem.read(K, EYE, image_size=(H, W))

    _, valid = resize_depth(depth, (H // 16, W // 16))
    cell_excluded = exclude[8::16, 8::16]  # nearest-exact samples each cell at its centre
    expected = valid & ~cell_excluded
    assert added == int(expected.sum()) > 0
    assert torch.equal(out.visibility[0], expected)
    stored = latent.to(torch.float16)
    vis = out.visibility[0]
    assert torch.equal(out.features[0][:, vis], stored[:, vis])  # bit-exact in float16
    assert (out.features[0][:, ~vis] == 0).all()
    assert out.features.dtype == torch.float16


def test_depth_is_resized_bilinearly_at_cell_centres():
    # A horizontal ramp depth = 2 + 0.001 x: the cell centre is x = 16u + 7.5.
    x = torch.arange(W, dtype=torch.float32)
    depth = (2.0 + 0.001 * x).expand(H, W).clone()
    d, valid = resize_depth(depth, (H // 16, W // 16))
    centres = 2.0 + 0.001 * (16 * torch.arange(W // 16) + 7.5)
    assert valid.all()
    torch.testing.assert_close(d[0], centres, atol=1e-6, rtol=0)


def test_readout_depth_is_the_stored_depth():
    mem = LatentMemory()
    depth = torch.full((H, W), 3.25)
    mem.insert(torch.zeros(48, H // 16, W // 16), depth, K, EYE, (H, W))
    out = mem.read(K, EYE, image_size=(H, W))
    torch.testing.assert_close(out.depth[0], torch.full((H // 16, W // 16), 3.25), atol=1e-5, rtol=0)


def _two_layers() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A far wall (z = 5, feature 0) and a near card (z = 2, feature 1) covering the centre."""
    h, w = H // 16, W // 16
    Kl = make_intrinsics(280.0 / 16, 280.0 / 16, (w - 1) / 2, (h - 1) / 2)
    vs, us = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")

    def layer(z, u0, u1, v0, v1):
        sel = (us >= u0) & (us < u1) & (vs >= v0) & (vs < v1)
        x = (us[sel] - Kl[0, 2]) / Kl[0, 0] * z
        y = (vs[sel] - Kl[1, 2]) / Kl[1, 1] * z
        return torch.stack([x, y, torch.full_like(x, z)], -1)

    far = layer(5.0, 0, w, 0, h)
    near = layer(2.0, 5, 15, 3, 8)
    points = torch.cat([far, near]).to(torch.float32)
    feats = torch.cat([torch.zeros(len(far), 1), torch.ones(len(near), 1)]).to(torch.float16)
    near_cells = torch.zeros(h, w, dtype=torch.bool)
    near_cells[3:8, 5:15] = True
    return points, feats, near_cells


def test_occlusion_nearest_point_wins_regardless_of_order():
    points, feats, near_cells = _two_layers()
    h, w = near_cells.shape
    Kl = make_intrinsics(280.0 / 16, 280.0 / 16, (w - 1) / 2, (h - 1) / 2)[None]
    w2c = EYE[None]
    results = []
    for seed in (None, 0, 1, 2):
        if seed is None:
            order = torch.arange(len(points))
        else:
            order = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))
        for _ in range(2):  # and run twice
            zb = zbuffer(points[order], Kl, w2c, (h, w))
            results.append(gather_features(feats[order], zb)[0, 0])
    for img in results:
        assert torch.equal(img == 1, near_cells)  # near card wherever both project
        assert bool((img[~near_cells] == 0).all())


def test_equal_depth_ties_go_to_the_oldest_point():
    p = torch.tensor([[0.0, 0.0, 2.0]] * 3)
    zb = zbuffer(p, make_intrinsics(10, 10, 2, 2)[None], EYE[None], (5, 5))
    assert int(zb.index[0, 2, 2]) == 0
    assert int(zb.visible.sum()) == 1


def test_box_culling_is_the_eight_corner_test():
    """A box is culled for a camera exactly when all 8 corners are outside one frustum plane, and
    never when a point of the box lands on the grid."""
    from mirage_model.geometry.camera import look_at
    from mirage_model.memory.projection import boxes_in_view
    from mirage_model.memory.projection import zbuffer as zb_

    g = torch.Generator().manual_seed(0)
    lo = torch.rand(400, 3, generator=g) * 8 - 4
    bounds = torch.stack([lo, lo + torch.rand(400, 3, generator=g) * 0.6], 1)
    K = make_intrinsics(12, 11, 9.7, 5.2)
    K[0, 1] = 0.3  # skew
    K = K[None].float()
    w2c = invert_pose(look_at((0.3, -0.2, -1.0), (0.5, 0.4, 2.0)))[None].float()
    seen = boxes_in_view(bounds, K, w2c, (11, 20))
    # reference: the 8 corners against each plane, in the camera frame
    sel = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.bool)
    corners = torch.where(sel[None], bounds[:, 1:2], bounds[:, 0:1])  # (G, 8, 3)
    cam = corners @ w2c[0, :3, :3].T + w2c[0, :3, 3]
    x, y, z = cam.unbind(-1)
    u_num, v_num = 12 * x + 0.3 * y + 9.7 * z, 11 * y + 5.2 * z
    planes = torch.stack([z - 1e-3, u_num + 0.5 * z, 19.5 * z - u_num, v_num + 0.5 * z, 10.5 * z - v_num])
    assert torch.equal(seen, ~(planes < 0).all(-1).any(0))
    assert 0 < int(seen.sum()) < len(seen)
    # never culls a box with a point on the grid
    pts = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(400, 3, generator=g)
    hit = zb_(pts, K, w2c, (11, 20)).index
    assert bool(seen[hit[hit >= 0]].all())


def test_readout_is_batched_over_cameras():
    mem = LatentMemory()
    mem.insert(torch.randn(48, H // 16, W // 16), torch.full((H, W), 4.0), K, EYE, (H, W))
    poses = torch.stack([EYE, _yaw(10), _yaw(-10), _yaw(180)])
    batched = mem.read(K, poses, image_size=(H, W))
    assert batched.features.shape == (4, 48, H // 16, W // 16)
    for t in range(4):
        single = mem.read(K, poses[t], image_size=(H, W))
        assert torch.equal(single.features[0], batched.features[t])
        assert torch.equal(single.visibility[0], batched.visibility[t])
    assert not batched.visibility[3].any()  # looking backwards sees nothing
    # w2c input gives the same answer as c2w input
    via_w2c = mem.read(K, w2c=invert_pose(poses), image_size=(H, W))
    assert torch.equal(via_w2c.features, batched.features)


def _sphere_depth(radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    x = (xs - K[0, 2]) / K[0, 0]
    y = (ys - K[1, 2]) / K[1, 1]
    return (radius / torch.sqrt(x**2 + y**2 + 1)).to(torch.float32)


def test_revisiting_the_same_cameras_adds_nothing():
    mem = LatentMemory()
    g = torch.Generator().manual_seed(3)
    poses = [_yaw(a) for a in (0, 8, 16, 24)]
    depth = _sphere_depth(3.0)  # a sphere around the camera: the same geometry from every yaw
    for i, pose in enumerate(poses):
        mem.insert(torch.randn(48, H // 16, W // 16, generator=g), depth, K, pose, (H, W), frame_index=i)
    n = len(mem)
    for i, pose in enumerate(reversed(poses)):  # the way back
        assert mem.insert(torch.randn(48, H // 16, W // 16), depth, K, pose, (H, W), frame_index=10 + i) == 0
    assert len(mem) == n


def test_insert_counts_what_became_of_every_cell():
    """Each cell is written, or skipped for one counted reason: no depth, excluded, already known."""
    gh, gw = H // 16, W // 16
    depth = torch.full((H, W), 3.0)
    depth[:32, :] = 0.0  # two rows of cells without depth
    exclude = torch.zeros(H, W, dtype=torch.bool)
    exclude[:, :48] = True  # three columns of cells excluded (moving objects / sky)
    for config in (MemoryConfig(), MemoryConfig(dedup="voxel")):
        mem = LatentMemory(config=config)
        first: dict[str, int] = {}
        n = mem.insert(torch.randn(48, gh, gw), depth, K, EYE, (H, W), exclude=exclude, counts=first)
        assert first == {"no_depth": 2 * gw, "excluded": 3 * (gh - 2), "known": 0, "written": n}
        assert n == (gh - 2) * (gw - 3)
        again: dict[str, int] = {}
        assert mem.insert(torch.randn(48, gh, gw), depth, K, EYE, (H, W), counts=again) == 3 * (gh - 2)
        assert again["known"] == n and sum(again.values()) == gh * gw, (config.dedup, again)


def test_keep_latest_overwrites_features_without_growing():
    mem = LatentMemory(config=MemoryConfig(keep="latest"))
    depth = torch.full((H, W), 3.0)
    mem.insert(torch.zeros(48, H // 16, W // 16), depth, K, EYE, (H, W), frame_index=0)
    n = len(mem)
    mem.insert(torch.ones(48, H // 16, W // 16), depth, K, EYE, (H, W), frame_index=4)
    assert len(mem) == n
    assert bool((mem.features == 1).all()) and bool((mem.frame_index == 4).all())


def test_camera_distance_is_centre_distance_plus_rotation_angle():
    from mirage_model.memory.base import camera_distance

    d = camera_distance(torch.stack([EYE, _yaw(30)]), torch.stack([EYE, _yaw(0, (3.0, 4.0, 0.0)), _yaw(-10)]))
    assert d[0].tolist() == pytest.approx([0.0, 5.0, math.radians(10)])
    assert d[1].tolist() == pytest.approx([math.radians(30), 5.0 + math.radians(30), math.radians(40)])


def test_view_radius_keeps_a_sample_per_view_and_reads_the_nearest_camera():
    """A wall written from two cameras 0.6 apart keeps both samples; each camera, and one near it,
    reads back the sample written from it; a camera within the radius of a writer adds nothing."""
    gh, gw = H // 16, W // 16
    mem = LatentMemory(config=MemoryConfig(view_radius=0.3))
    depth = torch.full((H, W), 4.0)
    left, right = _yaw(0, (-0.3, 0.0, 0.0)), _yaw(0, (0.3, 0.0, 0.0))
    n0 = mem.insert(torch.zeros(48, gh, gw), depth, K, left, (H, W), frame_index=0)
    n1 = mem.insert(torch.ones(48, gh, gw), depth, K, right, (H, W), frame_index=4)
    assert n0 == gh * gw and n1 == gh * gw  # the second view keeps its own sample of the wall
    assert mem.insert(torch.full((48, gh, gw), 2.0), depth, K, _yaw(0, (0.25, 0, 0)), (H, W), frame_index=8) == 0
    for pose, value in ((left, 0.0), (right, 1.0), (_yaw(0, (0.2, 0.0, 0.0)), 1.0), (_yaw(0, (-0.1, 0, 0)), 0.0)):
        out = mem.read(K, pose, image_size=(H, W))
        seen = out.visibility[0]
        assert float(seen.float().mean()) > 0.8
        inner = seen.clone()
        inner[:, :2] = inner[:, -2:] = False  # where only the other camera saw the wall
        assert bool((out.features[0][:, inner] == value).all()), pose[:3, 3]
        assert torch.allclose(out.depth[0][seen], torch.full_like(out.depth[0][seen], 4.0), rtol=1e-4)
    # the default keeps one sample per surface: the first
    one = LatentMemory()
    one.insert(torch.zeros(48, gh, gw), depth, K, left, (H, W), frame_index=0)
    assert one.insert(torch.ones(48, gh, gw), depth, K, right, (H, W), frame_index=4) < gh * gw // 4


def test_view_radius_still_shows_the_nearest_surface():
    """The nearest-camera choice is only among samples of the nearest surface: an occluder written
    from a far camera still hides the wall that a near camera wrote."""
    gh, gw = H // 16, W // 16
    mem = LatentMemory(config=MemoryConfig(view_radius=0.1))
    mem.insert(torch.zeros(48, gh, gw), torch.full((H, W), 4.0), K, EYE, (H, W), frame_index=0)
    near = torch.full((H, W), 4.0)
    near[:, W // 2:] = 2.0  # a box in front of the right half, written only from the second camera
    mem.insert(torch.ones(48, gh, gw), near, K, _yaw(0, (0.2, 0.0, 0.0)), (H, W), frame_index=4)
    out = mem.read(K, EYE, image_size=(H, W))
    right = out.features[0, 0, :, gw // 2 + 2:]
    assert bool((right == 1).all()) and bool((out.features[0, 0, :, :gw // 2 - 2] == 0).all())


def test_view_radius_needs_a_frame_index_per_camera(tmp_path):
    gh, gw = H // 16, W // 16
    mem = LatentMemory(config=MemoryConfig(view_radius=0.2))
    depth = torch.full((H, W), 3.0)
    mem.insert(torch.zeros(48, gh, gw), depth, K, EYE, (H, W), frame_index=0)
    with pytest.raises(ValueError, match="frame_index 0 was written from another camera"):
        mem.insert(torch.zeros(48, gh, gw), depth, K, _yaw(20), (H, W), frame_index=0)
    mem.insert(torch.ones(48, gh, gw), depth, K, _yaw(0, (1.0, 0, 0)), (H, W), frame_index=4)
    mem.save(tmp_path / "m.safetensors")
    back = LatentMemory.load(tmp_path / "m.safetensors")
    assert torch.equal(back.camera_frame, mem.camera_frame) and torch.equal(back.camera_c2w, mem.camera_c2w)
    a = mem.read(K, _yaw(0, (0.9, 0, 0)), image_size=(H, W))
    b = back.read(K, _yaw(0, (0.9, 0, 0)), image_size=(H, W))
    assert torch.equal(a.features, b.features) and torch.equal(a.visibility, b.visibility)
    assert bool((a.features[0][:, :, 2:] == 1).all())  # the sample from x = 1, the nearer, where it saw
    with pytest.raises(ValueError, match="view_radius needs dedup='view'"):
        MemoryConfig(dedup="voxel", view_radius=0.1)


def test_voxel_dedup_and_none():
    depth = torch.full((H, W), 3.0)
    lat = torch.randn(48, H // 16, W // 16)
    vox = LatentMemory(config=MemoryConfig(dedup="voxel"))
    n0 = vox.insert(lat, depth, K, EYE, (H, W))
    assert vox.voxel_size == pytest.approx(3.0 / (280.0 / 16))
    assert n0 > 0.9 * (H // 16) * (W // 16)
    assert vox.insert(lat, depth, K, EYE, (H, W)) == 0
    none = LatentMemory(config=MemoryConfig(dedup="none"))
    a = none.insert(lat, depth, K, EYE, (H, W))
    assert none.insert(lat, depth, K, EYE, (H, W)) == a and len(none) == 2 * a


def test_capacity_bound_evicts_oldest():
    mem = LatentMemory(config=MemoryConfig(dedup="none", max_points=300))
    depth = torch.full((H, W), 3.0)
    for i in range(3):
        mem.insert(torch.full((48, H // 16, W // 16), float(i)), depth, K, EYE, (H, W), frame_index=i)
    assert len(mem) == 300
    assert int(mem.frame_index.min()) == 1  # frame 0's points were the first to go
    assert int(mem.frame_index[-1]) == 2


def test_save_load_round_trip(tmp_path):
    mem = LatentMemory(config=MemoryConfig(depth_tolerance=0.02))
    mem.insert(torch.randn(48, H // 16, W // 16), _depth_with_holes(), K, EYE, (H, W), frame_index=7)
    path = tmp_path / "sub" / "mem.safetensors"
    mem.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mem.safetensors"]  # no temp files left
    back = LatentMemory.load(path)
    assert torch.equal(back.points, mem.points) and torch.equal(back.features, mem.features)
    assert torch.equal(back.frame_index, mem.frame_index) and torch.equal(back.write_cell, mem.write_cell)
    assert back.config == mem.config and back.stats() == mem.stats()
    with pytest.raises(ValueError, match="RGBPointCache"):
        RGBPointCache.load(path) if False else LatentMemory.load(_save_rgb(tmp_path))


def _save_rgb(tmp_path):
    rgb = RGBPointCache()
    rgb.insert(torch.rand(H, W, 3), torch.full((H, W), 2.0), K, EYE, (H, W))
    path = tmp_path / "rgb.safetensors"
    rgb.save(path)
    return path


def test_stats_count_exact_bytes():
    mem = LatentMemory()
    added = mem.insert(torch.randn(48, H // 16, W // 16), torch.full((H, W), 2.0), K, EYE, (H, W))
    s = mem.stats()
    assert s["points"] == added == (H // 16) * (W // 16)
    assert s["bytes_per_point"] == 12 + 48 * 2 + 4 + 4  # xyz, features, frame index, write cell
    assert s["bytes"] == added * s["bytes_per_point"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": torch.full((H, W), float("nan"))}, "depth: .*non-finite"),
        ({"c2w": torch.full((4, 4), float("inf"))}, "c2w: .*non-finite"),
        ({"c2w": torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0]))}, "c2w.*orthonormal"),
        ({"latent": torch.zeros(48, 5, 5)}, "features: expected shape"),
        ({"latent": torch.zeros(16, H // 16, W // 16)}, "latent: expected 48 channels"),
        ({"depth": torch.ones(3, H, W)}, "depth: expected a 2-D"),
        ({"K": torch.zeros(3, 3)}, "K.*focal"),
        ({"image_size": (170, 320)}, "multiple of the memory stride"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(kwargs, match):
    args = dict(latent=torch.zeros(48, H // 16, W // 16), depth=torch.ones(H, W), K=K, c2w=EYE,
                image_size=(H, W))
    args.update(kwargs)
    mem = LatentMemory()
    with pytest.raises(ValueError, match=match):
        mem.insert(**args)
    assert len(mem) == 0


def test_read_rejects_bad_cameras():
    mem = LatentMemory()
    with pytest.raises(ValueError, match="c2w"):
        mem.read(K, torch.full((4, 4), float("nan")), image_size=(H, W))
    with pytest.raises(ValueError, match="exactly one"):
        mem.read(K, EYE, w2c=EYE, image_size=(H, W))
    with pytest.raises(ValueError, match="same T cameras"):
        mem.read(torch.stack([K, K]), torch.stack([EYE, EYE, EYE]), image_size=(H, W))


def test_latent_frame_indices():
    assert latent_frame_indices(33) == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert len(latent_frame_indices(81)) == 21
    with pytest.raises(ValueError, match="4n \\+ 1"):
        latent_frame_indices(32)


def test_rgb_twin_renders_through_the_shared_zbuffer_and_encodes():
    vae = build_vae("tiny")
    h, w = 64, 96
    Kp = make_intrinsics(80.0, 80.0, (w - 1) / 2, (h - 1) / 2)
    g = torch.Generator().manual_seed(5)
    rgb = torch.rand(h, w, 3, generator=g)
    depth = torch.full((h, w), 2.0)
    cache = RGBPointCache(vae=vae)
    assert cache.insert(rgb, depth, Kp, EYE, (h, w)) == h * w
    render = cache.render(Kp, EYE, image_size=(h, w))
    assert torch.equal(render.features[0].permute(1, 2, 0), (rgb * 255 + 0.5).to(torch.uint8))
    # The same points through the shared z-buffer directly give the same picture.
    zb = zbuffer(cache.points, Kp[None], EYE[None], (h, w))
    assert torch.equal(zb.index, cache.project(Kp, EYE, image_size=(h, w)).index)
    out = cache.read(Kp, EYE.expand(5, 4, 4), image_size=(h, w))
    assert out.features.shape == (2, 48, h // 16, w // 16) and out.features.dtype == torch.float32
    assert bool(out.visibility.all())
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, 2.0), atol=1e-5, rtol=0)
    assert torch.isfinite(out.features).all()
    chunk = cache.read_chunk(Kp, EYE.expand(5, 4, 4), image_size=(h, w))
    assert torch.equal(chunk.features, out.features)  # deterministic encode
    assert not out.filled.any()  # at the writing camera nothing needs the crack fill
    # 1.6x closer: the pixels spread apart, the fill closes them, and the latent cells that only
    # the filled pixels make visible are the ones reported as filled
    closer = _yaw(0.0, (0.0, 0.0, 0.75))
    near = cache.read(Kp, closer.expand(5, 4, 4), image_size=(h, w))
    bare = RGBPointCache(vae=vae, config=MemoryConfig(fill_gaps=0))
    bare.insert(rgb, depth, Kp, EYE, (h, w))
    near_bare = bare.read(Kp, closer.expand(5, 4, 4), image_size=(h, w))
    assert near.visibility.all() and not near_bare.visibility.any()
    assert torch.equal(near.filled, near.visibility & ~near_bare.visibility)


def test_nearest_fill_gives_each_empty_pixel_the_nearest_colour():
    px = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)
    px[0, :, 1, 1] = torch.tensor([10, 20, 30], dtype=torch.uint8)
    px[0, :, 2, 4] = torch.tensor([200, 100, 50], dtype=torch.uint8)
    vis = torch.zeros(2, 4, 5, dtype=torch.bool)
    vis[0, 1, 1] = vis[0, 2, 4] = True
    out = nearest_fill(px, vis)
    assert out[0, :, 0, 0].tolist() == [10, 20, 30] and out[0, :, 3, 4].tolist() == [200, 100, 50]
    assert out[0, :, 1, 1].tolist() == [10, 20, 30] and out[0, :, 2, 4].tolist() == [200, 100, 50]
    assert torch.equal(out[1], px[1])  # nothing rendered: left as it is
    assert px[0, :, 0, 0].tolist() == [0, 0, 0]  # the input is not modified
    # against the exact Euclidean transform: the source taken is (nearly) the nearest rendered pixel
    from scipy.ndimage import distance_transform_edt

    g = torch.Generator().manual_seed(1)
    vis = torch.rand(1, 40, 56, generator=g) > 0.9
    coords = torch.arange(40 * 56).reshape(1, 1, 40, 56)  # each pixel's own index as its "colour"
    src = nearest_fill(coords, vis)[0, 0].flatten()
    ys, xs = src // 56, src % 56
    taken = ((ys - torch.arange(40)[:, None].expand(40, 56).flatten()) ** 2
             + (xs - torch.arange(56).expand(40, 56).flatten()) ** 2).double().sqrt()
    exact = torch.from_numpy(distance_transform_edt(~vis[0].numpy())).flatten()
    assert vis[0].flatten()[src].all() and (taken <= exact + 0.5).all()


def test_rgb_read_fills_render_holes_before_encoding():
    """The VAE encoder mixes every pixel into every latent (its attention spans the frame), so
    black holes in a render would change the latents of the cells the memory does see. Filled
    with the nearest rendered colour, the visible half of a half-covered read keeps the latents of
    the whole frame's read ten times more closely than with black holes."""
    from mirage_model.synthetic import default_scene, render

    vae = build_vae("tiny")
    h, w = 64, 96
    Kp = make_intrinsics(80.0, 80.0, (w - 1) / 2, (h - 1) / 2)
    view = render(default_scene(0), Kp, EYE, (h, w))
    depth = torch.full((h, w), 2.0)
    right = torch.zeros(h, w, dtype=torch.bool)
    right[:, w // 2:] = True
    rel_err = {}
    for fill in (True, False):
        whole, half = RGBPointCache(vae=vae, fill_holes=fill), RGBPointCache(vae=vae, fill_holes=fill)
        whole.insert(view.rgb, depth, Kp, EYE, (h, w))
        half.insert(view.rgb, depth, Kp, EYE, (h, w), exclude=right)
        a, b = (m.read(Kp, EYE.expand(5, 4, 4), image_size=(h, w)) for m in (whole, half))
        assert b.visibility.float().mean() == 0.5
        vis = b.visibility
        rel_err[fill] = float(((a.features - b.features) ** 2).mean(1)[vis].mean() / (a.features ** 2).mean(1)[vis].mean())
    assert rel_err[True] < 0.3 * rel_err[False], rel_err


def test_rgb_read_without_vae_is_a_clear_error():
    cache = RGBPointCache()
    with pytest.raises(ValueError, match="needs a VAE"):
        cache.read(K, EYE.expand(5, 4, 4), image_size=(H, W))


# -- cracks of a magnified surface --------------------------------------------------------------
def _plane_memory(config: MemoryConfig | None = None, depth: float = 4.0) -> LatentMemory:
    mem = LatentMemory(config=config)
    g = torch.Generator().manual_seed(3)
    mem.insert(torch.randn(48, H // 16, W // 16, generator=g), torch.full((H, W), depth), K, EYE, (H, W))
    return mem


def test_gap_fill_closes_the_cracks_of_a_surface_seen_from_closer():
    forward = _yaw(0.0, (0.0, 0.0, 2.0))  # halfway to a wall at z = 4: every point spreads 2x apart
    bare = _plane_memory(MemoryConfig(fill_gaps=0)).read(K, forward, image_size=(H, W))
    out = _plane_memory().read(K, forward, image_size=(H, W))
    # one point per cell, magnified 2x about the centre: points land on every other column of
    # rows 1, 3, .., 9, so three cells in four are empty; between those points all are cracks
    inner = (slice(None), slice(1, 10), slice(1, 20))
    assert bare.hole_rate > 0.7 and bare.visibility[0, 1::2, 3::2].all()
    assert out.visibility[inner].all() and out.filled is not None
    assert torch.equal(out.filled, out.visibility & ~bare.visibility)
    assert not out.visibility[0, 0].any()  # beyond the outermost points: not between two of them
    seen = bare.visibility[:, None].expand_as(out.features)
    assert torch.equal(out.features[seen], bare.features[seen])  # the z-buffer's winners stay
    # a filled cell shows one of the stored points at the wall's depth, not a blend
    stored = {tuple(f.tolist()) for f in _plane_memory().features}
    cells = out.features.permute(0, 2, 3, 1)[out.filled]
    assert all(tuple(f.tolist()) in stored for f in cells[:50])
    assert torch.allclose(out.depth[out.filled], torch.full_like(out.depth[out.filled], 2.0), rtol=1e-4)


def test_gap_fill_leaves_write_holes_and_opening_depth_edges_empty():
    # A hole at the writing resolution stays a hole: its border points were not neighbours when
    # written (the round-trip test above checks the same view with holes of every size).
    depth = torch.full((H, W), 4.0)
    depth[64:96, 96:128] = 0.0  # a 2x2-cell hole of unknown depth
    mem = LatentMemory()
    mem.insert(torch.randn(48, H // 16, W // 16), depth, K, EYE, (H, W))
    same = mem.read(K, EYE, image_size=(H, W))
    assert not same.visibility[0, 4:6, 6:8].any() and not same.filled.any()
    closer = mem.read(K, _yaw(0.0, (0.0, 0.0, 0.5)), image_size=(H, W))  # 8/7 magnified
    Kg = mem.grid_intrinsics(K, (H, W))
    rows, cols = torch.meshgrid(torch.arange(H // 16), torch.arange(W // 16), indexing="ij")
    src_r = torch.floor(Kg[1, 2] + (rows - Kg[1, 2]) * 3.5 / 4.0 + 0.5)  # write cell under each cell
    src_c = torch.floor(Kg[0, 2] + (cols - Kg[0, 2]) * 3.5 / 4.0 + 0.5)
    in_hole = (src_r >= 4) & (src_r <= 5) & (src_c >= 6) & (src_c <= 7)
    assert in_hole.sum() >= 4 and not closer.visibility[0][in_hole].any()
    assert closer.filled.any()  # the rest of the wall did open cracks, and they were filled
    # A depth edge opening up: a near strip (z = 2) in front of a far wall (z = 6), seen from the
    # side, uncovers wall the memory never saw. Near and far points that were neighbours bound
    # gaps of one or two cells there, and those stay empty: the pair disagrees on depth.
    depth = torch.full((H, W), 6.0)
    depth[:, 144:176] = 2.0
    latent = torch.randn(48, H // 16, W // 16)
    side = _yaw(0.0, (0.25, 0.0, 0.0))
    reads = {}
    for gap in (0, 2):
        mem = LatentMemory(config=MemoryConfig(fill_gaps=gap))
        mem.insert(latent, depth, K, EYE, (H, W))
        reads[gap] = mem.read(K, side, image_size=(H, W))
    opened = ~reads[0].visibility[0]
    assert opened[:, 1:-1].sum() >= H // 16  # a strip of disocclusion, one cell wide or more
    assert torch.equal(reads[2].visibility, reads[0].visibility) and not reads[2].filled.any()


def test_gap_fill_rule_on_a_row_of_three_cells():
    """The rule itself: the middle cell of [point 0, empty, point 1] is filled only when the two
    points were neighbours in one write (same frame, cells one apart) and agree on depth."""
    from mirage_model.memory.projection import ZBuffer, fill_gaps

    def fill(frames, cells, depths, max_gap=2):
        zb = ZBuffer(torch.tensor([[[0, -1, 1]]]), torch.tensor([[[depths[0], 0.0, depths[1]]]]))
        out, filled = fill_gaps(zb, torch.tensor(frames, dtype=torch.int32),
                                torch.tensor(cells, dtype=torch.int16), max_gap, 0.2)
        return filled[0, 0].tolist(), out.index[0, 0].tolist(), out.depth[0, 0].tolist()

    assert fill([0, 0], [[3, 4], [3, 5]], [2.0, 2.25]) == ([False, True, False], [0, 0, 1], [2.0, 2.0, 2.25])
    assert fill([0, 0], [[3, 4], [4, 5]], [2.25, 2.0])[1] == [0, 1, 1]  # diagonal neighbours; nearer wins
    assert fill([0, 4], [[3, 4], [3, 5]], [2.0, 2.0])[0] == [False] * 3  # two different writes
    assert fill([0, 0], [[3, 4], [3, 6]], [2.0, 2.0])[0] == [False] * 3  # a cell apart when written
    assert fill([0, 0], [[3, 4], [3, 5]], [2.0, 3.0])[0] == [False] * 3  # a depth edge
    assert fill([0, 0], [[-1, -1], [-1, -1]], [2.0, 2.0])[0] == [False] * 3  # cells not recorded
    assert fill([0, 0], [[3, 4], [3, 5]], [2.0, 2.0], max_gap=0)[0] == [False] * 3


def _fill_cell_by_cell(idx, dep, frames, cells, max_gap, tol):
    """The crack rule of ``fill_gaps``, one pass, written out per cell and per pair."""
    out_i, out_d, filled = idx.clone(), dep.clone(), torch.zeros_like(idx, dtype=torch.bool)
    T, h, w = idx.shape
    lines = ((0, 1), (1, 0), (1, 1), (1, -1))
    for t, r, c in [tuple(x) for x in (idx < 0).nonzero().tolist()]:
        best = None
        for dy, dx in lines:
            for a in range(1, max_gap + 1):
                for b in range(1, max_gap + 2 - a):
                    (ra, ca), (rb, cb) = (r - a * dy, c - a * dx), (r + b * dy, c + b * dx)
                    if not (0 <= ra < h and 0 <= ca < w and 0 <= rb < h and 0 <= cb < w):
                        continue
                    ia, ib = int(idx[t, ra, ca]), int(idx[t, rb, cb])
                    if ia < 0 or ib < 0 or ia == ib or (cells[ia] < 0).any() or (cells[ib] < 0).any():
                        continue
                    if frames[ia] != frames[ib] or (cells[ia].int() - cells[ib].int()).abs().max() > 1:
                        continue
                    da, db = float(dep[t, ra, ca]), float(dep[t, rb, cb])
                    if abs(da - db) <= tol * min(da, db) and (best is None or min(da, db) < best[0]):
                        best = (min(da, db), ia if da <= db else ib)
        if best is not None:
            out_d[t, r, c], out_i[t, r, c], filled[t, r, c] = best[0], best[1], True
    return out_i, out_d, filled


def test_gap_fill_pass_equals_the_rule_cell_by_cell():
    from mirage_model.memory.projection import ZBuffer, fill_gaps

    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        n = 60
        idx = torch.randint(0, n, (3, 9, 13), generator=g)
        idx[torch.rand(idx.shape, generator=g) < 0.4] = -1
        dep = torch.where(idx >= 0, 2 + 0.6 * torch.rand(idx.shape, generator=g), torch.zeros(idx.shape))
        frames = torch.randint(0, 2, (n,), generator=g, dtype=torch.int32)
        cells = torch.randint(-1, 3, (n, 2), generator=g).to(torch.int16)
        out, filled = fill_gaps(ZBuffer(idx, dep), frames, cells, 2, 0.2, passes=1)
        ref_i, ref_d, ref_f = _fill_cell_by_cell(idx, dep, frames, cells, 2, 0.2)
        assert filled.any() and torch.equal(filled, ref_f)
        assert torch.equal(out.index, ref_i) and torch.equal(out.depth, ref_d)
