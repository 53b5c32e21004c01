"""Camera file formats users bring, converted to and from ``Trajectory`` at the edge (docs/method.md §8).

Inside the project there is one convention (``camera.py``: OpenCV axes, c2w, K in pixels with the
centre of pixel column ``i`` at ``x = i``). Each format's own conventions are undone here, once:

* RealEstate10K (``.txt``): intrinsics normalised by the image size treat the image as ``[0, 1]``
  edge to edge, so a normalised principal point ``cx_n`` is at ``cx_n * W`` in edge coordinates,
  i.e. ``cx = cx_n * W - 0.5`` in ours (writing inverts it). Focal lengths are ``fx_n * W``,
  ``fy_n * H``. Poses are world-to-camera 3x4, OpenCV axes. Timestamps are integer microseconds.
* COLMAP sparse models: the centre of the top-left pixel is (0.5, 0.5), so ``cx = cx_colmap - 0.5``.
  Poses are world-to-camera (``image.cam_from_world()``). Lens distortion is dropped (pinhole only;
  a warning is logged when a camera has non-zero distortion).
* NeRF ``transforms.json``: c2w with OpenGL camera axes (x right, y up, z backward). Explicit
  ``cx``/``cy`` follow the instant-ngp / nerfstudio convention (pixel centres at ``i + 0.5``), so
  ``cx = cx_nerf - 0.5``; files with only ``camera_angle_x`` get a centred principal point. The
  world frame is left as the file has it (often z-up); only the camera axes are flipped. Each
  frame's ``file_path`` is resolved against the json's folder (with an image extension appended
  when the file omits it); frames whose image is missing are skipped (``read_nerf_frames``).
* WorldScore: c2w with OpenGL/Blender camera axes, focal 500 px by default, principal point centred.
* TUM RGB-D (``.txt``): ``timestamp tx ty tz qx qy qz qw`` per line, camera-to-world translation +
  unit quaternion (Hamilton, scalar last), TUM's optical frame = OpenCV axes; ``#`` starts a
  comment. No intrinsics: the caller gives ``K`` or ``fov_x_deg`` (default ``DEFAULT_FOV_X_DEG``).
* KITTI odometry poses (``.txt``): 12 numbers per line, the row-major 3x4 camera-to-world of the
  left camera in the first camera's frame (KITTI camera axes = OpenCV). No timestamps. Intrinsics
  come from the ``P0:`` line of a KITTI ``calib.txt`` (given, or found next to the poses file or
  at ``../sequences/<stem>/calib.txt``), taken as pixel-centre-at-``i`` like OpenCV; else from
  the caller as for TUM.

Every reader validates poses with ``camera.validate_pose``; errors name the file and the frame (or
line). Frames are ordered by file/image name with a natural sort (``frame_2`` before ``frame_10``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .camera import (
    ROTATION_TOLERANCE,
    as_tensor,
    intrinsics_from_fov,
    invert_pose,
    make_intrinsics,
    opencv_to_opengl,
    opengl_to_opencv,
    scale_intrinsics,
    validate_image_size,
    validate_intrinsics,
    validate_pose,
)
from .trajectory import Trajectory, _matrix_to_quaternion, _quaternion_to_matrix

logger = logging.getLogger(__name__)

WORLDSCORE_FOCAL = 500.0
"""WorldScore's default focal length in pixels (docs/method.md §8)."""

RE10K_FIELDS = 19
"""Fields per RealEstate10K frame line: timestamp, fx fy cx cy, two zeros, 3x4 world-to-camera."""

TUM_FIELDS = 8
"""Fields per TUM RGB-D trajectory line: timestamp tx ty tz qx qy qz qw."""

KITTI_FIELDS = 12
"""Fields per KITTI odometry pose line: a row-major 3x4 camera-to-world matrix."""

DEFAULT_FOV_X_DEG = 60.0
"""Horizontal field of view (degrees) given to TUM/KITTI cameras when the caller gives no
intrinsics (and no KITTI calib.txt is found); the trajectory builders' default too."""

NERF_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".webp", ".bmp", ".tif", ".tiff",
                         ".PNG", ".JPG", ".JPEG")
"""Extensions tried, in order, for a NeRF ``file_path`` that names no existing file (e.g. the
Blender synthetic scenes' ``./train/r_0``)."""

FORMATS = ("re10k", "colmap", "nerf", "worldscore", "tum", "kitti")

__all__ = [
    "DEFAULT_FOV_X_DEG",
    "FORMATS",
    "KITTI_FIELDS",
    "NERF_IMAGE_EXTENSIONS",
    "RE10K_FIELDS",
    "TUM_FIELDS",
    "WORLDSCORE_FOCAL",
    "NerfFrames",
    "detect_format",
    "load_trajectory",
    "read_colmap",
    "read_kitti",
    "read_nerf_frames",
    "read_nerf_transforms",
    "read_re10k",
    "read_tum",
    "read_worldscore",
    "write_kitti",
    "write_nerf_transforms",
    "write_re10k",
    "write_tum",
    "write_worldscore",
]


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
def _natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: 'frame_2' < 'frame_10'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _check_pose(pose: torch.Tensor, where: str) -> torch.Tensor:
    """``validate_pose`` on one (4, 4) pose with the error re-labelled as ``where`` (file + frame)."""
    try:
        return validate_pose(pose, name="pose")
    except ValueError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise ValueError(f"{where}: {reason}") from exc


def _pad_pose(mat: Any, where: str) -> torch.Tensor:
    """A (4, 4) or (3, 4) matrix (nested lists/array) -> (4, 4) float64 tensor."""
    try:
        m = torch.as_tensor(np.asarray(mat, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a numeric matrix ({exc})") from exc
    if tuple(m.shape) == (3, 4):
        m = torch.cat([m, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    if tuple(m.shape) != (4, 4):
        raise ValueError(f"{where}: expected a 4x4 (or 3x4) matrix, got shape {tuple(m.shape)}")
    return m


def _centred_intrinsics(focal_x: float, focal_y: float, image_size: tuple[int, int]) -> torch.Tensor:
    """K with the principal point at the image centre in the project's pixel-centre convention."""
    h, w = image_size
    return make_intrinsics(focal_x, focal_y, (w - 1) / 2, (h - 1) / 2)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _shared_focal_or_raise(traj: Trajectory, fmt: str) -> float:
    """The single focal length of a trajectory whose K is fx == fy, centred, equal for all frames."""
    h, w = traj.image_size
    ref = _centred_intrinsics(float(traj.K[0, 0, 0]), float(traj.K[0, 0, 0]), traj.image_size)
    if not torch.allclose(traj.K, ref.expand_as(traj.K), rtol=1e-9, atol=1e-9 * max(h, w)):
        raise ValueError(f"{fmt} stores one focal length with fx == fy and a centred principal point; "
                         "this trajectory's intrinsics differ (per frame or off-centre)")
    return float(traj.K[0, 0, 0])


# ----------------------------------------------------------------------------------------------
# RealEstate10K
# ----------------------------------------------------------------------------------------------
def _parse_re10k_line(line: str, where: str) -> list[float]:
    """19 finite floats from one frame line, or ValueError saying what is wrong."""
    return _parse_numbers(line, where, RE10K_FIELDS)


def _parse_numbers(line: str, where: str, n_fields: int) -> list[float]:
    """``n_fields`` finite floats from one whitespace-separated line, or ValueError naming ``where``."""
    tokens = line.split()
    if len(tokens) != n_fields:
        raise ValueError(f"{where}: expected {n_fields} fields, got {len(tokens)}")
    values = []
    for k, tok in enumerate(tokens, start=1):
        try:
            v = float(tok)
        except ValueError:
            raise ValueError(f"{where}: field {k} is not a number: {tok!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{where}: field {k} is not finite: {tok!r}")
        values.append(v)
    return values


def _looks_like_frame_line(line: str) -> bool:
    tokens = line.split()
    if len(tokens) != RE10K_FIELDS:
        return False
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def read_re10k(path: str | Path, image_size: tuple[int, int]) -> Trajectory:
    """Read a RealEstate10K camera file; ``image_size`` (H, W) scales the normalised intrinsics.

    Line 1 is the video URL (may be empty); each further non-blank line is
    ``timestamp_us fx fy cx cy 0 0 <3x4 world-to-camera, row-major>``. A file whose first line is
    already a frame line (no URL) is accepted with a warning.
    """
    path = Path(path)
    h, w = validate_image_size(image_size)
    lines = path.read_text().splitlines()
    start = 1
    if lines and _looks_like_frame_line(lines[0]):
        logger.warning("%s: first line is a frame, not a URL; reading it as a frame", path)
        start = 0
    c2ws, Ks, stamps = [], [], []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        v = _parse_re10k_line(line, where)
        fx, fy, cx, cy = v[1] * w, v[2] * h, v[3] * w - 0.5, v[4] * h - 0.5
        try:
            K = validate_intrinsics(make_intrinsics(fx, fy, cx, cy), "K")
        except ValueError as exc:
            raise ValueError(f"{where}: bad intrinsics: {str(exc).split(': ', 1)[-1]}") from exc
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :] = torch.tensor(v[7:], dtype=torch.float64).reshape(3, 4)
        w2c = _check_pose(w2c, f"{where}: bad world-to-camera rotation")
        c2ws.append(invert_pose(w2c))
        Ks.append(K)
        stamps.append(v[0] * 1e-6)
    if not c2ws:
        raise ValueError(f"{path}: no camera lines after the URL line")
    return Trajectory(torch.stack(c2ws), torch.stack(Ks), (h, w), torch.tensor(stamps, dtype=torch.float64))


def write_re10k(path: str | Path, traj: Trajectory, url: str = "", *, fps: float = 30.0) -> None:
    """Write ``traj`` as a RealEstate10K camera file (inverse of ``read_re10k``).

    Timestamps are rounded to integer microseconds; a trajectory without timestamps gets frame
    ``i`` at ``i / fps`` seconds. Skewed intrinsics cannot be represented and raise ValueError.
    """
    path = Path(path)
    h, w = traj.image_size
    if bool((traj.K[:, 0, 1] != 0).any()):
        raise ValueError("RealEstate10K cannot store intrinsics with skew (K[0, 1] != 0)")
    if "\n" in url:
        raise ValueError("url must be a single line")
    stamps = traj.timestamps if traj.timestamps is not None else \
        torch.arange(len(traj), dtype=torch.float64) / fps
    w2c = traj.w2c
    out = [url]
    for i in range(len(traj)):
        K = traj.K[i]
        norm = [float(K[0, 0]) / w, float(K[1, 1]) / h,
                (float(K[0, 2]) + 0.5) / w, (float(K[1, 2]) + 0.5) / h]
        pose = w2c[i, :3, :].reshape(-1).tolist()
        fields = [str(int(round(float(stamps[i]) * 1e6)))] + [repr(x) for x in norm] + ["0", "0"] \
            + [repr(float(x)) for x in pose]
        out.append(" ".join(fields))
    path.write_text("\n".join(out) + "\n")


# ----------------------------------------------------------------------------------------------
# COLMAP
# ----------------------------------------------------------------------------------------------
def _warn_if_distorted(camera, model_dir: Path) -> None:
    idxs = list(camera.extra_params_idxs())
    params = np.asarray(camera.params, dtype=np.float64)
    if idxs and np.any(params[idxs] != 0):
        logger.warning("%s: camera %d (%s) has non-zero distortion %s; it is ignored (pinhole kept)",
                       model_dir, camera.camera_id, camera.model_name, params[idxs].tolist())


def read_colmap(model_dir: str | Path, image_size: tuple[int, int] | None = None) -> Trajectory:
    """Read a COLMAP sparse model (text or binary) with pycolmap; frames ordered by image name.

    ``image_size`` (H, W) rescales every camera's K to that size; when None all cameras must share
    one size. Unregistered images (no pose) are skipped with a warning.
    """
    import pycolmap  # heavy import, only needed here

    model_dir = Path(model_dir)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{model_dir}: cannot read a COLMAP model ({exc})") from exc

    images = sorted(rec.images.values(), key=lambda im: _natural_key(im.name))
    posed = [im for im in images if im.has_pose]
    if len(posed) < len(images):
        logger.warning("%s: skipping %d image(s) without a pose", model_dir, len(images) - len(posed))
    if not posed:
        raise ValueError(f"{model_dir}: the COLMAP model has no registered images")

    sizes = {(rec.cameras[im.camera_id].height, rec.cameras[im.camera_id].width) for im in posed}
    if image_size is None:
        if len(sizes) != 1:
            raise ValueError(f"{model_dir}: cameras have different image sizes {sorted(sizes)}; "
                             "pass image_size to rescale them to one")
        image_size = next(iter(sizes))
    image_size = validate_image_size(image_size)

    for cam_id in sorted({im.camera_id for im in posed}):
        _warn_if_distorted(rec.cameras[cam_id], model_dir)

    c2ws, Ks = [], []
    for im in posed:
        cam = rec.cameras[im.camera_id]
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :] = torch.as_tensor(np.asarray(im.cam_from_world().matrix(), dtype=np.float64))
        w2c = _check_pose(w2c, f"{model_dir}: image {im.name!r} (id {im.image_id})")
        c2ws.append(invert_pose(w2c))
        K = torch.as_tensor(np.asarray(cam.calibration_matrix(), dtype=np.float64)).clone()
        K[0, 2] -= 0.5  # COLMAP puts the top-left pixel centre at (0.5, 0.5); ours is (0, 0)
        K[1, 2] -= 0.5
        Ks.append(scale_intrinsics(K, (cam.height, cam.width), image_size))
    return Trajectory(torch.stack(c2ws), torch.stack(Ks), image_size)


# ----------------------------------------------------------------------------------------------
# NeRF transforms.json
# ----------------------------------------------------------------------------------------------
def _nerf_intrinsics(meta: dict, image_size: tuple[int, int] | None, where: str
                     ) -> tuple[torch.Tensor, tuple[int, int]]:
    """K (pixels, project convention) and (H, W) from merged global + per-frame NeRF keys."""
    if "w" in meta and "h" in meta:
        size = validate_image_size((meta["h"], meta["w"]), f"{where}: h/w")
    elif image_size is not None:
        size = validate_image_size(image_size)
    else:
        raise ValueError(f"{where}: no 'w'/'h' keys; pass image_size=(H, W) to read this file")
    h, w = size
    try:
        if "fl_x" in meta:
            fx = float(meta["fl_x"])
        elif "camera_angle_x" in meta:
            fx = 0.5 * w / math.tan(float(meta["camera_angle_x"]) / 2)
        else:
            raise ValueError(f"{where}: needs 'fl_x' or 'camera_angle_x'")
        if "fl_y" in meta:
            fy = float(meta["fl_y"])
        elif "camera_angle_y" in meta:
            fy = 0.5 * h / math.tan(float(meta["camera_angle_y"]) / 2)
        else:
            fy = fx
        # Explicit cx/cy: pixel centres at i + 0.5 (instant-ngp/nerfstudio) -> subtract 0.5.
        cx = float(meta["cx"]) - 0.5 if "cx" in meta else (w - 1) / 2
        cy = float(meta["cy"]) - 0.5 if "cy" in meta else (h - 1) / 2
    except (TypeError, ValueError) as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: bad intrinsics ({exc})") from exc
    try:
        K = validate_intrinsics(make_intrinsics(fx, fy, cx, cy), "K")
    except ValueError as exc:
        raise ValueError(f"{where}: bad intrinsics: {str(exc).split(': ', 1)[-1]}") from exc
    return K, size


class NerfFrames(NamedTuple):
    """What ``read_nerf_frames`` returns: the cameras and, frame for frame, their image files."""

    trajectory: Trajectory
    files: list[Path | None]
    """Per frame, in trajectory order: the image file (``file_path`` resolved against the json's
    folder, extension added where the file omits it), or the unresolved path when its image is
    missing and frames are kept (None for a frame without ``file_path``)."""


def _resolve_nerf_image(base: Path, file_path: Any) -> tuple[Path | None, bool]:
    """(path, exists) for a frame's ``file_path``: as written, else with an image extension added."""
    if not isinstance(file_path, str) or not file_path:
        return None, False
    p = base / file_path
    if p.is_file():
        return p, True
    for ext in NERF_IMAGE_EXTENSIONS:
        candidate = p.with_name(p.name + ext)
        if candidate.is_file():
            return candidate, True
    return p, False


def read_nerf_frames(path: str | Path, image_size: tuple[int, int] | None = None, *,
                     skip_missing: bool | None = None) -> NerfFrames:
    """Read a NeRF-style ``transforms.json`` into an OpenCV trajectory plus each frame's image file.

    Intrinsics come from ``fl_x``/``fl_y``/``cx``/``cy`` or ``camera_angle_x``(/``_y``), globally or
    per frame (per-frame keys win). ``w``/``h`` give the image size; when absent ``image_size`` is
    required. When both exist and differ, K is rescaled to ``image_size``. Frames are ordered by
    ``file_path`` (normalised: ``./a`` sorts as ``a``); an optional per-frame ``timestamp``
    (seconds) is kept.

    ``file_path`` is resolved against the json's folder; when no file has that exact name, the
    extensions of ``NERF_IMAGE_EXTENSIONS`` are appended in turn. ``skip_missing``:

    * ``True``: frames whose image does not exist are dropped (a warning gives the count); a
      ValueError is raised when none remain.
    * ``None`` (default): the same when at least one frame's image exists; when none does, the file
      is taken as cameras only (written by ``write_nerf_transforms``, or copied without its images)
      and every frame is kept.
    * ``False``: every frame is kept, images or not.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'frames' list")
    global_meta = {k: v for k, v in data.items() if k != "frames"}
    target = validate_image_size(image_size) if image_size is not None else None

    resolved = []
    for i, frame in enumerate(data["frames"]):
        if not isinstance(frame, dict) or "transform_matrix" not in frame:
            raise ValueError(f"{path}: frames[{i}]: missing 'transform_matrix'")
        resolved.append(_resolve_nerf_image(path.parent, frame.get("file_path")))
    n_missing = sum(not exists for _, exists in resolved)
    skip = skip_missing if skip_missing is not None else n_missing < len(resolved)
    if skip and n_missing:
        if n_missing == len(resolved):
            raise ValueError(f"{path}: none of the {len(resolved)} frames' images exist (file_path is "
                             f"resolved against {path.parent}); pass skip_missing=False to read the "
                             "cameras alone")
        first = next(i for i, (_, exists) in enumerate(resolved) if not exists)
        logger.warning("%s: skipping %d of %d frame(s) whose image is missing (first: frames[%d] "
                       "file_path=%r)", path, n_missing, len(resolved), first,
                       data["frames"][first].get("file_path"))
    elif n_missing and skip_missing is None:
        logger.info("%s: no frame's image exists; reading the %d cameras alone", path, len(resolved))

    entries = []
    for i, frame in enumerate(data["frames"]):
        file, exists = resolved[i]
        if skip and not exists:
            continue
        where = f"{path}: frames[{i}]"
        gl = _check_pose(_pad_pose(frame["transform_matrix"], where), f"{where}.transform_matrix")
        K, size = _nerf_intrinsics({**global_meta, **frame}, target, where)
        if target is not None and size != target:
            K = scale_intrinsics(K, size, target)
        name = frame.get("file_path")
        name = os.path.normpath(name) if isinstance(name, str) and name else ""  # './a' sorts as 'a'
        entries.append((name, i, gl, K, size, frame.get("timestamp"), file))
    entries.sort(key=lambda e: (_natural_key(e[0]), e[1]))

    sizes = {e[4] for e in entries}
    if target is None and len(sizes) != 1:
        raise ValueError(f"{path}: frames have different sizes {sorted(sizes)}; pass image_size")
    size = target if target is not None else entries[0][4]
    stamps = [e[5] for e in entries]
    ts = None
    if all(s is not None for s in stamps):
        ts = torch.tensor([float(s) for s in stamps], dtype=torch.float64)
    c2w = opengl_to_opencv(torch.stack([e[2] for e in entries]))
    traj = Trajectory(c2w, torch.stack([e[3] for e in entries]), size, ts)
    return NerfFrames(traj, [e[6] for e in entries])


def read_nerf_transforms(path: str | Path, image_size: tuple[int, int] | None = None, *,
                         skip_missing: bool | None = None) -> Trajectory:
    """The trajectory of ``read_nerf_frames`` (NeRF ``transforms.json``, OpenGL c2w -> OpenCV).

    Frames whose image is missing are skipped as ``read_nerf_frames`` describes; a file whose
    images are all absent (cameras only) reads every frame. Use ``read_nerf_frames`` for the
    frames' image files.
    """
    return read_nerf_frames(path, image_size, skip_missing=skip_missing).trajectory


def write_nerf_transforms(path: str | Path, traj: Trajectory) -> None:
    """Write ``traj`` as a NeRF ``transforms.json`` (OpenGL c2w; cx/cy with the +0.5 convention).

    Shared intrinsics go to the top level (with ``camera_angle_x`` for plain NeRF loaders);
    per-frame intrinsics go into each frame. File paths are ``images/frame_00000.png`` etc.
    """
    path = Path(path)
    h, w = traj.image_size

    def intrinsics(K: torch.Tensor) -> dict:
        return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
                "cx": float(K[0, 2]) + 0.5, "cy": float(K[1, 2]) + 0.5}

    if bool((traj.K[:, 0, 1] != 0).any()):
        raise ValueError("transforms.json cannot store intrinsics with skew (K[0, 1] != 0)")
    shared = bool((traj.K == traj.K[0]).all())
    data: dict[str, Any] = {"w": w, "h": h}
    if shared:
        data["camera_angle_x"] = 2 * math.atan(0.5 * w / float(traj.K[0, 0, 0]))
        data.update(intrinsics(traj.K[0]))
    gl = opencv_to_opengl(traj.c2w)
    frames = []
    for i in range(len(traj)):
        frame: dict[str, Any] = {"file_path": f"images/frame_{i:05d}.png",
                                 "transform_matrix": gl[i].tolist()}
        if not shared:
            frame.update(intrinsics(traj.K[i]))
        if traj.timestamps is not None:
            frame["timestamp"] = float(traj.timestamps[i])
        frames.append(frame)
    data["frames"] = frames
    path.write_text(json.dumps(data, indent=2))


# ----------------------------------------------------------------------------------------------
# WorldScore
# ----------------------------------------------------------------------------------------------
_WORLDSCORE_KEYS = ("cameras", "c2w", "extrinsics")


def _worldscore_payload(path: Path) -> tuple[Any, dict]:
    """(list/array of matrices, metadata dict) from a WorldScore JSON / .npy / .npz file."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), {}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        key = next((k for k in _WORLDSCORE_KEYS if k in arrays), None)
        if key is None:
            key = next((k for k, a in arrays.items() if a.ndim == 3 and a.shape[1:] in ((4, 4), (3, 4))),
                       None)
        if key is None:
            raise ValueError(f"{path}: no (N, 4, 4) camera array (keys: {sorted(arrays)})")
        meta = {k: arrays[k].tolist() for k in ("focal", "image_size") if k in arrays}
        return arrays[key], meta
    data = _read_json(path)
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict):
        key = next((k for k in _WORLDSCORE_KEYS if k in data), None)
        if key is None:
            raise ValueError(f"{path}: expected a list of 4x4 matrices or an object with one of "
                             f"the keys {list(_WORLDSCORE_KEYS)}")
        return data[key], data
    raise ValueError(f"{path}: expected a list of 4x4 matrices or a JSON object")


def read_worldscore(path: str | Path, image_size: tuple[int, int] | None = None,
                    focal: float | None = None) -> Trajectory:
    """Read WorldScore cameras (OpenGL/Blender c2w) into an OpenCV trajectory.

    Accepts JSON (a list of 4x4 matrices, or an object with "cameras"/"c2w"/"extrinsics" and
    optional "focal" and "image_size" [H, W]) or a .npy/.npz of shape (N, 4, 4).
    ``image_size`` defaults to the file's "image_size". ``focal`` (pixels) defaults to the file's
    "focal", else WorldScore's 500; the principal point is centred.
    """
    path = Path(path)
    mats, meta = _worldscore_payload(path)
    if image_size is None:
        if "image_size" not in meta:
            raise ValueError(f"{path}: WorldScore cameras carry no image size; pass image_size=(H, W)")
        image_size = meta["image_size"]
    size = validate_image_size(image_size)
    if focal is None:
        focal = float(meta.get("focal", WORLDSCORE_FOCAL))
    if len(mats) == 0:
        raise ValueError(f"{path}: no cameras")
    gl = torch.stack([_check_pose(_pad_pose(m, f"{path}: camera {i}"), f"{path}: camera {i}")
                      for i, m in enumerate(mats)])
    return Trajectory(opengl_to_opencv(gl), _centred_intrinsics(focal, focal, size), size)


def write_worldscore(path: str | Path, traj: Trajectory) -> None:
    """Write ``traj`` as WorldScore JSON: {"c2w": OpenGL 4x4 list, "focal": px, "image_size": [H, W]}.

    The format holds one focal length and a centred principal point; other intrinsics raise.
    """
    focal = _shared_focal_or_raise(traj, "WorldScore")
    data = {"c2w": opencv_to_opengl(traj.c2w).tolist(), "focal": focal,
            "image_size": list(traj.image_size)}
    Path(path).write_text(json.dumps(data, indent=2))


# ----------------------------------------------------------------------------------------------
# TUM RGB-D and KITTI odometry (pose-only text files)
# ----------------------------------------------------------------------------------------------
def _pose_lines(path: Path):
    """(line number, stripped text) of every line that is neither blank nor a ``#`` comment."""
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield lineno, text


def _caller_intrinsics(K: Any, fov_x_deg: float | None, size: tuple[int, int], where: str) -> torch.Tensor:
    """K of a format without intrinsics: the caller's ``K`` (pixels of ``size``), else a centred
    pinhole with ``fov_x_deg`` (default ``DEFAULT_FOV_X_DEG``)."""
    if K is not None and fov_x_deg is not None:
        raise ValueError(f"{where}: give K or fov_x_deg, not both")
    if K is not None:
        return validate_intrinsics(as_tensor(K, torch.float64, "K"), "K")
    fov = DEFAULT_FOV_X_DEG if fov_x_deg is None else float(fov_x_deg)
    if not 0.0 < fov < 180.0:
        raise ValueError(f"{where}: fov_x_deg must be in (0, 180) degrees, got {fov_x_deg!r}")
    return intrinsics_from_fov(fov, size)


def read_tum(path: str | Path, image_size: tuple[int, int] | None = None, *, K: Any = None,
             fov_x_deg: float | None = None) -> Trajectory:
    """Read a TUM RGB-D trajectory (``timestamp tx ty tz qx qy qz qw``, camera-to-world).

    Blank lines and ``#`` comments are skipped; timestamps (seconds) are kept in file order.
    Quaternions must be unit length within ``ROTATION_TOLERANCE`` (then normalised). TUM files
    carry no intrinsics: ``image_size`` (H, W) is required, ``K`` (3x3 or (N, 3, 3), pixels of
    ``image_size``) or ``fov_x_deg`` give the intrinsics, default a centred ``DEFAULT_FOV_X_DEG``.
    """
    path = Path(path)
    if image_size is None:
        raise ValueError(f"{path}: TUM trajectories carry no image size or intrinsics; pass "
                         "image_size=(H, W) (and K= or fov_x_deg=)")
    size = validate_image_size(image_size)
    c2ws, stamps = [], []
    for lineno, text in _pose_lines(path):
        where = f"{path}, line {lineno}"
        v = _parse_numbers(text, where, TUM_FIELDS)
        q = torch.tensor([v[7], v[4], v[5], v[6]], dtype=torch.float64)  # (w, x, y, z)
        norm = float(q.norm())
        if abs(norm - 1.0) > ROTATION_TOLERANCE:
            raise ValueError(f"{where}: quaternion (qx qy qz qw) has norm {norm:.6g}, not 1 "
                             f"(tolerance {ROTATION_TOLERANCE:g})")
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = _quaternion_to_matrix(q)
        c2w[:3, 3] = torch.tensor(v[1:4], dtype=torch.float64)
        c2ws.append(c2w)
        stamps.append(v[0])
    if not c2ws:
        raise ValueError(f"{path}: no poses (only blank or comment lines)")
    K = _caller_intrinsics(K, fov_x_deg, size, str(path))
    return Trajectory(torch.stack(c2ws), K, size, torch.tensor(stamps, dtype=torch.float64))


def write_tum(path: str | Path, traj: Trajectory, *, fps: float = 30.0) -> None:
    """Write ``traj`` as a TUM RGB-D trajectory (inverse of ``read_tum``; intrinsics are dropped).

    A trajectory without timestamps gets frame ``i`` at ``i / fps`` seconds. Quaternions are
    written with ``qw >= 0``.
    """
    stamps = traj.timestamps if traj.timestamps is not None else \
        torch.arange(len(traj), dtype=torch.float64) / fps
    quats = _matrix_to_quaternion(traj.c2w[:, :3, :3])  # (w, x, y, z)
    out = ["# timestamp tx ty tz qx qy qz qw"]
    for i in range(len(traj)):
        q = quats[i].tolist()
        values = [float(stamps[i]), *traj.c2w[i, :3, 3].tolist(), q[1], q[2], q[3], q[0]]
        out.append(" ".join(repr(float(x)) for x in values))
    Path(path).write_text("\n".join(out) + "\n")


def _find_kitti_calib(poses: Path) -> Path | None:
    """``calib.txt`` next to the poses file, or at KITTI's ``../sequences/<stem>/calib.txt``."""
    for candidate in (poses.parent / "calib.txt", poses.parent.parent / "sequences" / poses.stem / "calib.txt"):
        if candidate.is_file():
            return candidate
    return None


def _read_kitti_calib(calib: Path) -> torch.Tensor:
    """K (3x3, pixels) from the ``P0:`` 3x4 projection of a KITTI ``calib.txt``."""
    for lineno, line in enumerate(calib.read_text().splitlines(), start=1):
        key, _, rest = line.strip().partition(":")
        if key.strip() != "P0":
            continue
        where = f"{calib}, line {lineno}"
        P = torch.tensor(_parse_numbers(rest, where, KITTI_FIELDS), dtype=torch.float64).reshape(3, 4)
        K = P[:, :3].clone()
        if abs(float(K[1, 0])) > 1e-9 or not torch.allclose(K[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)):
            raise ValueError(f"{where}: P0 is not an intrinsics projection (its left 3x3 must be "
                             "[[fx, s, cx], [0, fy, cy], [0, 0, 1]])")
        try:
            return validate_intrinsics(K, "K")
        except ValueError as exc:
            raise ValueError(f"{where}: bad intrinsics: {str(exc).split(': ', 1)[-1]}") from exc
    raise ValueError(f"{calib}: no 'P0:' line (a KITTI calib.txt holds 'P0: <3x4 projection, row-major>')")


def _kitti_image_size(calib: Path) -> tuple[int, int] | None:
    """(H, W) of the sequence's first image (``image_0/000000.png`` or ``image_2/...``), if present."""
    for folder in ("image_0", "image_2"):
        image = calib.parent / folder / "000000.png"
        if image.is_file():
            from PIL import Image

            with Image.open(image) as im:
                return im.height, im.width
    return None


def read_kitti(path: str | Path, image_size: tuple[int, int] | None = None, *,
               calib: str | Path | None = None, calib_image_size: tuple[int, int] | None = None,
               K: Any = None, fov_x_deg: float | None = None) -> Trajectory:
    """Read KITTI odometry poses (12 numbers per line: row-major 3x4 camera-to-world, OpenCV axes).

    Intrinsics, in this order: the caller's ``K`` (pixels of ``image_size``) or ``fov_x_deg``; else
    the ``P0:`` line of ``calib`` or of a ``calib.txt`` found next to the poses file (or at
    ``../sequences/<stem>/calib.txt``); else a centred pinhole with ``DEFAULT_FOV_X_DEG``. The calib
    intrinsics belong to images of ``calib_image_size``, by default the size of the sequence's
    ``image_0/000000.png``; K is rescaled from there to ``image_size``, which defaults to it. When
    neither is known, ``image_size`` is required and the calib is taken to be in its pixels (with a
    warning). Blank lines and ``#`` comments are skipped. No timestamps.
    """
    path = Path(path)
    c2ws = []
    for lineno, text in _pose_lines(path):
        where = f"{path}, line {lineno}"
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :] = torch.tensor(_parse_numbers(text, where, KITTI_FIELDS), dtype=torch.float64).reshape(3, 4)
        c2ws.append(_check_pose(c2w, f"{where}: bad camera-to-world rotation"))
    if not c2ws:
        raise ValueError(f"{path}: no poses (only blank or comment lines)")
    given = [name for name, value in (("K", K), ("fov_x_deg", fov_x_deg), ("calib", calib)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"{path}: give at most one of K, fov_x_deg and calib (got {', '.join(given)})")
    calib_path = Path(calib) if calib is not None else (_find_kitti_calib(path) if not given else None)
    if calib_path is None:
        if calib_image_size is not None:
            raise ValueError(f"{path}: calib_image_size given but no calib.txt given or found")
        if image_size is None:
            raise ValueError(f"{path}: KITTI poses carry no image size or intrinsics and no calib.txt was "
                             "found; pass image_size=(H, W) (and K= or fov_x_deg=, or calib=)")
        size = validate_image_size(image_size)
        return Trajectory(torch.stack(c2ws), _caller_intrinsics(K, fov_x_deg, size, str(path)), size)

    K_calib = _read_kitti_calib(calib_path)
    native = calib_image_size if calib_image_size is not None else _kitti_image_size(calib_path)
    if native is None:
        if image_size is None:
            raise ValueError(f"{path}: the image size of {calib_path} is unknown (no image_0/000000.png "
                             "next to it); pass image_size=(H, W) or calib_image_size=(H, W)")
        size = validate_image_size(image_size)
        logger.warning("%s: taking the intrinsics of %s to be in pixels of image_size %s; pass "
                       "calib_image_size=(H, W) if they belong to another size", path, calib_path, size)
    else:
        native = validate_image_size(native, "calib_image_size")
        size = validate_image_size(image_size) if image_size is not None else native
        K_calib = scale_intrinsics(K_calib, native, size)
    return Trajectory(torch.stack(c2ws), K_calib, size)


def write_kitti(path: str | Path, traj: Trajectory, *, calib: str | Path | None = None) -> None:
    """Write ``traj`` as KITTI odometry poses (inverse of ``read_kitti``): one row-major 3x4 c2w per
    line, as given (not re-anchored at the first camera). Timestamps are dropped.

    With ``calib``, also write a ``calib.txt`` there holding ``P0: [K | 0]`` (pixels of
    ``traj.image_size``); that needs one K for all frames.
    """
    if calib is not None:
        if not bool((traj.K == traj.K[0]).all()):
            raise ValueError("a KITTI calib.txt holds one camera matrix; this trajectory's intrinsics "
                             "differ per frame")
        P = torch.cat([traj.K[0], torch.zeros(3, 1, dtype=torch.float64)], dim=1)
        Path(calib).write_text("P0: " + " ".join(repr(float(x)) for x in P.reshape(-1).tolist()) + "\n")
    lines = [" ".join(repr(float(x)) for x in traj.c2w[i, :3, :].reshape(-1).tolist()) for i in range(len(traj))]
    Path(path).write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
_COLMAP_SUBDIRS = ("", "sparse/0", "sparse")


def _colmap_dir(directory: Path) -> Path | None:
    """The COLMAP model folder inside ``directory`` (itself, sparse/0 or sparse), if any."""
    for sub in _COLMAP_SUBDIRS:
        d = directory / sub if sub else directory
        if (d / "cameras.txt").is_file() or (d / "cameras.bin").is_file():
            return d
    return None


_TXT_FORMATS = {RE10K_FIELDS: "re10k", TUM_FIELDS: "tum", KITTI_FIELDS: "kitti"}


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _detect_txt(path: Path) -> str:
    """RealEstate10K, TUM or KITTI, by the field count of the first line of numbers.

    Blank lines and ``#`` comments are skipped; line 1 may be text (RealEstate10K's URL). The
    first line of numbers must have 19 (RealEstate10K), 8 (TUM) or 12 (KITTI) fields.
    """
    for lineno, text in _pose_lines(path):
        tokens = text.split()
        if not all(_is_number(t) for t in tokens):
            if lineno == 1:
                continue  # RealEstate10K's video URL
            raise ValueError(f"{path}, line {lineno}: not a line of numbers ({text[:60]!r}); camera "
                             "text files hold one pose per line")
        if len(tokens) in _TXT_FORMATS:
            return _TXT_FORMATS[len(tokens)]
        raise ValueError(f"{path}, line {lineno}: {len(tokens)} fields; a camera .txt has "
                         f"{RE10K_FIELDS} (RealEstate10K), {TUM_FIELDS} (TUM: timestamp tx ty tz qx qy qz qw) "
                         f"or {KITTI_FIELDS} (KITTI: 3x4 camera-to-world) numbers per line")
    raise ValueError(f"{path}: no camera poses (no line of numbers)")


def detect_format(path: str | Path) -> tuple[str, Path]:
    """(format name, path to hand to its reader) for ``path``, or ValueError when unclear."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_dir():
        colmap = _colmap_dir(path)
        if colmap is not None:
            return "colmap", colmap
        if (path / "transforms.json").is_file():
            return "nerf", path / "transforms.json"
        raise ValueError(f"{path}: directory holds neither a COLMAP model (cameras.txt/cameras.bin) "
                         "nor a transforms.json")
    suffix = path.suffix.lower()
    if path.name in ("cameras.txt", "images.txt", "cameras.bin", "images.bin"):
        return "colmap", path.parent
    if suffix == ".json":
        data = _read_json(path)
        return ("nerf" if isinstance(data, dict) and "frames" in data else "worldscore"), path
    if suffix in (".npy", ".npz"):
        return "worldscore", path
    if suffix == ".txt":
        return _detect_txt(path), path
    raise ValueError(f"{path}: cannot determine the camera format from the extension {suffix!r}; "
                     f"pass format= one of {list(FORMATS)}")


def load_trajectory(path: str | Path, image_size: tuple[int, int] | None = None,
                    format: str = "auto", *, K: Any = None, fov_x_deg: float | None = None) -> Trajectory:
    """Read any supported camera file into a ``Trajectory``.

    ``format="auto"`` picks by content/extension: a directory with cameras.txt/.bin (also under
    sparse/0) -> COLMAP; JSON with "frames" -> NeRF; other JSON or .npy/.npz -> WorldScore;
    .txt -> by the field count of its first line of numbers (``#`` comments and a first text line
    such as RealEstate10K's URL skipped): 19 -> RealEstate10K, 8 -> TUM, 12 -> KITTI.
    ``image_size`` is required by RealEstate10K (normalised intrinsics) and by files that do not
    record their size; elsewhere it rescales K. ``K`` / ``fov_x_deg`` give the intrinsics of the
    pose-only formats (TUM; KITTI without a calib.txt) and are an error for the others.
    """
    path = Path(path)
    if format == "auto":
        format, path = detect_format(path)
    if format == "tum":
        return read_tum(path, image_size, K=K, fov_x_deg=fov_x_deg)
    if format == "kitti":
        return read_kitti(path, image_size, K=K, fov_x_deg=fov_x_deg)
    if format in FORMATS and (K is not None or fov_x_deg is not None):
        raise ValueError(f"{path}: K/fov_x_deg apply to the pose-only formats (tum, kitti); "
                         f"{format} files carry their own intrinsics")
    if format == "re10k":
        if image_size is None:
            raise ValueError(f"{path}: RealEstate10K intrinsics are normalised; pass image_size=(H, W)")
        return read_re10k(path, image_size)
    if format == "colmap":
        model_dir = (_colmap_dir(path) or path) if path.is_dir() else path
        return read_colmap(model_dir, image_size)
    if format == "nerf":
        return read_nerf_transforms(path, image_size)
    if format == "worldscore":
        return read_worldscore(path, image_size)
    raise ValueError(f"unknown camera format {format!r}; expected 'auto' or one of {list(FORMATS)}")
