"""The COLMAP steps of ``poses.estimate_poses``: database, matching, keyframe mapping, registration.

The order of work for one clip (``poses`` orchestrates it and normalises the result):

1. ``write_database``: the frames as images, one shared camera, and SIFT features: COLMAP's own
   extractor (the default: on real film it gave sound models where OpenCV's features did not), or
   ``features.sift_features`` (OpenCV: 4-7x faster on one core, as accurate on rendered clips).
   Images are imported in frame order before any feature is extracted, so image ids are frame
   order + 1 whatever the thread count, and COLMAP's extractor may use every thread.
2. ``match_database``: COLMAP's matcher on the pairs a video needs (sequential: in pycolmap 4.2
   each frame with the frames 1, 2, 4, 8, ... ahead; or exhaustive), with a seeded two-view RANSAC. Matching runs
   on one thread: with two, the same frames gave different verified matches (measured).
3. ``choose_keyframes``: every ``s``-th frame (``s`` in 1, 2, 4), the largest step whose keyframe
   pairs are all well matched and that leaves at least ``MIN_KEYFRAMES`` keyframes. Their offsets
   are powers of two, so the sequential matcher has matched every pair of neighbouring keyframes.
4. ``reconstruct``: COLMAP's incremental mapper on the keyframes only, on one thread with a fixed
   seed (the same matches give the same model), trying the initial focal lengths in turn.
5. ``register_frames``: every other frame is registered to that model by absolute pose (PnP,
   seeded LO-RANSAC, then refinement) from its matches to frames already registered, nearest
   first. Mapping a third of the frames and registering the rest cost 2-3 s instead of 5-20 s on a
   33-frame clip at 320x240, with the same accuracy on rendered ground truth (docs/method.md).

No step here can be stopped from outside: COLMAP honours its cancellation tokens only between
units of work (seconds to minutes late, measured), so a hard time limit needs a process
(``pipeline.budget``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import Features

logger = logging.getLogger(__name__)

MIN_KEYFRAMES = 8
"""Keyframes a clip keeps at least (shorter clips map every frame)."""
KEYFRAME_MIN_INLIERS = 100
"""Verified matches every pair of neighbouring keyframes needs for a keyframe step to be used."""
MIN_PNP_INLIERS = 30
"""2D-3D inliers a frame needs to be registered to the keyframe model."""
PNP_MAX_ERROR_PX = 4.0
"""RANSAC threshold of the registration, pixels of the frames SfM runs on."""


@contextmanager
def colmap_log_level(verbose: bool):
    """Silence COLMAP's glog INFO/WARNING output unless ``verbose``."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = 3  # FATAL: the failures it logs as errors are raised, with their cause
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def frame_name(i: int) -> str:
    return f"frame_{i:06d}.bmp"


def _frame_of(name: str) -> int:
    return int(name[len("frame_"):-len(".bmp")])


def reader_options(K_sfm, camera_model: str | None, focal_factor: float):
    """COLMAP's image reader options: a fixed PINHOLE K (``K_sfm``, project convention) or an
    estimated camera (``camera_model``, default SIMPLE_RADIAL) starting at ``focal_factor * max(w, h)``."""
    import pycolmap

    ro = pycolmap.ImageReaderOptions()
    if K_sfm is not None:
        if abs(float(K_sfm[0, 1])) > 1e-9:
            raise ValueError("K: skewed intrinsics (K[0, 1] != 0) are not supported by SfM")
        ro.camera_model = camera_model or "PINHOLE"
        if ro.camera_model != "PINHOLE":
            raise ValueError("with a known K the camera model must be PINHOLE")
        fx, fy = float(K_sfm[0, 0]), float(K_sfm[1, 1])
        cx, cy = float(K_sfm[0, 2]) + 0.5, float(K_sfm[1, 2]) + 0.5  # COLMAP pixel centres at +0.5
        ro.camera_params = f"{fx!r},{fy!r},{cx!r},{cy!r}"
    else:
        ro.camera_model = camera_model or "SIMPLE_RADIAL"
        ro.default_focal_length_factor = float(focal_factor)
    return ro


def write_database(frames: np.ndarray, features: Sequence[Features] | None, work: Path, K_sfm,
                   camera_model: str | None, focal_factor: float, num_threads: int = 1) -> tuple[Path, Path]:
    """The images (BMP), one shared camera and their features in a new COLMAP database under
    ``work``: ``features`` (OpenCV's, ``features.sift_features``), or None for COLMAP's own SIFT
    extractor on ``num_threads`` threads. Returns (database path, image folder)."""
    import cv2
    import pycolmap

    image_dir = work / "images"
    if image_dir.exists():
        shutil.rmtree(image_dir)
    image_dir.mkdir(parents=True)
    names = [frame_name(i) for i in range(len(frames))]
    for name, f in zip(names, frames):
        # BMP, not PNG: PNG writers (cv2, PIL) crash in zlib (double free) when pycolmap was
        # imported before torch/cv2/PIL in the process; BMP needs no zlib.
        if not cv2.imwrite(str(image_dir / name), np.ascontiguousarray(f[..., ::-1])):
            raise OSError(f"could not write {image_dir / name}")
    db_path = work / "database.db"
    if db_path.exists():
        db_path.unlink()
    pycolmap.Database.open(str(db_path)).close()  # creates the tables
    pycolmap.import_images(str(db_path), str(image_dir), camera_mode=pycolmap.CameraMode.SINGLE, image_names=names,
                           options=reader_options(K_sfm, camera_model, focal_factor))
    if features is None:
        # the images are in the database already, so their ids stay in frame order whatever the
        # thread count (the extractor numbers new images in the order its threads finish)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = int(num_threads)
        pycolmap.extract_features(str(db_path), str(image_dir), image_names=names,
                                  camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader_options(K_sfm, camera_model, focal_factor),
                                  extraction_options=extraction, device=pycolmap.Device.cpu)
        return db_path, image_dir
    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        for name, feats in zip(names, features):
            db.write_keypoints(ids[name], feats.to_colmap())
            db.write_descriptors(ids[name], pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT,
                                                                        feats.descriptors))
    finally:
        db.close()
    return db_path, image_dir


def match_database(db_path: Path, matcher: str, overlap: int, seed: int) -> None:
    """COLMAP matching and two-view verification of the database's images (see the module docstring)."""
    import pycolmap

    match_opts = pycolmap.FeatureMatchingOptions()
    match_opts.num_threads = 1
    verify = pycolmap.TwoViewGeometryOptions()
    verify.ransac.random_seed = int(seed)  # default: a random seed per run (matches then differ run to run)
    if matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = int(overlap)
        pairing.loop_detection = False
        pycolmap.match_sequential(str(db_path), matching_options=match_opts, pairing_options=pairing,
                                  verification_options=verify, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(str(db_path), matching_options=match_opts, verification_options=verify,
                                  device=pycolmap.Device.cpu)


class MatchGraph:
    """The verified matches of a database, by frame: ``pairs[(i, j)]`` (i < j) is an (M, 2) array
    of keypoint indices in frames i and j; ``keypoints[i]`` (K, 2) in COLMAP pixels."""

    def __init__(self, db_path: Path):
        import pycolmap

        db = pycolmap.Database.open(str(db_path))
        try:
            images = db.read_all_images()
            frame = {im.image_id: _frame_of(im.name) for im in images}
            self.keypoints = {frame[im.image_id]: np.asarray(db.read_keypoints(im.image_id))[:, :2].astype(np.float64)
                              for im in images}
            self.image_id = {f: i for i, f in frame.items()}
            self.pairs: dict[tuple[int, int], np.ndarray] = {}
            self.configs: dict[tuple[int, int], object] = {}
            for pid, g in zip(*db.read_two_view_geometries()):
                m = np.asarray(g.inlier_matches).reshape(-1, 2)
                if not len(m):
                    continue
                a, b = (frame[x] for x in pycolmap.pair_id_to_image_pair(pid))
                if a > b:
                    a, b, m = b, a, m[:, ::-1]
                self.pairs[(a, b)] = m
                self.configs[(a, b)] = g.config
        finally:
            db.close()

    def matches(self, i: int, j: int) -> np.ndarray:
        """(M, 2) keypoint indices (in i, in j) of the verified matches of frames i and j (maybe empty)."""
        if i < j:
            return self.pairs.get((i, j), np.zeros((0, 2), dtype=np.int64))
        return self.pairs.get((j, i), np.zeros((0, 2), dtype=np.int64))[:, ::-1]

    def displacement(self, i: int, j: int) -> float:
        """Median displacement (COLMAP pixels) of the verified matches of frames i and j (NaN: none)."""
        m = self.matches(i, j)
        if not len(m):
            return float("nan")
        return float(np.median(np.linalg.norm(self.keypoints[i][m[:, 0]] - self.keypoints[j][m[:, 1]], axis=1)))


def choose_keyframes(graph: MatchGraph, n: int, enabled: bool = True) -> list[int]:
    """The frames to map (see the module docstring); all frames when ``enabled`` is False or no
    step larger than 1 is well matched."""
    frames = list(range(n))
    if not enabled:
        return frames
    for step in (4, 2):
        kf = list(range(0, n, step))
        if len(kf) < MIN_KEYFRAMES:
            continue
        if all(len(graph.matches(a, b)) >= KEYFRAME_MIN_INLIERS for a, b in zip(kf[:-1], kf[1:])):
            return kf
    return frames


def mapping_options(known_K: bool, seed: int, image_names: Sequence[str] = ()):
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_model_size = 3
    opts.random_seed = int(seed)
    # One thread: multi-threaded mapping (RANSAC, bundle adjustment) is not repeatable -- the same
    # frames gave 0.2 deg, 10 deg or no model on a real clip. Parallelism comes from running the
    # attempts side by side instead (``estimate_poses(attempts=...)``).
    opts.num_threads = 1
    opts.mapper.random_seed = int(seed)
    opts.triangulation.random_seed = int(seed)
    opts.mapper.num_threads = 1
    opts.extract_colors = False
    if image_names:
        opts.image_names = list(image_names)
    if known_K:  # intrinsics fixed: no refinement of focal length, principal point or distortion
        opts.ba_refine_focal_length = False
        opts.ba_refine_principal_point = False
        opts.ba_refine_extra_params = False
        opts.mapper.abs_pose_refine_focal_length = False
        opts.mapper.abs_pose_refine_extra_params = False
    return opts


def set_focal(db_path: Path, factor: float) -> None:
    """Reset the (single) camera's focal length in the database to ``factor * max(w, h)``."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        for cam in db.read_all_cameras():
            params = np.asarray(cam.params, dtype=np.float64).copy()
            params[list(cam.focal_length_idxs())] = factor * max(cam.width, cam.height)
            cam.params = params
            db.update_camera(cam)
    finally:
        db.close()


def _map(db_path: Path, image_dir: Path, sparse: Path, known_K: bool, seed: int, image_names: Sequence[str]):
    """Incremental mapping of ``image_names``; the largest reconstruction or None."""
    import pycolmap

    if sparse.exists():
        shutil.rmtree(sparse)
    sparse.mkdir()
    recs = pycolmap.incremental_mapping(str(db_path), str(image_dir), str(sparse),
                                        mapping_options(known_K, seed, image_names))
    if not recs:
        return None
    return max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


def plausible_camera(rec) -> bool:
    """Whether a reconstruction's (single) camera passes the pose-quality gates on the lens: focal
    length and radial distortion (``pose_quality.PoseThresholds``). A model that needed a 23 px
    focal length for a 320 px frame registers every frame and is still wrong."""
    from .pose_quality import PoseThresholds

    th = PoseThresholds()
    cam = next(iter(rec.cameras.values()))
    focal = float(np.mean([cam.params[i] for i in cam.focal_length_idxs()])) / max(cam.width, cam.height)
    distortion = max((abs(float(cam.params[i])) for i in cam.extra_params_idxs()), default=0.0)
    return th.min_focal <= focal <= th.max_focal and distortion <= th.max_distortion


def reconstruct(db_path: Path, image_dir: Path, work: Path, known_K: bool, seed: int, min_reg: int,
                focal_factors: Sequence[float], frames: Sequence[int], hopeless: Callable[[], bool]):
    """One mapping attempt of ``frames`` (its own copy of the database, its own seed): the best
    reconstruction or None.

    With unknown intrinsics, mapping starts from the focal length ``focal_factors[0] * max(w, h)``
    and, when that registers fewer than ``min_reg`` frames or lands on an implausible lens
    (``plausible_camera``), retries from the next guesses (a bad initial focal length can keep
    small-baseline clips from initialising, or pull a model into a degenerate one). The first
    guess with ``min_reg`` registered frames and a plausible lens wins; otherwise the largest
    reconstruction, plausible ones first. ``hopeless()``: whether the matches show that no focal
    length can help (a static camera, no matches); asked only after a guess failed.
    """
    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    shutil.copyfile(db_path, db)  # the focal retries rewrite the camera: one copy per attempt
    names = [frame_name(i) for i in frames]
    factors = (None,) if known_K else tuple(focal_factors)
    best, best_key = None, None
    for k, factor in enumerate(factors):
        if k > 0:
            set_focal(db, factor)
        rec = _map(db, image_dir, work / "sparse", known_K, seed, names)
        n_reg = 0 if rec is None else rec.num_reg_images()
        ok_lens = rec is not None and (known_K or plausible_camera(rec))
        if factor is not None:
            logger.debug("SfM seed %d from focal guess %.2f * max(w, h): %d registered, plausible lens: %s",
                         seed, factor, n_reg, ok_lens)
        if rec is not None and (best is None or (ok_lens, n_reg) > best_key):
            best, best_key = rec, (ok_lens, n_reg)
        if n_reg >= min_reg and ok_lens:
            break
        if k + 1 < len(factors) and hopeless():
            break  # another focal length cannot help
    return best


@dataclass(frozen=True)
class Registered:
    """A frame registered to the model: its pose, the 3D points its inliers observe, and the sum
    and count of their reprojection errors (pixels of the frames SfM ran on)."""

    cam_from_world: np.ndarray  # (3, 4)
    point_ids: list[int]
    error_sum: float
    observations: int


def register_frames(rec, graph: MatchGraph, frames: Sequence[int], seed: int) -> dict[int, Registered]:
    """Register those of ``frames`` that ``rec`` lacks to the reconstruction by absolute pose.

    A frame's 2D-3D correspondences come from its verified matches to frames already registered
    (the model's, then those registered here), nearest frames first, so that a frame matched only
    to other non-keyframes is reached through them. Frames that cannot be registered are left out.
    Each frame tried after a success costs one more PnP: O(frames^2) calls at worst, a fraction of
    a second for 81 frames.
    """
    import pycolmap

    known: dict[int, dict[int, int]] = {}  # frame -> {keypoint index: point3D id}
    for img in rec.images.values():
        if img.has_pose:
            known[_frame_of(img.name)] = {k: p.point3D_id for k, p in enumerate(img.points2D) if p.has_point3D()}
    camera = next(iter(rec.cameras.values()))
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.random_seed = int(seed)
    est.ransac.max_error = PNP_MAX_ERROR_PX
    refine = pycolmap.AbsolutePoseRefinementOptions()
    out: dict[int, Registered] = {}
    pending = [f for f in frames if f not in known]
    while pending and known:
        pending.sort(key=lambda f: (min(abs(f - g) for g in known), f))
        done = None
        for f in pending:
            corr: dict[int, int] = {}
            for g in sorted(known, key=lambda g: (abs(f - g), g)):
                m = graph.matches(f, g)
                for a, b in m:
                    pid = known[g].get(int(b))
                    if pid is not None and int(a) not in corr:
                        corr[int(a)] = pid
            if len(corr) < MIN_PNP_INLIERS:
                continue
            kp = list(corr)
            pts2d = graph.keypoints[f][kp]
            pts3d = np.array([rec.points3D[corr[k]].xyz for k in kp], dtype=np.float64)
            pose = pycolmap.estimate_and_refine_absolute_pose(pts2d, pts3d, camera, est, refine)
            if pose is None or int(pose["num_inliers"]) < MIN_PNP_INLIERS:
                continue
            inliers = np.asarray(pose["inlier_mask"], dtype=bool)
            known[f] = {k: corr[k] for k, ok in zip(kp, inliers) if ok}
            projected = camera.img_from_cam(pose["cam_from_world"] * pts3d[inliers], check_cheirality=False)
            errors = np.linalg.norm(projected - pts2d[inliers], axis=1)
            out[f] = Registered(np.asarray(pose["cam_from_world"].matrix(), dtype=np.float64),
                                sorted(set(known[f].values())), float(errors.sum()), int(inliers.sum()))
            done = f
            break  # the others may now reach a nearer registered frame
        if done is None:
            break
        pending.remove(done)
    return out


def diagnose(graph: MatchGraph, pixel_scale: float = 1.0):
    """Why SfM found no model, from every verified pair of the database: ``motion_check``'s
    verdict (``judge_motion``, the same rule as the check before SfM) on all the pairs instead of
    a sample. A ``moving`` verdict means the motion was not the problem."""
    from .motion_check import judge_motion, pair_motion

    pairs = [{"frames": [a, b], **pair_motion(graph.keypoints[a][m[:, 0]], graph.keypoints[b][m[:, 1]], pixel_scale)}
             for (a, b), m in sorted(graph.pairs.items()) if len(m) >= 8]
    check = judge_motion(pairs, f"the {len(graph.keypoints)} frames' {len(pairs)} verified pairs")
    if check.verdict == "moving":
        check.message = (f"no reconstruction could be initialised from {len(pairs)} verified pairs of "
                         f"{len(graph.keypoints)} frames ({check.message})")
    return check
