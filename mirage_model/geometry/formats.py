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
  world frame is left as the file has it (often z-up); only the camera axes are flipped.
* WorldScore: c2w with OpenGL/Blender camera axes, focal 500 px by default, principal point centred.

Every reader validates poses with ``camera.validate_pose``; errors name the file and the frame (or
line). Frames are ordered by file/image name with a natural sort (``frame_2`` before ``frame_10``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .camera import (
    invert_pose,
    make_intrinsics,
    opencv_to_opengl,
    opengl_to_opencv,
    scale_intrinsics,
    validate_image_size,
    validate_intrinsics,
    validate_pose,
)
from .trajectory import Trajectory

logger = logging.getLogger(__name__)

WORLDSCORE_FOCAL = 500.0
"""WorldScore's default focal length in pixels (docs/method.md §8)."""

RE10K_FIELDS = 19
"""Fields per RealEstate10K frame line: timestamp, fx fy cx cy, two zeros, 3x4 world-to-camera."""

FORMATS = ("re10k", "colmap", "nerf", "worldscore")

__all__ = [
    "FORMATS",
    "RE10K_FIELDS",
    "WORLDSCORE_FOCAL",
    "detect_format",
    "load_trajectory",
    "read_colmap",
    "read_nerf_transforms",
    "read_re10k",
    "read_worldscore",
    "write_nerf_transforms",
    "write_re10k",
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
    tokens = line.split()
    if len(tokens) != RE10K_FIELDS:
        raise ValueError(f"{where}: expected {RE10K_FIELDS} fields, got {len(tokens)}")
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


def read_nerf_transforms(path: str | Path, image_size: tuple[int, int] | None = None) -> Trajectory:
    """Read a NeRF-style ``transforms.json`` (OpenGL c2w) into an OpenCV trajectory.

    Intrinsics come from ``fl_x``/``fl_y``/``cx``/``cy`` or ``camera_angle_x``(/``_y``), globally or
    per frame (per-frame keys win). ``w``/``h`` give the image size; when absent ``image_size`` is
    required. When both exist and differ, K is rescaled to ``image_size``. Frames are ordered by
    ``file_path``; an optional per-frame ``timestamp`` (seconds) is kept.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'frames' list")
    global_meta = {k: v for k, v in data.items() if k != "frames"}
    target = validate_image_size(image_size) if image_size is not None else None

    entries = []
    for i, frame in enumerate(data["frames"]):
        where = f"{path}: frames[{i}]"
        if not isinstance(frame, dict) or "transform_matrix" not in frame:
            raise ValueError(f"{where}: missing 'transform_matrix'")
        gl = _check_pose(_pad_pose(frame["transform_matrix"], where), f"{where}.transform_matrix")
        K, size = _nerf_intrinsics({**global_meta, **frame}, target, where)
        if target is not None and size != target:
            K = scale_intrinsics(K, size, target)
        entries.append((str(frame.get("file_path", "")), i, gl, K, size, frame.get("timestamp")))
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
    return Trajectory(c2w, torch.stack([e[3] for e in entries]), size, ts)


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
        return "re10k", path
    raise ValueError(f"{path}: cannot determine the camera format from the extension {suffix!r}; "
                     f"pass format= one of {list(FORMATS)}")


def load_trajectory(path: str | Path, image_size: tuple[int, int] | None = None,
                    format: str = "auto") -> Trajectory:
    """Read any supported camera file into a ``Trajectory``.

    ``format="auto"`` picks by content/extension: a directory with cameras.txt/.bin (also under
    sparse/0) -> COLMAP; JSON with "frames" -> NeRF; other JSON or .npy/.npz -> WorldScore;
    .txt -> RealEstate10K. ``image_size`` is required by RealEstate10K (normalised intrinsics) and
    by files that do not record their size; elsewhere it rescales K.
    """
    path = Path(path)
    if format == "auto":
        format, path = detect_format(path)
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
