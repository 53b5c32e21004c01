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
from PIL import Image

from mirage_model.geometry import (
    DEFAULT_FOV_X_DEG,
    Trajectory,
    detect_format,
    intrinsics_from_fov,
    load_trajectory,
    make_intrinsics,
    orbit,
    pan_and_return,
    project_points,
    read_colmap,
    read_kitti,
    read_nerf_frames,
    read_nerf_transforms,
    read_re10k,
    read_tum,
    read_worldscore,
    write_kitti,
    write_nerf_transforms,
    write_re10k,
    write_tum,
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


# ----------------------------------------------------------------------------------------------
# TUM RGB-D
# ----------------------------------------------------------------------------------------------
def _tum_trajectory(n: int = 9) -> Trajectory:
    traj = _orbit_with_times(n)
    stamps = 1305031102.175304 + torch.arange(n, dtype=torch.float64) * 0.0331  # TUM-like seconds
    return Trajectory(traj.c2w, traj.K, SIZE, stamps)


def test_tum_write_read_identity(tmp_path: Path):
    traj = _tum_trajectory()
    path = tmp_path / "groundtruth.txt"
    write_tum(path, traj)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 1 + len(traj)
    assert all(len(line.split()) == 8 for line in lines[1:])
    back = read_tum(path, SIZE, K=traj.K[0])
    _assert_same(traj, back)
    assert torch.equal(back.timestamps, traj.timestamps)
    _assert_same(traj, load_trajectory(path, SIZE, K=traj.K))  # auto-detected, per-frame K
    # Without timestamps: frame i at i / fps.
    write_tum(path, Trajectory(traj.c2w, traj.K, SIZE), fps=10.0)
    assert torch.allclose(read_tum(path, SIZE).timestamps, torch.arange(len(traj), dtype=torch.float64) / 10)


def test_tum_hand_checked_pose_and_default_intrinsics(tmp_path: Path):
    s = math.sqrt(0.5)
    path = tmp_path / "t.txt"
    path.write_text(f"# ground truth\n# timestamp tx ty tz qx qy qz qw\n\n1.5 1 2 3 0 0 {s!r} {s!r}\n")
    traj = read_tum(path, SIZE)
    # 90 degrees about the camera z (optical) axis: camera x maps to world y, camera y to world -x.
    expected = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(traj.c2w[0], expected, atol=1e-12)
    assert float(traj.timestamps[0]) == 1.5
    assert torch.allclose(traj.K[0], intrinsics_from_fov(DEFAULT_FOV_X_DEG, SIZE))
    assert torch.allclose(read_tum(path, SIZE, fov_x_deg=90.0).K[0], make_intrinsics(64.0, 64.0, 63.5, 35.5))
    with pytest.raises(ValueError, match="image_size"):
        read_tum(path)
    with pytest.raises(ValueError, match="K or fov_x_deg, not both"):
        read_tum(path, SIZE, K=traj.K[0], fov_x_deg=60.0)


TUM_GOOD = "0.0 0 0 0 0 0 0 1"
KITTI_GOOD = "1 0 0 0 0 1 0 0 0 0 1 0"
_TUM_BAD = [
    ("0.1 0 0 0 0 0 1", r"expected 8 fields, got 7"),
    ("0.1 0 0 x 0 0 0 1", r"field 4 is not a number: 'x'"),
    ("0.1 0 0 0 0 0 0 inf", r"field 8 is not finite"),
    ("0.1 0 0 0 0 0 0 1.1", r"quaternion \(qx qy qz qw\) has norm 1\.1, not 1"),
]
_KITTI_BAD = [
    ("1 0 0 0 0 1 0 0 0 0 1", r"expected 12 fields, got 11"),
    ("1 0 0 0 0 1 0 0 0 0 one 0", r"field 11 is not a number: 'one'"),
    ("1 0 0 0 0 1 0 0 0 0 1 nan", r"field 12 is not finite"),
    ("2 0 0 0 0 1 0 0 0 0 1 0", r"bad camera-to-world rotation.*orthonormal"),
]


@pytest.mark.parametrize("reader, header, good, bad_line, what",
                         [(read_tum, ["# tum"], TUM_GOOD, *b) for b in _TUM_BAD]
                         + [(read_kitti, [], KITTI_GOOD, *b) for b in _KITTI_BAD])
def test_tum_and_kitti_malformed_line_names_file_and_line(tmp_path: Path, reader, header, good, bad_line, what):
    lines = [*header, good, good, bad_line, good]
    n = lines.index(bad_line) + 1
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"bad\.txt, line {n}: {what}"):
        reader(path, SIZE)
    with pytest.raises(ValueError, match=rf"bad\.txt, line {n}: {what}"):
        load_trajectory(path, SIZE)


def test_tum_quaternion_rounding_is_tolerated(tmp_path: Path):
    path = tmp_path / "t.txt"
    path.write_text("0 0 0 0 0.707107 0 0 0.707107\n")  # 6 decimals: norm 1 + 5e-7
    R = read_tum(path, SIZE).c2w[0, :3, :3]
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_pose_only_files_without_poses_rejected(tmp_path: Path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt: no poses"):
        read_tum(path, SIZE)
    with pytest.raises(ValueError, match=r"empty\.txt: no poses"):
        read_kitti(path, SIZE)
    with pytest.raises(ValueError, match=r"empty\.txt: no camera poses"):
        load_trajectory(path, SIZE)


# ----------------------------------------------------------------------------------------------
# KITTI odometry
# ----------------------------------------------------------------------------------------------
def test_kitti_write_read_identity(tmp_path: Path):
    traj = _orbit_with_times()
    path = tmp_path / "00.txt"
    write_kitti(path, traj)
    lines = path.read_text().splitlines()
    assert len(lines) == len(traj) and all(len(line.split()) == 12 for line in lines)
    back = read_kitti(path, SIZE, K=traj.K[0])
    _assert_same(traj, back)
    assert back.timestamps is None
    assert torch.allclose(read_kitti(path, SIZE).K[0], intrinsics_from_fov(DEFAULT_FOV_X_DEG, SIZE))
    _assert_same(traj, load_trajectory(path, SIZE, K=traj.K[0]))
    with pytest.raises(ValueError, match="pass image_size"):
        read_kitti(path)


def test_kitti_calib_next_to_poses(tmp_path: Path, caplog):
    K = make_intrinsics(70.0, 72.0, 60.5, 33.25)
    traj = Trajectory(_orbit_with_times().c2w, K, SIZE)
    write_kitti(tmp_path / "00.txt", traj, calib=tmp_path / "calib.txt")
    assert (tmp_path / "calib.txt").read_text().startswith("P0: ")
    with caplog.at_level(logging.WARNING, logger="mirage_model.geometry.formats"):
        back = read_kitti(tmp_path / "00.txt", SIZE)  # finds calib.txt; its image size is unknown
    _assert_same(traj, back)
    assert "calib_image_size" in caplog.text
    _assert_same(traj, read_kitti(tmp_path / "00.txt", calib_image_size=SIZE))
    _assert_same(traj, load_trajectory(tmp_path / "00.txt", SIZE))
    # Explicit intrinsics win over the calib file found next to the poses.
    assert float(read_kitti(tmp_path / "00.txt", SIZE, fov_x_deg=90.0).K[0, 0, 0]) == pytest.approx(64.0)
    with pytest.raises(ValueError, match="at most one of K, fov_x_deg and calib"):
        read_kitti(tmp_path / "00.txt", SIZE, K=K, calib=tmp_path / "calib.txt")


def test_kitti_dataset_layout_and_calib_rescaling(tmp_path: Path):
    # dataset/poses/00.txt + dataset/sequences/00/{calib.txt, image_0/000000.png} (64x36 images).
    seq = tmp_path / "sequences" / "00"
    (seq / "image_0").mkdir(parents=True)
    Image.new("L", (64, 36)).save(seq / "image_0" / "000000.png")
    (seq / "calib.txt").write_text(
        "P0: 50.0 0.0 31.5 0.0 0.0 50.0 17.5 0.0 0.0 0.0 1.0 0.0\n"
        "P1: 50.0 0.0 31.5 -20.0 0.0 50.0 17.5 0.0 0.0 0.0 1.0 0.0\n"
        "Tr: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    (tmp_path / "poses").mkdir()
    poses = tmp_path / "poses" / "00.txt"
    poses.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0.5 0 1 0 0 0 0 1 2.0\n")
    native = read_kitti(poses)
    assert native.image_size == (36, 64)
    assert torch.equal(native.K[0], make_intrinsics(50.0, 50.0, 31.5, 17.5))
    assert torch.allclose(native.centers[1], torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64))
    doubled = load_trajectory(poses, (72, 128))  # K rescaled from the images' size
    assert torch.allclose(doubled.K[0], make_intrinsics(100.0, 100.0, 63.5, 35.5))


def test_kitti_bad_calib(tmp_path: Path):
    poses = tmp_path / "00.txt"
    poses.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")
    (tmp_path / "calib.txt").write_text("P1: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(ValueError, match=r"calib\.txt: no 'P0:' line"):
        read_kitti(poses, SIZE)
    (tmp_path / "calib.txt").write_text("P0: 50 0 31.5 0 0 50 17.5 0 0 0 2 0\n")
    with pytest.raises(ValueError, match=r"calib\.txt, line 1: P0 is not an intrinsics projection"):
        read_kitti(poses, SIZE)
    with pytest.raises(ValueError, match="differ per frame"):
        write_kitti(tmp_path / "x.txt", Trajectory(torch.eye(4).repeat(2, 1, 1),
                                                   torch.stack([make_intrinsics(50, 50, 1, 1),
                                                                make_intrinsics(60, 60, 1, 1)]), SIZE),
                    calib=tmp_path / "c.txt")


# ----------------------------------------------------------------------------------------------
# .txt detection and conversions between the text formats
# ----------------------------------------------------------------------------------------------
def test_txt_detection(tmp_path: Path):
    traj = _tum_trajectory(3)
    write_re10k(tmp_path / "re10k.txt", traj, url="https://www.youtube.com/watch?v=abc")
    write_re10k(tmp_path / "re10k_no_url.txt", traj)  # empty first line
    write_tum(tmp_path / "tum.txt", traj)
    write_kitti(tmp_path / "kitti.txt", traj)
    (tmp_path / "re10k_frames_only.txt").write_text(GOOD + "\n")
    expected = {"re10k": "re10k", "re10k_no_url": "re10k", "re10k_frames_only": "re10k",
                "tum": "tum", "kitti": "kitti"}
    for stem, fmt in expected.items():
        assert detect_format(tmp_path / f"{stem}.txt") == (fmt, tmp_path / f"{stem}.txt")
    (tmp_path / "odd.txt").write_text("# header\n1 2 3 4 5\n")
    with pytest.raises(ValueError, match=r"odd\.txt, line 2: 5 fields; a camera \.txt has 19 .* 8 .* or 12"):
        load_trajectory(tmp_path / "odd.txt", SIZE)
    (tmp_path / "words.txt").write_text("url\n1 0 0 0 0 0 0 1\nnot numbers here\n")
    assert detect_format(tmp_path / "words.txt")[0] == "tum"  # decided by the first line of numbers
    with pytest.raises(ValueError, match=r"words\.txt, line 1: expected 8 fields, got 1"):
        load_trajectory(tmp_path / "words.txt", SIZE)  # a URL line is RealEstate10K's only
    (tmp_path / "text.txt").write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=r"text\.txt, line 2: not a line of numbers"):
        load_trajectory(tmp_path / "text.txt", SIZE)
    with pytest.raises(ValueError, match="apply to the pose-only formats"):
        load_trajectory(tmp_path / "re10k.txt", SIZE, fov_x_deg=60.0)


def test_re10k_tum_kitti_conversions_agree(tmp_path: Path):
    base = pan_and_return(9, yaw_degrees=70.0, translation=(0.3, -0.1, 0.2), image_size=SIZE)
    offset = torch.tensor([[0.0, 0, 1, 0.5], [0, 1, 0, -0.2], [-1, 0, 0, 3.0], [0, 0, 0, 1]], dtype=torch.float64)
    traj = Trajectory(offset @ base.c2w, base.K, SIZE, torch.arange(9, dtype=torch.float64) * 0.25)
    write_re10k(tmp_path / "a.txt", traj)
    write_tum(tmp_path / "b.txt", traj)
    write_kitti(tmp_path / "c.txt", traj)
    read = [load_trajectory(tmp_path / name, SIZE, K=None) for name in ("a.txt", "b.txt", "c.txt")]
    for back in read:
        assert torch.allclose(back.c2w, traj.c2w, rtol=0, atol=1e-9)
    assert torch.allclose(read[0].timestamps, read[1].timestamps, atol=1e-9)
    # And chained: RE10K -> TUM -> KITTI -> RE10K.
    write_tum(tmp_path / "d.txt", read[0])
    write_kitti(tmp_path / "e.txt", read_tum(tmp_path / "d.txt", SIZE, K=traj.K[0]))
    write_re10k(tmp_path / "f.txt", read_kitti(tmp_path / "e.txt", SIZE, K=traj.K[0]))
    _assert_same(traj, read_re10k(tmp_path / "f.txt", SIZE))


# ----------------------------------------------------------------------------------------------
# NeRF transforms.json: image files
# ----------------------------------------------------------------------------------------------
def _nerf_folder(tmp_path: Path, n: int = 4, missing: tuple[int, ...] = (2,)) -> tuple[Path, Trajectory]:
    traj = _orbit_with_times(n)
    path = tmp_path / "transforms.json"
    write_nerf_transforms(path, traj)
    data = json.loads(path.read_text())
    (tmp_path / "images").mkdir()
    for i, frame in enumerate(data["frames"]):
        frame["file_path"] = f"./images/frame_{i}" if i % 2 else f"images/frame_{i}.png"  # odd: no extension
        if i not in missing:
            Image.new("RGB", (4, 3)).save(tmp_path / "images" / f"frame_{i}.png")
    data["frames"].reverse()
    _write_json(path, data)
    return path, traj


def test_nerf_keeps_file_names_and_skips_missing_images(tmp_path: Path, caplog):
    path, traj = _nerf_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mirage_model.geometry.formats"):
        frames = read_nerf_frames(path)
    assert "skipping 1 of 4 frame(s) whose image is missing" in caplog.text
    kept = [0, 1, 3]
    assert [f.resolve() for f in frames.files] == \
        [(tmp_path / "images" / f"frame_{i}.png").resolve() for i in kept]
    assert all(f.is_file() for f in frames.files)
    _assert_same(traj.select(kept), frames.trajectory)
    assert torch.allclose(frames.trajectory.timestamps, traj.timestamps[kept])
    _assert_same(traj.select(kept), read_nerf_transforms(path))
    _assert_same(traj.select(kept), load_trajectory(tmp_path))
    # skip_missing=False keeps every frame; the missing one keeps its unresolved path.
    every = read_nerf_frames(path, skip_missing=False)
    _assert_same(traj, every.trajectory)
    assert every.files[2] == tmp_path / "images" / "frame_2.png" and not every.files[2].exists()


def test_nerf_all_images_missing(tmp_path: Path, caplog):
    path, traj = _nerf_folder(tmp_path, n=3, missing=(0, 1, 2))
    with pytest.raises(ValueError, match=r"transforms\.json: none of the 3 frames' images exist"):
        read_nerf_frames(path, skip_missing=True)
    # By default a file without any of its images is a camera file: every frame is read.
    with caplog.at_level(logging.INFO, logger="mirage_model.geometry.formats"):
        _assert_same(traj, read_nerf_transforms(path))
    assert "reading the 3 cameras alone" in caplog.text
