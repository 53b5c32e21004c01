"""Camera poses of a video clip by structure from motion (pycolmap), in the project's convention.

``estimate_poses`` runs COLMAP's incremental SfM on the frames of one clip (one shared camera) and
returns a ``PoseResult``: c2w poses (OpenCV axes, float64), intrinsics in pixels of the input
frames (centre of pixel column ``i`` at ``x = i``; COLMAP's ``cx`` is ours + 0.5), which frames SfM
registered and which got interpolated poses, and the sparse points (for depth scale alignment).

Normalisation (SfM is only defined up to a similarity):

* **Rotation and origin:** the first *registered* frame is the world origin with identity rotation
  (its c2w is exactly the identity).
* **Scale:** the median z-depth, in that first registered camera, of the sparse points it observes
  is 1 (``PoseResult.scale_rule``). When it observes fewer than ``MIN_SCALE_POINTS`` points in
  front of it, all sparse points in front of it are used instead. The median depth of what the
  first camera sees does not depend on how far the camera moves, so it stays well defined for
  slow, almost static cameras (unlike "mean step = 1"). ``PoseResult.scale`` is the factor applied
  to COLMAP's lengths.

Frames SfM does not register:

* interior frames (registered frames on both sides) get interpolated poses: slerp of the
  rotation, linear interpolation of the camera centre, by frame index (``interpolated`` is True);
* leading/trailing frames cannot be interpolated (no extrapolation): they are marked invalid
  (``valid`` False) and their ``c2w`` is NaN, never a silent identity. ``to_trajectory`` refuses
  them unless ``valid_only=True`` (then it covers ``valid_range``);
* fewer than ``min_registered * N`` registered frames raise ``PoseEstimationError``.

Failures raise ``PoseEstimationError`` (a ``ValueError``) that name the cause: too few frames,
a static camera (identical frames, or matched features that do not move), textureless frames (too
few SIFT keypoints), frames that do not match, no reconstruction, too few registered frames.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mirage_model.geometry.camera import (
    invert_pose,
    scale_intrinsics,
    validate_image_size,
    validate_intrinsics,
)
from mirage_model.geometry.trajectory import (
    Trajectory,
    _matrix_to_quaternion,
    _quaternion_to_matrix,
    _slerp,
)
from mirage_model.io.images import to_uint8

from . import colmap_sfm
from .features import Features, sift_features
from .motion_check import adjacent_frames, check_camera_motion, sample_frames

logger = logging.getLogger(__name__)

__all__ = [
    "MATCHERS",
    "FOCAL_GUESSES",
    "MIN_KEYPOINTS",
    "MIN_SCALE_POINTS",
    "PoseEstimationError",
    "PoseResult",
    "estimate_poses",
    "fill_unregistered_poses",
    "poses_from_file",
    "undistort_frames",
]

MATCHERS = ("sequential", "exhaustive")
FEATURE_EXTRACTORS = ("colmap", "opencv")
MIN_KEYPOINTS = 64
"""Median SIFT keypoints per frame below which a clip is called textureless."""
MIN_SCALE_POINTS = 10
"""Points the first registered camera must observe for the scale rule; else all points are used."""
FOCAL_GUESSES = (1.2, 0.7, 0.45)
"""Initial focal lengths (x max(H, W)) tried in turn when K is unknown: COLMAP's default 1.2
(~45 degrees horizontal field of view), then ~71 and ~96 degrees."""
MIN_CONTRAST = 2.0
"""Median per-frame standard deviation of the grey levels (0-255) below which frames are blank."""
DISTORTION_WARN = 0.05
"""Radial distortion magnitude above which dropping it from K is logged as a warning."""
SQUARE_PIXELS_TOL = 0.01
"""A known K whose fx / fy differs from 1 by more than this has squeezed pixels: SfM runs on square ones."""
STATIC_MAX_DIFF = 0.5
"""Mean absolute difference (uint8 levels) below which every frame counts as identical to frame 0."""

SCALE_RULE = ("first registered camera = world origin with identity rotation; median z-depth of "
              "the sparse points it observes = 1")


class PoseEstimationError(ValueError):
    """SfM could not give poses for the clip; the message names the cause, ``reason`` a manifest
    code where the cause has its own (else None)."""

    def __init__(self, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.reason = reason
        self.details = details or {}

    def __reduce__(self):  # picklable across Ray workers
        return (PoseEstimationError, (str(self), self.reason, self.details))


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class PoseResult:
    """Camera poses of N frames.

    Attributes:
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes; NaN for invalid frames (see ``valid``).
        K: (N, 3, 3) float64 intrinsics in pixels of ``image_size`` (project convention).
        image_size: (H, W) of the frames given to ``estimate_poses``.
        registered: (N,) bool, frames SfM registered.
        interpolated: (N,) bool, unregistered frames between registered ones, poses interpolated.
        points3d: (M, 3) float64 sparse points in the normalised world frame.
        point_ids_per_frame: N long tensors indexing ``points3d``: the points each frame observes
            (empty for unregistered frames).
        scale: factor applied to the SfM reconstruction's lengths by the normalisation.
        scale_rule: the normalisation in words.
        reprojection_error: mean reprojection error of the sparse model, pixels of ``image_size``.
        distortion: the camera's distortion parameters (dropped from ``K``: pinhole kept).
        runtime_s: wall time of the estimate.
        source: "sfm" or "file".
        attempts: with several SfM attempts, ``{"agreed": [seed, seed], "of": [seeds], "note": ...}``
            (which attempts agreed on these cameras); empty for one attempt.
        keyframes: frames the mapper reconstructed (the others were registered to its model).
        motion: the camera-motion check's measurements (``motion_check.MotionCheck.to_dict``).
    """

    c2w: torch.Tensor
    K: torch.Tensor
    image_size: tuple[int, int]
    registered: torch.Tensor
    interpolated: torch.Tensor
    points3d: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.float64))
    point_ids_per_frame: list[torch.Tensor] = field(default_factory=list)
    scale: float = 1.0
    scale_rule: str = SCALE_RULE
    reprojection_error: float = float("nan")
    distortion: tuple[float, ...] = ()
    runtime_s: float = 0.0
    source: str = "sfm"
    attempts: dict = field(default_factory=dict)
    keyframes: int = 0
    motion: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def n_frames(self) -> int:
        return len(self)

    @property
    def valid(self) -> torch.Tensor:
        """(N,) bool: frames with a pose (registered or interpolated)."""
        return self.registered | self.interpolated

    @property
    def registered_fraction(self) -> float:
        """Registered frames / N."""
        return float(self.registered.double().mean()) if len(self) else 0.0

    @property
    def valid_range(self) -> tuple[int, int]:
        """(start, stop) of the frames with poses: ``frames[start:stop]`` matches ``valid_only``."""
        idx = torch.nonzero(self.valid).flatten()
        if not len(idx):
            return 0, 0
        return int(idx[0]), int(idx[-1]) + 1

    def to_trajectory(self, image_size: tuple[int, int] | None = None, *,
                      valid_only: bool = False) -> Trajectory:
        """A ``Trajectory`` of the poses; K rescaled to ``image_size`` (default: the frames' size).

        Raises PoseEstimationError when some frames have no pose, unless ``valid_only`` (then the
        trajectory covers ``valid_range``; interior gaps are always interpolated, so it is
        contiguous).
        """
        start, stop = self.valid_range
        if valid_only:
            if stop == start:
                raise PoseEstimationError("no frame has a pose")
            sel = slice(start, stop)
        else:
            invalid = torch.nonzero(~self.valid).flatten().tolist()
            if invalid:
                raise PoseEstimationError(
                    f"frames {invalid} of {len(self)} have no pose (leading/trailing frames SfM did "
                    "not register cannot be interpolated); use to_trajectory(valid_only=True) with "
                    f"frames[{start}:{stop}]")
            sel = slice(0, len(self))
        traj = Trajectory(self.c2w[sel], self.K[sel], self.image_size)
        if image_size is not None and tuple(image_size) != tuple(self.image_size):
            traj = traj.resized(image_size)
        return traj


# ----------------------------------------------------------------------------------------------
# Interpolation of unregistered frames
# ----------------------------------------------------------------------------------------------
def fill_unregistered_poses(c2w, registered) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate the poses of unregistered frames that have registered frames on both sides.

    Args:
        c2w: (N, 4, 4) poses; rows of unregistered frames are ignored.
        registered: (N,) bool.
    Returns:
        (c2w, interpolated): (N, 4, 4) float64 with interior gaps filled (rotation slerp, camera
        centre linear, by frame index) and NaN for leading/trailing unregistered frames, and the
        (N,) bool mask of the interpolated frames. Registered poses are copied unchanged.
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    reg = torch.as_tensor(registered, dtype=torch.bool)
    n = c2w.shape[0]
    if tuple(c2w.shape) != (n, 4, 4) or tuple(reg.shape) != (n,):
        raise ValueError(f"expected c2w (N, 4, 4) and registered (N,), got {tuple(c2w.shape)}, "
                         f"{tuple(reg.shape)}")
    out = torch.full_like(c2w, float("nan"))
    out[reg] = c2w[reg]
    interpolated = torch.zeros(n, dtype=torch.bool)
    idx = torch.nonzero(reg).flatten()
    if len(idx) < 2:
        return out, interpolated
    for a, b in zip(idx[:-1].tolist(), idx[1:].tolist()):
        if b - a < 2:
            continue
        gap = torch.arange(a + 1, b)
        t = (gap - a).to(torch.float64) / (b - a)
        q0 = _matrix_to_quaternion(c2w[a, :3, :3])[None].expand(len(gap), 4)
        q1 = _matrix_to_quaternion(c2w[b, :3, :3])[None].expand(len(gap), 4)
        pose = torch.zeros(len(gap), 4, 4, dtype=torch.float64)
        pose[:, :3, :3] = _quaternion_to_matrix(_slerp(q0, q1, t))
        pose[:, :3, 3] = (1 - t[:, None]) * c2w[a, :3, 3] + t[:, None] * c2w[b, :3, 3]
        pose[:, 3, 3] = 1.0
        out[gap] = pose
        interpolated[gap] = True
    return out, interpolated


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------
def _frames_uint8(frames) -> np.ndarray:
    """(N, H, W, 3) uint8 numpy from uint8 or float [0, 1] numpy/torch input."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames: expected shape (N, H, W, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"frames: expected uint8 or float in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("frames: non-finite values")
    return to_uint8(arr)


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = size
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


# ----------------------------------------------------------------------------------------------
# Diagnosis of failures
# ----------------------------------------------------------------------------------------------
def _check_texture(frames: np.ndarray) -> None:
    """Raise when the frames are (almost) uniform: nothing for SIFT to detect."""
    grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    contrast = float(np.median(grey.reshape(len(frames), -1).std(axis=1)))
    if contrast < MIN_CONTRAST:
        raise PoseEstimationError(
            f"textureless frames: the median grey-level standard deviation per frame is "
            f"{contrast:.2f} (< {MIN_CONTRAST}), the images are (almost) uniform; SfM needs texture",
            reason="textureless")


def _check_keypoints(counts: Sequence[int]) -> None:
    """Raise when the frames have too few SIFT keypoints (``counts``, per frame) to match: smooth
    or blank frames."""
    median_kp = float(np.median(counts)) if len(counts) else 0.0
    if median_kp < MIN_KEYPOINTS:
        raise PoseEstimationError(
            f"textureless frames: SIFT found a median of {median_kp:.0f} keypoints per frame "
            f"(fewer than {MIN_KEYPOINTS}), too few to match; SfM needs textured images", reason="textureless")


def _keypoint_counts(db_path: Path) -> list[int]:
    """Keypoints per image of a COLMAP database."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        return [int(db.num_keypoints_for_image(im.image_id)) for im in db.read_all_images()]
    finally:
        db.close()


def _check_not_static(frames: np.ndarray) -> None:
    """Raise when every frame equals frame 0 (a static camera on a static scene)."""
    ref = frames[0].astype(np.int16)
    diffs = [float(np.abs(f.astype(np.int16) - ref).mean()) for f in frames[1:]]
    if max(diffs) < STATIC_MAX_DIFF:
        raise PoseEstimationError(
            f"static camera: all {len(frames)} frames are identical (largest mean difference to "
            f"frame 0 is {max(diffs):.2f} grey levels), so there is no baseline to triangulate "
            "from; SfM needs a moving camera", reason="static")


def poses_agree(a: PoseResult, b: PoseResult, *, max_rotation_deg: float = 2.0,
                max_focal_change: float = 0.25, max_path_error: float = 0.1) -> tuple[bool, str]:
    """Whether two SfM results of the same frames describe the same cameras, and why not.

    Compared on the frames registered in both, free of each result's own gauge: the rotations
    after the best global rotation, the focal length, and the camera centres after a Sim(3)
    alignment (RMSE over the path's extent; skipped for a path too short to align). A
    reconstruction that went wrong (a wrong focal length absorbing the motion, a model glued at
    a jump) disagrees with a sound one far beyond these tolerances, while its reprojection error
    can look normal. The focal tolerance is the loosest: with a long lens and a short path, sound
    runs differ by 15 % in focal length and agree on everything else.
    """
    from mirage_model.perception.evaluate import ate, rotation_error_deg

    common = a.registered & b.registered
    if int(common.sum()) < 2:
        return False, f"only {int(common.sum())} frames registered in both"
    rot = float(rotation_error_deg(a.c2w[common], b.c2w[common]).max())
    fa, fb = float(a.K[0, 0, 0]), float(b.K[0, 0, 0])
    focal = abs(fa / fb - 1.0)
    path = ate(a.c2w[common], b.c2w[common]) if int(common.sum()) >= 3 else None
    path_err = path.relative if path is not None and path.extent > 1e-9 else 0.0
    ok = rot <= max_rotation_deg and focal <= max_focal_change and path_err <= max_path_error
    return ok, (f"rotations differ by up to {rot:.2f} deg, focal {fa:.0f} vs {fb:.0f} px, camera path "
                f"{100 * path_err:.1f}% of its extent")


def _run_attempts(attempt, seeds: list[int], num_threads: int) -> dict:
    """``{seed: attempt(seed)}``, side by side in threads (COLMAP's mapping releases the GIL) up to
    ``num_threads`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(seeds), max(1, num_threads))
    if workers <= 1:
        return {s: attempt(s) for s in seeds}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sfm") as pool:
        return dict(zip(seeds, pool.map(attempt, seeds)))


def _reconcile(results: dict[int, PoseResult | None], failures: dict[int, str]) -> tuple[PoseResult | None, str]:
    """The result two attempts agree on (the one registering more frames, then the lower
    reprojection error), or None and what the attempts said."""
    ok = {s: r for s, r in results.items() if r is not None}
    notes = [f"seed {s}: {msg}" for s, msg in failures.items()]
    seeds = sorted(ok)
    for i, s in enumerate(seeds):
        for t in seeds[i + 1:]:
            agree, why = poses_agree(ok[s], ok[t])
            if agree:
                pick = max((ok[s], ok[t]), key=lambda r: (int(r.registered.sum()), -r.reprojection_error))
                pick.attempts = {"agreed": [s, t], "of": sorted(results), "note": why}
                return pick, why
            notes.append(f"seeds {s} and {t}: {why}")
    return None, "; ".join(notes)


def undistort_frames(frames: np.ndarray, K: torch.Tensor, distortion: Sequence[float]) -> np.ndarray:
    """Remove the lens distortion SfM estimated (COLMAP SIMPLE_RADIAL / RADIAL / OPENCV: k1[, k2[,
    p1, p2]] on normalised coordinates, OpenCV's model and order), keeping the pinhole ``K``: the
    stored frames and ``K`` then agree everywhere, not only near the image centre. ``frames``
    (N, H, W, C) uint8; ``K`` (3, 3) or (N, 3, 3) in pixels of the frames (pixel centres at
    integers, as OpenCV). Pixels that map from outside the source image are black
    (``undistorted_valid`` says which)."""
    import cv2

    ks = [float(k) for k in distortion][:4]
    if not ks or not any(ks):
        return frames
    dist = np.array([*ks, *([0.0] * (4 - len(ks)))], dtype=np.float64)
    Ks = K.expand(len(frames), 3, 3) if K.ndim == 2 else K
    out = np.empty_like(frames)
    maps = None
    for i, frame in enumerate(frames):
        k = Ks[i].numpy().astype(np.float64)
        if maps is None or i == 0 or not np.array_equal(k, Ks[i - 1].numpy()):
            maps = cv2.initUndistortRectifyMap(k, dist, None, k, (frame.shape[1], frame.shape[0]), cv2.CV_32FC1)
        out[i] = cv2.remap(frame, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out


def undistorted_valid(size: tuple[int, int], K: torch.Tensor, distortion: Sequence[float]) -> np.ndarray:
    """(H, W) bool: the pixels of ``undistort_frames``' output that come from inside the source
    image (the rest -- corners and edges the undistortion pulls in from outside, for k1 > 0 -- are
    black and carry no scene). ``K`` (3, 3) or (N, 3, 3) (the first is used: SfM's camera is shared)."""
    import cv2

    h, w = (int(x) for x in size)
    ks = [float(k) for k in distortion][:4]
    if not ks or not any(ks):
        return np.ones((h, w), dtype=bool)
    k = (K[0] if K.ndim == 3 else K).numpy().astype(np.float64)
    dist = np.array([*ks, *([0.0] * (4 - len(ks)))], dtype=np.float64)
    mx, my = cv2.initUndistortRectifyMap(k, dist, None, k, (w, h), cv2.CV_32FC1)
    return (mx >= -0.5) & (mx <= w - 0.5) & (my >= -0.5) & (my <= h - 0.5)


def _normalise(c2w: torch.Tensor, registered: torch.Tensor, points: torch.Tensor,
               point_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Apply the documented similarity: first registered camera = identity, median depth = 1."""
    first = int(torch.nonzero(registered).flatten()[0])
    to_first = invert_pose(c2w[first])
    out = c2w.clone()
    out[registered] = to_first @ c2w[registered]
    out[registered, 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    pts = points @ to_first[:3, :3].T + to_first[:3, 3]
    seen = pts[point_ids[first]] if len(point_ids[first]) else pts[:0]
    z = seen[:, 2][seen[:, 2] > 0]
    if len(z) < MIN_SCALE_POINTS:
        z = pts[:, 2][pts[:, 2] > 0]
    if not len(z):
        raise PoseEstimationError("no sparse point lies in front of the first registered camera; "
                                  "cannot fix the scale")
    scale = 1.0 / float(z.median())
    out[registered, :3, 3] *= scale
    out[first] = torch.eye(4, dtype=torch.float64)  # exact
    return out, pts * scale, scale


def estimate_poses(
    frames,
    K=None,
    *,
    matcher: str = "sequential",
    min_registered: float = 0.6,
    max_side: int | None = None,
    workdir: str | Path | None = None,
    overlap: int = 10,
    camera_model: str | None = None,
    seed: int = 0,
    num_threads: int = -1,
    focal_guesses: tuple[float, ...] = FOCAL_GUESSES,
    attempts: int = 1,
    keyframes: bool = True,
    check_motion: bool = True,
    feature_extractor: str = "colmap",
    verbose: bool = False,
) -> PoseResult:
    """Estimate the camera poses (and shared intrinsics) of a video clip with COLMAP SfM.

    Args:
        frames: (N, H, W, 3) uint8, or float in [0, 1]; numpy or torch. N >= 2.
        K: optional (3, 3) intrinsics in pixels of (H, W), project convention. When given, they
            are held fixed (PINHOLE camera, no refinement of focal length or principal point);
            squeezed pixels (fx != fy) are resampled to square ones for SfM and K is mapped back.
            Otherwise one shared camera (``camera_model``, default SIMPLE_RADIAL: f, cx, cy, k) is
            estimated; the radial term is reported in ``distortion`` and dropped from ``K``.
        matcher: "sequential" (video; in pycolmap 4.2 each frame against the frames 1, 2, 4, 8, ...
            ahead, up to 2^(``overlap`` - 1); loop detection off) or "exhaustive" (all pairs).
        min_registered: fewest registered frames, as a fraction of N, before it fails.
        max_side: downscale so that max(H, W) <= max_side for SfM (faster); K and outputs are
            mapped back to (H, W) with ``scale_intrinsics``.
        workdir: keep images, database and sparse model here (default: a temporary folder).
        overlap: sequential matching window.
        camera_model: COLMAP camera model name (see ``K``).
        seed: the random seed of every sampling step (two-view and absolute-pose RANSAC, mapper).
            Matching and mapping run single-threaded, so the same frames and seed give the same poses.
        num_threads: threads for feature extraction (frames side by side) and for mapping
            attempts (side by side; -1: all cores). Neither changes the result: COLMAP's own
            matching and mapping give different cameras on several threads, so each runs on one.
        attempts: independent mapping runs (seeds ``seed``, ``seed + 1``, ...) that must agree
            (``poses_agree``); when none of them agree one more is run, and when still no two
            agree the clip fails as unstable. 1: a single run, unchecked.
        focal_guesses: initial focal lengths, as factors of max(H, W), tried in order (unknown K
            only) until one registers ``min_registered * N`` frames.
        keyframes: map every 2nd or 4th frame (where they are well matched) and register the
            others to that model (``colmap_sfm``); False maps every frame.
        feature_extractor: "colmap" (COLMAP's SIFT, on ``num_threads`` threads; sound models on
            real film where OpenCV's were degenerate) or "opencv" (``features.sift_features``:
            4-7x faster on one core, as accurate on rendered clips).
        check_motion: first decide from a few frames whether the camera moves enough to be
            posed (``motion_check``): a static camera, a rotation without parallax or frames that
            do not match fail in a fraction of a second with ``reason`` ``static``,
            ``no_parallax`` or ``too_few_matches`` (and the measurements in ``details``).
        verbose: let COLMAP log INFO messages.
    Returns:
        PoseResult, normalised as described in the module docstring.
    Raises:
        PoseEstimationError: static camera, no parallax, textureless frames, no reconstruction,
            fewer than ``min_registered * N`` registered frames, or attempts that disagree
            (``reason`` ``"unstable_poses"``); the message names the cause, ``reason`` the manifest
            code where the cause has its own.
        ValueError: malformed arguments.
    """
    start = time.perf_counter()
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    if feature_extractor not in FEATURE_EXTRACTORS:
        raise ValueError(f"feature_extractor must be one of {FEATURE_EXTRACTORS}, got {feature_extractor!r}")
    if not 0.0 <= float(min_registered) <= 1.0:
        raise ValueError(f"min_registered must be in [0, 1], got {min_registered}")
    imgs = _frames_uint8(frames)
    n, h, w = imgs.shape[:3]
    size = validate_image_size((h, w), "frames")
    if n < 2:
        raise PoseEstimationError(f"need at least 2 frames for SfM, got {n}")
    K_full = None
    if K is not None:
        K_full = validate_intrinsics(K, "K")
        if tuple(K_full.shape) != (3, 3):
            raise ValueError(f"K: expected one shared (3, 3) matrix, got {tuple(K_full.shape)}")
    if max(h, w) < 16:
        raise PoseEstimationError(f"frames of {h}x{w} are too small for SfM")

    _check_texture(imgs)
    _check_not_static(imgs)

    sfm_size = size
    if K_full is not None and abs(float(K_full[0, 0] / K_full[1, 1]) - 1.0) > SQUARE_PIXELS_TOL:
        # squeezed pixels (fx != fy): SfM on frames resampled to square pixels, where SIFT's
        # neighbourhoods and COLMAP's two-view geometry see the scene undistorted
        sfm_size = (h, max(2, round(w * float(K_full[1, 1] / K_full[0, 0]))))
    if max_side is not None and max(sfm_size) > int(max_side):
        s = int(max_side) / max(sfm_size)
        sfm_size = (max(1, round(sfm_size[0] * s)), max(1, round(sfm_size[1] * s)))
    if sfm_size != size:
        imgs = _resize(imgs, sfm_size)
    K_sfm = None if K_full is None else scale_intrinsics(K_full, size, sfm_size)

    pixel_scale = math.sqrt(size[0] * size[1] / (sfm_size[0] * sfm_size[1]))  # input px per SfM px
    threads = (os.cpu_count() or 1) if num_threads < 1 else int(num_threads)
    features: dict[int, Features] = {}
    motion = None
    if check_motion and n >= 3:
        sampled = sample_frames(n)
        features.update(zip(sampled, sift_features(imgs[sampled], num_threads=threads)))
        _check_keypoints([len(f) for f in features.values()])
        motion = check_camera_motion(features, pixel_scale)
        if motion.verdict == "too_few_matches":  # far-apart samples of a fast camera: do neighbours match?
            near = adjacent_frames(sampled, n)
            features.update(zip(near, sift_features(imgs[near], num_threads=threads)))
            motion = check_camera_motion(features, pixel_scale)
        if not motion.ok:
            raise PoseEstimationError(motion.message, reason=motion.verdict, details=motion.to_dict())
    if feature_extractor == "opencv":
        rest = [i for i in range(n) if i not in features]
        features.update(zip(rest, sift_features(imgs[rest], num_threads=threads)))
        _check_keypoints([len(f) for f in features.values()])

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mirage-sfm-")
        work = Path(tmp.name)
    else:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        with colmap_sfm.colmap_log_level(verbose):
            db_path, image_dir = colmap_sfm.write_database(
                imgs, [features[i] for i in range(n)] if feature_extractor == "opencv" else None, work, K_sfm,
                camera_model, focal_guesses[0], threads)
            if feature_extractor == "colmap":
                _check_keypoints(_keypoint_counts(db_path))
            colmap_sfm.match_database(db_path, matcher, overlap, seed)
            graph = colmap_sfm.MatchGraph(db_path)
            key = colmap_sfm.choose_keyframes(graph, n, keyframes)
            diagnosis = functools.cache(lambda: colmap_sfm.diagnose(graph, pixel_scale))

            def failure(message: str) -> tuple[None, str, str | None]:
                """A failed attempt: the message with what the matches say, and the reason code
                when the matches name one (a static camera, no parallax, no matches)."""
                d = diagnosis()
                return None, f"{message}: {d.message}", None if d.ok else d.verdict

            def hopeless() -> bool:
                return diagnosis().verdict in ("static", "too_few_matches")

            def attempt(s: int) -> tuple[PoseResult | None, str, str | None]:
                rec = colmap_sfm.reconstruct(db_path, image_dir, work / f"attempt-{s}", K_sfm is not None, s,
                                             math.ceil(min_registered * len(key) - 1e-9), focal_guesses, key,
                                             hopeless)
                if rec is None or rec.num_reg_images() == 0:
                    return failure(f"SfM found no reconstruction for {n} frames")
                extra = colmap_sfm.register_frames(rec, graph, range(n), s)  # those the mapper did not
                n_reg = rec.num_reg_images() + len(extra)
                if n_reg < min_registered * n:
                    return failure(f"too few registered frames: SfM registered {n_reg} of {n} frames "
                                   f"({100.0 * n_reg / n:.0f}% < min_registered {100.0 * min_registered:.0f}%)")
                try:
                    return _result_from_reconstruction(rec, n, size, sfm_size, extra), "", None
                except PoseEstimationError as exc:  # e.g. no point in front of the first camera
                    return None, str(exc), exc.reason

            seeds = [seed + k for k in range(max(1, int(attempts)))]
            outcomes = _run_attempts(attempt, seeds, threads)
            if len(seeds) == 1:
                result, why, reason = outcomes[seed]
                if result is None:
                    raise PoseEstimationError(why, reason=reason)
            else:
                def settle():
                    return _reconcile({s: o[0] for s, o in outcomes.items()},
                                      {s: o[1] for s, o in outcomes.items() if o[0] is None})

                result, why = settle()
                if result is None and any(o[0] is not None for o in outcomes.values()):
                    # no two agree: one more attempt decides (when all failed alike, another seed
                    # cannot change the verdict)
                    outcomes.update(_run_attempts(attempt, [seed + len(seeds)], threads))
                    result, why = settle()
                if result is None:
                    if not any(o[0] is not None for o in outcomes.values()):
                        _, why, reason = outcomes[seed]
                        raise PoseEstimationError(why, reason=reason)  # all failed alike: the cause
                    raise PoseEstimationError(f"unstable SfM: no two of {len(outcomes)} attempts agree ({why})",
                                              reason="unstable_poses")
    finally:
        if tmp is not None:
            tmp.cleanup()
    result.keyframes = len(key)
    result.motion = motion.to_dict() if motion is not None else {}
    result.runtime_s = time.perf_counter() - start
    logger.info("SfM: registered %d/%d frames (%d keyframes mapped), %d interpolated, %d points, reprojection "
                "error %.3f px, %.1f s", int(result.registered.sum()), n, len(key), int(result.interpolated.sum()),
                len(result.points3d), result.reprojection_error, result.runtime_s)
    return result


def _result_from_reconstruction(rec, n: int, size: tuple[int, int], sfm_size: tuple[int, int],
                                extra: dict[int, colmap_sfm.Registered] | None = None) -> PoseResult:
    """PoseResult (normalised, gaps filled) from a pycolmap reconstruction of frames 0..n-1 and
    ``extra`` frames registered to it. The reprojection error is the mean over the model's
    observations and those of the registered frames' inliers."""
    name_to_frame = {colmap_sfm.frame_name(i): i for i in range(n)}
    registered = torch.zeros(n, dtype=torch.bool)
    c2w = torch.full((n, 4, 4), float("nan"), dtype=torch.float64)

    point_index = {pid: k for k, pid in enumerate(rec.points3D)}
    points = torch.tensor(np.array([rec.points3D[pid].xyz for pid in rec.points3D], dtype=np.float64)
                          .reshape(-1, 3))
    point_ids = [torch.zeros(0, dtype=torch.long) for _ in range(n)]
    cameras = set()
    for im in rec.images.values():
        if not im.has_pose or im.name not in name_to_frame:
            continue
        i = name_to_frame[im.name]
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :] = torch.as_tensor(np.asarray(im.cam_from_world().matrix(), dtype=np.float64))
        c2w[i] = invert_pose(w2c)
        registered[i] = True
        cameras.add(im.camera_id)
        ids = [point_index[p.point3D_id] for p in im.points2D if p.has_point3D()]
        point_ids[i] = torch.tensor(sorted(set(ids)), dtype=torch.long)
    extra = extra or {}
    for i, reg in extra.items():
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :] = torch.as_tensor(reg.cam_from_world)
        c2w[i] = invert_pose(w2c)
        registered[i] = True
        point_ids[i] = torch.tensor(sorted({point_index[p] for p in reg.point_ids}), dtype=torch.long)
    observations = rec.compute_num_observations()
    error_sum = rec.compute_mean_reprojection_error() * observations + sum(r.error_sum for r in extra.values())
    reprojection = error_sum / max(1, observations + sum(r.observations for r in extra.values()))
    if len(cameras) != 1:
        raise PoseEstimationError(f"expected one shared camera, the reconstruction has {len(cameras)}")
    cam = rec.cameras[next(iter(cameras))]
    K = torch.as_tensor(np.asarray(cam.calibration_matrix(), dtype=np.float64)).clone()
    K[0, 2] -= 0.5  # COLMAP: top-left pixel centre at (0.5, 0.5); ours at (0, 0)
    K[1, 2] -= 0.5
    K = scale_intrinsics(K, (int(cam.height), int(cam.width)), size)
    params = np.asarray(cam.params, dtype=np.float64)
    distortion = tuple(float(params[j]) for j in cam.extra_params_idxs())
    if distortion and max(abs(d) for d in distortion) > DISTORTION_WARN:
        logger.info("SfM estimated lens distortion %s; K is pinhole: undistort_frames removes it from "
                    "the frames (the pipeline does), else geometry far from the image centre is approximate",
                    distortion)

    c2w, points, scale = _normalise(c2w, registered, points, point_ids)
    c2w, interpolated = fill_unregistered_poses(c2w, registered)
    lead = torch.nonzero(~(registered | interpolated)).flatten().tolist()
    if lead:
        logger.warning("frames %s are not registered and not flanked by registered frames: no pose "
                       "(marked invalid)", lead)
    pixel_scale = math.sqrt(size[0] * size[1] / (sfm_size[0] * sfm_size[1]))
    return PoseResult(
        c2w=c2w, K=K.expand(n, 3, 3).clone(), image_size=size, registered=registered,
        interpolated=interpolated, points3d=points, point_ids_per_frame=point_ids, scale=scale,
        scale_rule=SCALE_RULE, reprojection_error=float(reprojection) * pixel_scale,
        distortion=distortion, source="sfm")


# ----------------------------------------------------------------------------------------------
# Cameras from a file
# ----------------------------------------------------------------------------------------------
def poses_from_file(path: str | Path, image_size: tuple[int, int], n_frames: int | None = None,
                    format: str = "auto") -> PoseResult:
    """Cameras the user already has (RealEstate10K, COLMAP, NeRF, WorldScore; see ``formats``).

    The poses are kept as the file gives them (no re-normalisation; ``scale`` = 1). All frames
    count as registered. ``n_frames``, when given, must equal the number of cameras in the file
    (a mismatch raises ValueError rather than silently misaligning cameras and frames). COLMAP
    models also provide their sparse points.
    """
    from mirage_model.geometry import formats

    start = time.perf_counter()
    size = validate_image_size(image_size)
    fmt, resolved = (formats.detect_format(path) if format == "auto" else (format, Path(path)))
    traj = formats.load_trajectory(path, size, format=format)
    n = len(traj)
    if n_frames is not None and int(n_frames) != n:
        raise ValueError(f"{path}: the file has {n} cameras but the clip has {int(n_frames)} frames")
    points = torch.zeros(0, 3, dtype=torch.float64)
    if fmt == "colmap":
        import pycolmap

        model_dir = resolved if resolved.is_dir() else resolved.parent
        model_dir = formats._colmap_dir(model_dir) or model_dir
        rec = pycolmap.Reconstruction(str(model_dir))
        if rec.num_points3D():
            points = torch.tensor(np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64))
    return PoseResult(
        c2w=traj.c2w.clone(), K=traj.K.clone(), image_size=size,
        registered=torch.ones(n, dtype=torch.bool), interpolated=torch.zeros(n, dtype=torch.bool),
        points3d=points, point_ids_per_frame=[], scale=1.0,
        scale_rule=f"as given in {path} ({fmt})", runtime_s=time.perf_counter() - start,
        source="file")
