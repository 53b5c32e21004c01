"""The latent memory on the synthetic room: known motion, revisits, culling, growth."""

import torch

from mirage_model.geometry.camera import invert_pose, latent_intrinsics, project_points
from mirage_model.geometry.trajectory import pan_and_return
from mirage_model.memory import LatentMemory, MemoryConfig, gather_features, zbuffer
from mirage_model.synthetic import default_scene, render

SIZE = (176, 320)
GRID = (11, 20)


def _cell_ids() -> torch.Tensor:
    """A 2-channel 'feature' holding each latent cell's own (u, v) (exact in float16)."""
    v, u = torch.meshgrid(torch.arange(GRID[0], dtype=torch.float32), torch.arange(GRID[1], dtype=torch.float32),
                          indexing="ij")
    return torch.stack([u, v])


def test_features_land_where_ground_truth_geometry_says():
    """Write cell ids from view A, read at view B: compare with where B's true surface is seen in A."""
    scene = default_scene(0)
    traj = pan_and_return(33, yaw_degrees=40.0, translation=(0.4, 0.0, 0.3), image_size=SIZE)
    a, b = 0, 6
    obs_a = render(scene, traj.K[a], traj.c2w[a], SIZE)
    mem = LatentMemory(channels=2)
    mem.insert(_cell_ids(), obs_a.depth, traj.K[a], traj.c2w[a], SIZE)
    out = mem.read(traj.K[b], traj.c2w[b], image_size=SIZE)

    # Ground truth: ray-cast B at its latent cell centres (a 11x20 render with latent intrinsics),
    # project those true surface points into A's latent grid, keep the ones A really sees.
    Kb, Ka = latent_intrinsics(traj.K[b], SIZE), latent_intrinsics(traj.K[a], SIZE)
    gt_b = render(scene, Kb, traj.c2w[b], GRID)
    uv_a, z_a = project_points(gt_b.points.reshape(-1, 3).double(), Ka[None], traj.w2c[a][None])
    uv_a, z_a = uv_a[0].view(*GRID, 2), z_a[0].view(GRID)
    depth_a = render(scene, Ka, traj.c2w[a], GRID).depth  # A's true depth per latent cell
    col = uv_a[..., 0].round().long().clamp(0, GRID[1] - 1)
    row = uv_a[..., 1].round().long().clamp(0, GRID[0] - 1)
    in_a = (uv_a[..., 0] > -0.5) & (uv_a[..., 0] < GRID[1] - 0.5) & (uv_a[..., 1] > -0.5) & (uv_a[..., 1] < GRID[0] - 0.5)
    covisible = in_a & (gt_b.depth > 0) & ((z_a - depth_a[row, col]).abs() < 0.02 * z_a)
    check = covisible & out.visibility[0]
    assert int(check.sum()) > 0.4 * GRID[0] * GRID[1]
    stored_uv = out.features[0].float().permute(1, 2, 0)  # (h, w, 2): the A cell each B cell shows
    err = (stored_uv - uv_a.float()).abs().amax(-1)[check]
    assert float((err <= 1.0).float().mean()) >= 0.99
    assert float(err.mean()) < 0.6  # no systematic half-cell bias


def test_pure_revisit_adds_nothing_even_at_depth_edges():
    scene = default_scene(0, open_ceiling=True)
    traj = pan_and_return(41, yaw_degrees=100.0, image_size=SIZE)
    mem = LatentMemory()
    g = torch.Generator().manual_seed(0)
    counts = []
    for i in range(0, 41, 4):
        obs = render(scene, traj.K[i], traj.c2w[i], SIZE)
        mem.insert(torch.randn(48, *GRID, generator=g), obs.depth, traj.K[i], traj.c2w[i], SIZE,
                   exclude=obs.sky_mask, frame_index=i)
        counts.append(len(mem))
    turn = 20 // 4  # frames after 20 retrace the way out
    assert counts[turn] > counts[0]  # the way out did discover new space
    assert counts[-1] == counts[turn]  # the way back added 0 points


def test_frustum_culling_returns_exactly_the_brute_force_readout():
    scene = default_scene(1)
    traj = pan_and_return(65, yaw_degrees=160.0, image_size=SIZE)
    mem = LatentMemory(config=MemoryConfig(cull_min_points=0))  # cull however small the memory
    for i in range(0, 33, 4):
        obs = render(scene, traj.K[i], traj.c2w[i], SIZE)
        mem.insert(torch.randn(48, *GRID), obs.depth, traj.K[i], traj.c2w[i], SIZE, frame_index=i)
    assert len(mem.group_sizes) > 10 and int(mem.group_sizes.sum()) == len(mem)
    for i in (0, 16, 32):
        Kl = latent_intrinsics(traj.K[i], SIZE)[None]
        culled = mem.read(traj.K[i], traj.c2w[i], image_size=SIZE)
        brute = zbuffer(mem.points, Kl, invert_pose(traj.c2w[i])[None], GRID)
        assert torch.equal(culled.features, gather_features(mem.features, brute))
        assert torch.equal(culled.depth, brute.depth)
        seen, ids = mem._points_in_view(Kl, invert_pose(traj.c2w[i])[None].float(), GRID)
        if i == 0:
            assert ids is not None and len(ids) < len(mem)  # something was actually culled


def test_eviction_keeps_groups_consistent_and_reads_correct():
    scene = default_scene(0)
    traj = pan_and_return(33, yaw_degrees=90.0, image_size=SIZE)
    mem = LatentMemory(config=MemoryConfig(max_points=400, cull_min_points=0))
    for i in range(0, 17, 4):
        obs = render(scene, traj.K[i], traj.c2w[i], SIZE)
        mem.insert(torch.randn(48, *GRID), obs.depth, traj.K[i], traj.c2w[i], SIZE, frame_index=i)
        assert int(mem.group_sizes.sum()) == len(mem) <= 400
    Kl = latent_intrinsics(traj.K[16], SIZE)[None]
    brute = zbuffer(mem.points, Kl, invert_pose(traj.c2w[16])[None], GRID)
    assert torch.equal(mem.read(traj.K[16], traj.c2w[16], image_size=SIZE).depth, brute.depth)
