"""Write-back after a generated chunk: stereo fused with the memory's own depth, masks, rotations."""

import numpy as np
import pytest
import torch

from mirage_model.generation import GenerationConfig, MirageGenerator
from mirage_model.generation.generator import first_frame_depth
from mirage_model.generation.writeback import cell_depths, chunk_writeback, fuse_depth, pixel_depths, upsample_nearest
from mirage_model.geometry.trajectory import pan_and_return
from mirage_model.perception.depth import DepthResult
from mirage_model.perception.synthetic_clip import synthetic_clip
from mirage_model.synthetic import default_scene, render

H, W = 64, 96


def _stereo(depth, valid):
    return DepthResult(depth=depth, confidence=valid.float(), valid=valid)


def test_fuse_prefers_memory_on_covered_cells_but_not_over_occluders():
    mem = torch.zeros(4, 6)
    mem[:, :3] = 2.0  # the memory covers the left half at depth 2
    sd = torch.full((4, 6), 2.1)
    sd[0, 0] = 1.0  # something new, clearly in front of stored geometry
    sv = torch.ones(4, 6, dtype=torch.bool)
    sv[:, 5] = False  # stereo has no depth in the last column
    wb = fuse_depth(_stereo(sd, sv), mem)
    assert wb.source == "stereo"
    assert wb.depth[1, 1] == 2.0 and wb.depth[0, 0] == 1.0  # memory wins; the occluder wins
    assert wb.depth[1, 4] == pytest.approx(2.1)  # uncovered: stereo
    assert not wb.valid[:, 5].any() and wb.valid[:, :5].all()
    assert wb.memory_cells == pytest.approx(11 / 24)


def test_fuse_without_stereo():
    mem = torch.zeros(4, 6)
    mem[:, :2] = torch.tensor([1.0, 3.0])
    filled = fuse_depth(None, mem)
    assert filled.source == "memory_fill" and filled.valid.all()
    assert torch.all(filled.depth[:, 2:] == 2.0) and torch.equal(filled.depth[:, :2], mem[:, :2])
    only = fuse_depth(None, mem, unobserved="skip")
    assert only.source == "memory_only" and torch.equal(only.valid, mem > 0)
    empty = fuse_depth(None, torch.zeros(4, 6))
    assert empty.source == "none" and not empty.valid.any()
    with pytest.raises(ValueError, match="unobserved"):
        fuse_depth(None, mem, unobserved="guess")


def test_upsample_nearest_fills_each_cell():
    grid = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    up = upsample_nearest(grid, (32, 48))
    assert up.shape == (32, 48) and up[0, 0] == 0 and up[31, 47] == 5 and up[15, 16] == 1


def test_chunk_writeback_excludes_the_moving_ball():
    """On a rendered clip with true depth, the shared static mask removes the rolling ball."""
    clip = synthetic_clip(seed=0, n_frames=9, image_size=(120, 160))
    i = 4
    stereo = [_stereo(clip.depth[i], clip.depth[i] > 0)]
    (wb, exclude), = chunk_writeback(clip.frames.numpy(), clip.K.float(), clip.c2w.float(), [i], stereo,
                                     [torch.zeros(120, 160)])
    ball = clip.dynamic_mask[i]
    assert wb.source == "stereo" and ball.sum() > 20
    assert exclude[ball].float().mean() > 0.8  # the ball is not written
    assert exclude[~ball & ~clip.sky_mask[i]].float().mean() < 0.1  # the static room is


def test_chunk_writeback_half_size_mask_still_excludes_the_ball():
    """The write-back may run its moving-object test at half size (one decision per 16-px cell is
    all the memory keeps): the ball is still excluded and the room still written."""
    clip = synthetic_clip(seed=0, n_frames=9, image_size=(240, 320))
    i = 4
    stereo = [_stereo(clip.depth[i], clip.depth[i] > 0)]
    (wb, exclude), = chunk_writeback(clip.frames.numpy(), clip.K.float(), clip.c2w.float(), [i], stereo,
                                     [torch.zeros(240, 320)], mask_scale=0.5)
    ball = clip.dynamic_mask[i]
    assert exclude.shape == (240, 320) and ball.sum() > 2000
    assert exclude[ball].float().mean() > 0.8
    assert exclude[~ball & ~clip.sky_mask[i]].float().mean() < 0.1


def test_cell_depths_per_latent_cell_with_the_memory_range():
    """Write-back stereo for the latent memory: one depth per cell, range from the memory's points."""
    clip = synthetic_clip(seed=0, n_frames=9, image_size=(128, 160))
    frames, K, c2w = clip.frames.numpy(), clip.K.float(), clip.c2w.float()
    from mirage_model.geometry.camera import backproject_depth

    pts = backproject_depth(clip.depth[0], clip.K, clip.c2w[0])[clip.depth[0] > 0].float()
    with_points, from_baselines = cell_depths(frames, K, c2w, [4, 8], 16, pts), cell_depths(frames, K, c2w, [4, 8], 16)
    for r, b in zip(with_points, from_baselines):
        assert r is not None and r.depth.shape == (8, 10) and r.depth_range != b.depth_range
        z = clip.depth[0][clip.depth[0] > 0]
        assert r.depth_range[0] >= 0.5 * float(z.min()) and r.depth_range[1] <= 1.7 * float(z.max())
    rotation = c2w.clone()
    rotation[:, :3, 3] = 0.0  # a pure rotation: unobservable, reported as None (then filled or skipped)
    assert cell_depths(frames, K, rotation, [4], 16, pts) == [None]


def test_pixel_depths_follow_the_same_rule():
    """The RGB cache's per-pixel write-back stereo: the memory's range, and None where unobservable."""
    clip = synthetic_clip(seed=0, n_frames=9, image_size=(128, 160))
    frames, K, c2w = clip.frames.numpy(), clip.K.float(), clip.c2w.float()
    from mirage_model.geometry.camera import backproject_depth

    pts = backproject_depth(clip.depth[0], clip.K, clip.c2w[0])[clip.depth[0] > 0].float()
    cells = cell_depths(frames, K, c2w, [4, 8], 16, pts)
    half = GenerationConfig(writeback_depth_scale=0.5).writeback_stereo()
    pixels = pixel_depths(frames, K, c2w, [4, 8], pts, params=half)
    for p, c in zip(pixels, cells):
        assert p is not None and p.depth.shape == (128, 160) and p.depth_range == pytest.approx(c.depth_range)
    # a memory far larger than RANGE_POINTS (an RGB cache at full size): a subsample, the same range
    from mirage_model.generation.writeback import RANGE_POINTS

    many = pts.repeat(-(-2 * RANGE_POINTS // len(pts)) + 1, 1)
    for big, c in zip(cell_depths(frames, K, c2w, [4, 8], 16, many), cells):
        assert big.depth_range == pytest.approx(c.depth_range, rel=0.02)
    near_rotation = c2w.clone()
    near_rotation[:, :3, 3] *= 1e-3  # a baseline of millimetres against metres of depth
    assert pixel_depths(frames, K, near_rotation, [4, 8], pts) == [None, None]
    assert cell_depths(frames, K, near_rotation, [4, 8], 16, pts) == [None, None]


@pytest.fixture(scope="module")
def gen():
    return MirageGenerator.from_preset("tiny", seed=0)


def test_pure_rotation_still_writes_new_content(gen):
    """A pure rotation has no stereo baseline; the new view's content is still remembered."""
    traj = pan_and_return(65, yaw_degrees=80.0, translation=(0.0, 0.0, 0.0), image_size=(H, W))
    view = render(default_scene(0), traj.K[0], traj.c2w[0], (H, W))
    img = (view.rgb.numpy() * 255).round().astype(np.uint8)
    runs = {}
    for policy in ("memory_median", "skip"):
        cfg = GenerationConfig(steps=1, memory="latent", progress=False, unobserved_depth=policy)
        runs[policy] = gen.generate(img, "", traj, cfg, first_depth=view.depth).chunk_stats
    filled, skipped = runs["memory_median"], runs["skip"]
    assert filled[0]["depth_sources"].get("memory_fill", 0) >= 4
    assert skipped[0]["depth_frames_skipped"] >= 4
    assert filled[0]["cache_points"] > skipped[0]["cache_points"]
    # on the way back the filled memory covers more of the view than the skipping one
    assert filled[1]["hole_rate"] < skipped[1]["hole_rate"]
    # every cell of the 8 written frames is accounted for: written, or skipped for a reason
    for stats in filled + skipped:
        cells = stats["cells"]
        assert sum(cells[k] for k in ("written", "no_depth", "excluded", "known", "unobserved")) == 8 * (H // 16) * (W // 16)
        assert cells["written"] == stats["points_written"] and 0 <= cells["covered"] <= 8 * (H // 16) * (W // 16)
        assert 0 <= cells["filled"] <= cells["read"]
    assert skipped[0]["cells"]["unobserved"] + skipped[0]["cells"]["no_depth"] > filled[0]["cells"]["no_depth"]


def test_both_memories_judge_write_back_depth_by_one_rule(gen):
    """Frames of a pan whose centimetres of baseline give no parallax at the memory's depths are
    filled from the memory by both memories: stereo there is noise, and its moving-object test
    would exclude most of the frame. (Further on, where the memory has too few points in view to
    give a range, the sweep takes its range from the baselines and runs.)"""
    traj = pan_and_return(65, yaw_degrees=80.0, translation=(0.05, 0.0, 0.0), image_size=(H, W))
    view = render(default_scene(0), traj.K[0], traj.c2w[0], (H, W))
    img = (view.rgb.numpy() * 255).round().astype(np.uint8)
    for memory in ("latent", "rgb"):
        cfg = GenerationConfig(steps=1, memory=memory, progress=False)
        first = gen.generate(img, "", traj, cfg, first_depth=view.depth).chunk_stats[0]
        assert first["depth_sources"].get("memory_fill", 0) >= 4, (memory, first["depth_sources"])
        assert first["points_written"] > 0


def test_first_frame_depth_sources(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    cfg = GenerationConfig(progress=False)
    assert torch.all(first_frame_depth(img, cfg) == 2.0)
    given = torch.rand(H, W) + 1
    assert torch.equal(first_frame_depth(img, cfg, given), given)
    with pytest.raises(ValueError, match="NaN"):
        first_frame_depth(img, cfg, torch.full((H, W), float("nan")))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        first_frame_depth(img, cfg, torch.ones(1, H, W))


def test_cli_generate_with_image_and_depth_file(tmp_path, capsys):
    from PIL import Image

    from jobs.cli import main

    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "first.png")
    np.save(tmp_path / "depth.npy", np.full((H, W), 3.0, np.float32))
    rc = main(["generate", "--image", str(tmp_path / "first.png"), "--first-depth", str(tmp_path / "depth.npy"),
               "--frames", "33", "--steps", "1", "--trajectory", "dolly", "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "video.mp4").stat().st_size > 0
    np.save(tmp_path / "bad.npy", np.ones((10, 10), np.float32))
    capsys.readouterr()
    rc = main(["generate", "--image", str(tmp_path / "first.png"), "--first-depth", str(tmp_path / "bad.npy"),
               "--frames", "33", "--steps", "1", "--out", str(tmp_path / "out2")])
    assert rc != 0 and "bad.npy" in capsys.readouterr().err
