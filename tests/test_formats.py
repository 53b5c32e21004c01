"""Camera file formats: round trips, hand-checked axis conversions and error messages."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from mirage_model.geometry import (
    Trajectory,
    load_trajectory,
    make_intrinsics,
    orbit,
    pan_and_return,
    project_points,
    read_colmap,
    read_nerf_transforms,
    read_re10k,
    read_worldscore,
    write_nerf_transforms,
    write_re10k,
    write_worldscore,
)

SIZE = (72, 128)  # (H, W)


def _orbit_with_times(n: int = 9) -> Trajectory:
    traj = orbit(n, radius=2.0, center=(0.3, -0.2, 1.0), height=0.4, degrees=300.0, image_size=SIZE)
    stamps = torch.arange(n, dtype=torch.float64) * 0.0625 + 12.5  # whole microseconds
    return Trajectory(traj.c2w, traj.K, SIZE, stamps)


def _assert_same(a: Trajectory, b: Trajectory, tol: float = 1e-9) -> None:
    assert a.image_size == b.image_size and len(a) == len(b)
    assert torch.allclose(a.c2w, b.c2w, rtol=tol, atol=tol)
    assert torch.allclose(a.K, b.K, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# RealEstate10K
# ----------------------------------------------------------------------------------------------
def test_re10k_write_read_identity(tmp_path: Path):
    traj = _orbit_with_times()
    path = tmp_path / "cams.txt"
    write_re10k(path, traj, url="https://www.youtube.com/watch?v=abc")
    lines = path.read_text().splitlines()
    assert lines[0] == "https://www.youtube.com/watch?v=abc"
    assert len(lines) == 1 + len(traj) and all(len(line.split()) == 19 for line in lines[1:])
    back = read_re10k(path, SIZE)
    _assert_same(traj, back)
    assert torch.allclose(back.timestamps, traj.timestamps, rtol=1e-12, atol=0)
    assert load_trajectory(path, SIZE).c2w.shape == traj.c2w.shape


def test_re10k_normalised_principal_point_convention(tmp_path: Path):
    # cx_norm = 0.5 is the exact image centre edge to edge -> (W - 1) / 2 with pixel centres at i.
    pose = "1 0 0 0 0 1 0 0 0 0 1 0"
    path = tmp_path / "c.txt"
    path.write_text(f"\n0 0.5 0.8 0.5 0.5 0 0 {pose}   \n")  # empty URL, trailing whitespace
    traj = read_re10k(path, (100, 200))
    assert torch.allclose(traj.K[0], make_intrinsics(100.0, 80.0, 99.5, 49.5))
    assert torch.equal(traj.c2w[0], torch.eye(4, dtype=torch.float64))
    # Camera 0 of the file: w2c translation t -> camera centre -R^T t.
    path.write_text("url\n5000000 0.5 0.5 0.5 0.5 0 0 0 0 1 1 0 1 0 2 -1 0 0 3\n")
    traj = read_re10k(path, (100, 200))
    assert torch.allclose(traj.centers[0], torch.tensor([3.0, -2.0, -1.0], dtype=torch.float64))
    assert float(traj.timestamps[0]) == 5.0


GOOD = "0 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


@pytest.mark.parametrize("bad_line, what", [
    ("0 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0", r"expected 19 fields, got 14"),
    ("0 0.5 abc 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0", r"field 3 is not a number: 'abc'"),
    ("0 0.5 0.5 0.5 0.5 0 0 1 0 0 nan 0 1 0 0 0 0 1 0", r"field 11 is not finite"),
    ("0 0.5 0.5 0.5 0.5 0 0 2 0 0 0 0 1 0 0 0 0 1 0", r"bad world-to-camera rotation.*orthonormal"),
    ("0 -0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0", r"bad intrinsics.*positive"),
])
def test_re10k_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, what: str):
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(["http://x", GOOD, GOOD, bad_line, GOOD]) + "\n")
    with pytest.raises(ValueError, match=rf"bad\.txt, line 4: {what}"):
        read_re10k(path, SIZE)


def test_re10k_without_url_line_keeps_first_frame(tmp_path: Path):
    path = tmp_path / "c.txt"
    path.write_text(GOOD + "\n" + GOOD + "\n")
    assert len(read_re10k(path, SIZE)) == 2


def test_re10k_empty_file_rejected(tmp_path: Path):
    path = tmp_path / "empty.txt"
    path.write_text("http://x\n\n")
    with pytest.raises(ValueError, match="no camera lines"):
        read_re10k(path, SIZE)


def test_re10k_needs_image_size_via_loader(tmp_path: Path):
    path = tmp_path / "c.txt"
    path.write_text("url\n" + GOOD + "\n")
    with pytest.raises(ValueError, match="image_size"):
        load_trajectory(path)


# ----------------------------------------------------------------------------------------------
# NeRF transforms.json (OpenGL camera axes)
# ----------------------------------------------------------------------------------------------
def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_nerf_identity_becomes_axis_flip(tmp_path: Path):
    path = _write_json(tmp_path / "transforms.json", {
        "camera_angle_x": math.radians(90.0), "w": 100, "h": 50,
        "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]})
    traj = read_nerf_transforms(path)
    assert torch.equal(traj.c2w[0], torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))
    # 90 degree horizontal FOV -> fx = W / 2; no cx/cy given -> centred (pixel centres at i).
    assert torch.allclose(traj.K[0], make_intrinsics(50.0, 50.0, 49.5, 24.5))
    assert traj.image_size == (50, 100)


def test_nerf_camera_looking_at_origin_projects_to_principal_point(tmp_path: Path):
    gl_c2w = np.eye(4)
    gl_c2w[2, 3] = 5.0  # at (0, 0, 5), identity rotation: an OpenGL camera looks along -z
    path = _write_json(tmp_path / "transforms.json", {
        "fl_x": 60.0, "fl_y": 60.0, "cx": 64.0, "cy": 36.0, "w": 128, "h": 72,
        "frames": [{"file_path": "a.png", "transform_matrix": gl_c2w.tolist()}]})
    traj = read_nerf_transforms(path)
    expected = np.diag([1.0, -1.0, -1.0, 1.0])
    expected[2, 3] = 5.0
    assert torch.equal(traj.c2w[0], torch.as_tensor(expected))
    assert torch.allclose(traj.K[0], make_intrinsics(60.0, 60.0, 63.5, 35.5))  # cx_nerf - 0.5
    uv, z = project_points(torch.zeros(1, 3, dtype=torch.float64), traj.K, traj.w2c)
    assert float(z[0, 0]) == pytest.approx(5.0)
    assert torch.allclose(uv[0, 0], traj.K[0, :2, 2])
    # A point above the origin (world +y is up in this file) appears above the centre (smaller v).
    uv_up, _ = project_points(torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), traj.K, traj.w2c)
    assert float(uv_up[0, 0, 1]) < float(traj.K[0, 1, 2])


def test_nerf_write_read_round_trip_and_sorting(tmp_path: Path):
    traj = _orbit_with_times(12)
    path = tmp_path / "transforms.json"
    write_nerf_transforms(path, traj)
    back = read_nerf_transforms(path)
    _assert_same(traj, back)
    assert torch.allclose(back.timestamps, traj.timestamps)
    # Frames are ordered by file_path (natural order), whatever their order in the file.
    data = json.loads(path.read_text())
    for i, frame in enumerate(data["frames"]):
        frame["file_path"] = f"img_{i}.png"  # img_10 must come after img_9
    data["frames"].reverse()
    _write_json(path, data)
    _assert_same(traj, read_nerf_transforms(path))
    _assert_same(traj, load_trajectory(tmp_path))  # directory holding transforms.json


def test_nerf_per_frame_intrinsics_round_trip(tmp_path: Path):
    traj = _orbit_with_times(4)
    K = traj.K.clone()
    K[:, 0, 0] *= torch.tensor([1.0, 1.1, 1.2, 1.3], dtype=torch.float64)
    traj = Trajectory(traj.c2w, K, SIZE)
    path = tmp_path / "t.json"
    write_nerf_transforms(path, traj)
    _assert_same(traj, load_trajectory(path))


def test_nerf_missing_size_requires_image_size(tmp_path: Path):
    path = _write_json(tmp_path / "t.json", {
        "camera_angle_x": 1.0, "frames": [{"file_path": "a", "transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(ValueError, match=r"no 'w'/'h' keys; pass image_size"):
        read_nerf_transforms(path)
    assert read_nerf_transforms(path, image_size=(40, 60)).image_size == (40, 60)


def test_nerf_bad_pose_names_file_and_frame(tmp_path: Path):
    bad = np.eye(4)
    bad[0, 0] = 3.0
    path = _write_json(tmp_path / "t.json", {"camera_angle_x": 1.0, "w": 10, "h": 10, "frames": [
        {"file_path": "a", "transform_matrix": np.eye(4).tolist()},
        {"file_path": "b", "transform_matrix": bad.tolist()}]})
    with pytest.raises(ValueError, match=r"t\.json: frames\[1\]\.transform_matrix: rotation is not orthonormal"):
        read_nerf_transforms(path)


# ----------------------------------------------------------------------------------------------
# COLMAP
# ----------------------------------------------------------------------------------------------
def _colmap_model(poses_w2c: list[np.ndarray]) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model="PINHOLE", width=128, height=72,
                             params=[100.0, 110.0, 64.0, 36.0], camera_id=1)
    rec.add_camera_with_trivial_rig(camera)
    # Image ids in reverse name order, so the reader has to sort by name.
    n = len(poses_w2c)
    for i, w2c in enumerate(poses_w2c):
        image = pycolmap.Image(name=f"frame_{i}.jpg", camera_id=1, image_id=n - i)
        rot = pycolmap.Rotation3d(w2c[:3, :3])
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rot, w2c[:3, 3]))
    return rec


@pytest.mark.parametrize("writer", ["write_text", "write"])
def test_colmap_text_and_binary(tmp_path: Path, writer: str):
    traj = pan_and_return(11, yaw_degrees=70.0, translation=(0.3, -0.1, 0.2), image_size=SIZE)
    traj = Trajectory(traj.c2w @ torch.tensor([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, -2.0], [0, 0, 0, 1]],
                                              dtype=torch.float64), traj.K, SIZE)
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    getattr(_colmap_model([m.numpy() for m in traj.w2c]), writer)(str(model))
    back = read_colmap(model)
    assert torch.allclose(back.c2w, traj.c2w, atol=1e-9)
    # Documented principal-point shift: COLMAP (64, 36) -> project (63.5, 35.5).
    assert torch.allclose(back.K[0], make_intrinsics(100.0, 110.0, 63.5, 35.5))
    assert back.image_size == (72, 128)
    assert torch.allclose(load_trajectory(tmp_path).c2w, traj.c2w, atol=1e-9)  # finds sparse/0


def test_colmap_rescale_and_distortion_warning(tmp_path: Path, caplog):
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model="OPENCV", width=128, height=72,
                             params=[100.0, 100.0, 64.0, 36.0, 0.1, 0.0, 0.0, 0.0], camera_id=1)
    rec.add_camera_with_trivial_rig(camera)
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.jpg", camera_id=1, image_id=1),
                                     pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0, 0, 1])),
                                                      np.zeros(3)))
    rec.write_text(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mirage_model.geometry.formats"):
        traj = read_colmap(tmp_path, image_size=(144, 256))
    assert "distortion" in caplog.text
    # Edge-based COLMAP cx = 64 of 128 is the centre; at 256 wide that is 127.5 in our convention.
    assert torch.allclose(traj.K[0], make_intrinsics(200.0, 200.0, 127.5, 71.5))


def test_colmap_missing_model(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot read a COLMAP model"):
        read_colmap(tmp_path)


# ----------------------------------------------------------------------------------------------
# WorldScore
# ----------------------------------------------------------------------------------------------
def test_worldscore_defaults_and_round_trip(tmp_path: Path):
    gl = np.tile(np.eye(4), (3, 1, 1))
    gl[:, 0, 3] = [0.0, 1.0, 2.0]
    path = _write_json(tmp_path / "cams.json", gl.tolist())
    traj = read_worldscore(path, (480, 640))
    assert torch.allclose(traj.K, make_intrinsics(500.0, 500.0, 319.5, 239.5).expand(3, 3, 3))
    assert torch.equal(traj.c2w[0], torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))

    out = tmp_path / "out.json"
    write_worldscore(out, traj)
    back = read_worldscore(out)  # the written file records its image size and focal
    _assert_same(traj, back)
    assert torch.equal(back.c2w, traj.c2w)
    _assert_same(traj, load_trajectory(out))


def test_worldscore_dict_npy_npz_and_focal(tmp_path: Path):
    traj = orbit(5, 3.0, image_size=SIZE, K=make_intrinsics(80.0, 80.0, 63.5, 35.5))
    gl = (traj.c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))).numpy()
    for key in ("cameras", "c2w", "extrinsics"):
        path = _write_json(tmp_path / f"{key}.json", {key: gl.tolist(), "focal": 80.0})
        _assert_same(traj, read_worldscore(path, SIZE))
    np.save(tmp_path / "cams.npy", gl)
    _assert_same(traj, read_worldscore(tmp_path / "cams.npy", SIZE, focal=80.0))
    np.savez(tmp_path / "cams.npz", c2w=gl)
    _assert_same(traj, read_worldscore(tmp_path / "cams.npz", SIZE, focal=80.0))
    from_npy = load_trajectory(tmp_path / "cams.npy", SIZE)  # no focal in the file -> 500 px
    assert torch.allclose(from_npy.c2w, traj.c2w)
    assert float(from_npy.K[0, 0, 0]) == 500.0


def test_worldscore_errors(tmp_path: Path):
    bad = np.eye(4)
    bad[1, 1] = 0.5
    path = _write_json(tmp_path / "cams.json", [np.eye(4).tolist(), bad.tolist()])
    with pytest.raises(ValueError, match=r"cams\.json: camera 1: rotation is not orthonormal"):
        read_worldscore(path, SIZE)
    with pytest.raises(ValueError, match="pass image_size"):
        read_worldscore(_write_json(tmp_path / "ok.json", [np.eye(4).tolist()]))
    anisotropic = Trajectory(torch.eye(4)[None], make_intrinsics(80.0, 90.0, 63.5, 35.5), SIZE)
    with pytest.raises(ValueError, match="one focal length"):
        write_worldscore(tmp_path / "x.json", anisotropic)


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def test_load_trajectory_unknown_format(tmp_path: Path):
    path = tmp_path / "cams.xyz"
    path.write_text("?")
    with pytest.raises(ValueError, match="cannot determine the camera format"):
        load_trajectory(path)
    with pytest.raises(ValueError, match="neither a COLMAP model"):
        load_trajectory(tmp_path)
    with pytest.raises(ValueError, match="unknown camera format"):
        load_trajectory(path, format="blender")
