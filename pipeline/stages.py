"""Ray Data stages of ``mirage preprocess``: small callables, heavy state loaded once in ``__init__``.

Rows are flat dicts with the same keys everywhere (Arrow needs one schema): identifiers, a status
(``ok`` / ``rejected``), a reason code and message, per-stage timings, and ``payload`` -- the
clip's arrays (frames, cameras, depth, masks, latents) pickled into one bytes column. A stage that
fails on a clip turns the row into a rejected one with the reason and drops its payload; later
stages pass rejected rows through untouched, so one bad video never stops the run.

The perception itself lives in ``mirage_model.perception`` (pure functions shared with generation);
these classes only adapt it to rows.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirage_model.io.sample_format import ClipSample, encode_sample
from mirage_model.io.video import DecodedVideo, VideoError, decode

from . import storage
from .budget import TimeLimitExceeded, call_with_time_limit, clip_budget_s
from .clips import apply_fit, fit_intrinsics, plan_clips, plan_fit
from .config import TEXT_PRESETS, PreprocessConfig
from .shards import InputRecord, publish_group, sample_key
from .storage import StorageOptions
from .text import CaptionError, find_caption, text_stack_id_at

log = logging.getLogger(__name__)

STAGES = ("decode", "poses", "depth", "masks", "latents", "caption", "text", "encode")
ROW_KEYS = ("uri", "input_id", "group_id", "group_inputs", "input_clips", "clip_index", "status", "reason",
            "message", "n_frames", "bytes_in", "budget_s", *(f"t_{s}" for s in STAGES), *(f"rss_{s}" for s in STAGES),
            "payload")
"""A clip row: identifiers, status, the input's size, the clip's time budget (``budget_s``, 0: none),
and per stage its busy seconds (``t_``) and the peak RSS in MiB of the worker process that ran it
(``rss_``)."""


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def limit_threads(config: PreprocessConfig) -> None:
    """Use as many threads as the task reserves CPUs (``resources.num_cpus``): torch and OpenCV
    otherwise start one per core and oversubscribe a node that runs a task per CPU."""
    import cv2

    n = max(1, int(config.resources.num_cpus))
    torch.set_num_threads(n)
    cv2.setNumThreads(n)


class InputError(ValueError):
    """An input the pipeline cannot use for a reason other than its video (``reason``: a manifest code)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray workers
        return (InputError, (self.reason, str(self)))


def reason_code(exc: BaseException, default: str) -> str:
    """The manifest code of a failure: the exception's own ``reason`` when it is a code (VideoError,
    InputError, PoseEstimationError subclasses), else ``default`` (``UnicodeDecodeError.reason``
    and the like are free text, not codes)."""
    from mirage_model.perception.poses import PoseEstimationError

    reason = getattr(exc, "reason", None)
    known = (VideoError, InputError, CaptionError, DepthFitError, PoseEstimationError, TimeLimitExceeded)
    if isinstance(exc, known) and isinstance(reason, str) and reason:
        return reason
    return default


def new_row(item: dict[str, Any], clip_index: int = 0, input_clips: int = 1) -> dict[str, Any]:
    """An empty clip row with every key present, for clip ``clip_index`` of the ``input_clips`` rows
    that input ``item`` (``{uri, input_id, group_id[, group_inputs]}``) gives; ``group_inputs`` (the
    inputs in its shard group, default 1) and ``input_clips`` tell the publisher when a group is whole."""
    row: dict[str, Any] = {k: 0.0 for k in ROW_KEYS if k.startswith(("t_", "rss_"))}
    row.update(uri=item["uri"], input_id=item["input_id"], group_id=item["group_id"],
               group_inputs=int(item.get("group_inputs", 1)), input_clips=input_clips, clip_index=clip_index,
               status="ok", reason="", message="", n_frames=0, bytes_in=int(item.get("bytes_in", 0)), budget_s=0.0,
               payload=b"")
    return row


def spent_s(row: dict[str, Any]) -> float:
    """Seconds the clip's stages have taken so far (its share of decoding included)."""
    return float(sum(row[f"t_{s}"] for s in STAGES))


def reject(row: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    """Mark a row rejected (keeps identifiers, drops the payload)."""
    log.warning("rejected %s clip %s: %s (%s)", row["uri"], row["clip_index"], reason, message)
    row.update(status="rejected", reason=reason, message=message[:500], payload=b"")
    return row


def pack(data: dict[str, Any]) -> bytes:
    return pickle.dumps(data, protocol=5)


def unpack(row: dict[str, Any]) -> dict[str, Any]:
    return pickle.loads(row["payload"])


class _Stage:
    """Runs ``process`` on ok rows, times it, converts exceptions into rejected rows, and rejects
    a clip as ``timeout`` when its budget (``row["budget_s"]``) is used up before the stage starts.
    A stage that can take unbounded time stops itself at ``time_left()`` (``EstimatePoses``); the
    others are bounded by the clip's size, and work they finished is kept."""

    name = "stage"
    reason = "error"

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.deadline: float | None = None  # perf_counter() time at which the clip's budget runs out
        limit_threads(config)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] != "ok":
            return row
        t0 = time.perf_counter()
        budget = float(row["budget_s"])
        self.deadline = t0 + budget - spent_s(row) if budget > 0 else None
        try:
            if self.deadline is not None and self.deadline <= t0:
                raise TimeLimitExceeded(f"no time left for the {self.name} stage after {spent_s(row):.0f} s")
            data = unpack(row)
            self.process(data, row)
            row["payload"] = pack(data)
        except Exception as exc:  # noqa: BLE001 - any failure of one clip is recorded, not raised
            reason = reason_code(exc, self.reason)
            log.debug("%s failed on %s:\n%s", self.name, row["uri"], traceback.format_exc())
            return reject(row, reason, f"{type(exc).__name__}: {exc}{_budget_note(row, reason)}")
        finally:
            row[f"t_{self.name}"] = time.perf_counter() - t0
            row[f"rss_{self.name}"] = peak_rss_mib()
        return row

    def time_left(self) -> float | None:
        """Seconds left of the clip's budget (None: no budget)."""
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def process(self, data: dict[str, Any], row: dict[str, Any]) -> None:
        raise NotImplementedError


class _BatchStage:
    """A model stage over a batch of clip rows (``map_batches`` on an actor pool): ``process`` gets
    the payloads of the batch's ok rows together -- one model call for several clips -- and returns
    per clip None or the exception that rejects it (any other exception rejects the whole batch's
    clips). Each clip is charged an equal share of the batch's seconds."""

    name = "stage"
    reason = "error"

    def __init__(self, config: PreprocessConfig):
        self.config = config
        limit_threads(config)

    def model_files(self, path: str) -> str:
        """A model directory (local or ``s3://``) as a local path: downloaded once per node."""
        return storage.local_copy(path, self.config.storage.options())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        t0 = time.perf_counter()
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        todo = [(row, unpack(row)) for row in rows if row["status"] == "ok"]
        try:
            errors = self.process([data for _, data in todo], [row for row, _ in todo])
        except Exception as exc:  # noqa: BLE001 - the batch's clips are rejected, the run goes on
            log.debug("%s failed on a batch:\n%s", self.name, traceback.format_exc())
            errors = [exc] * len(todo)
        seconds = (time.perf_counter() - t0) / max(1, len(todo))
        for (row, data), error in zip(todo, errors):
            if error is None:
                row["payload"] = pack(data)
            else:
                reject(row, reason_code(error, self.reason), f"{type(error).__name__}: {error}")
            row[f"t_{self.name}"] += seconds  # a second stage of the same name (masks) adds to the first
            row[f"rss_{self.name}"] = max(row[f"rss_{self.name}"], peak_rss_mib())
        return {k: [row[k] for row in rows] for k in ROW_KEYS}

    def process(self, datas: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[BaseException | None]:
        raise NotImplementedError


def model_device(num_gpus: float, what: str) -> torch.device:
    """The GPU when the stage asked for one and the worker sees it; else the CPU (with a warning
    when a GPU was asked for)."""
    gpu = num_gpus > 0 and torch.cuda.is_available()
    if num_gpus > 0 and not gpu:
        log.warning("%s asks for %s GPU but this worker sees none: running on the CPU (slow)", what, num_gpus)
    return torch.device("cuda" if gpu else "cpu")


def _budget_note(row: dict[str, Any], reason: str) -> str:
    if reason != "timeout":
        return ""
    return f" (budget {float(row['budget_s']):.0f} s for {int(row['n_frames'])} frames; budget.* in the config)"


def decode_uri(uri: str, options: StorageOptions | None = None, *, fps: float | None = None,
               max_frames: int | None = None, upsample: bool = True) -> DecodedVideo:
    """``mirage_model.io.video.decode`` for a local path or an ``s3://`` URI.

    Local files are decoded in place; an S3 object is streamed through an fsspec file with a 4 MiB
    readahead cache (PyAV seeks in it). A missing object is ``VideoError("not_found")``; errors
    and ``VideoInfo.uri`` name the URI.
    """
    uri = str(uri)
    if not storage.is_s3(uri):
        return decode(uri, fps=fps, max_frames=max_frames, upsample=upsample)
    fs, path = storage.filesystem(uri, options)
    try:
        f = fs.open(path, "rb", block_size=4 << 20, cache_type="readahead")
    except FileNotFoundError:
        raise VideoError("not_found", "no such file", uri) from None
    with f:
        return decode(f, fps=fps, max_frames=max_frames, name=uri, upsample=upsample)


class DecodeClips:
    """Input row -> one row per clip: decode with PyAV at the clip fps, plan clips, resize + crop."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.options = config.storage.options()
        limit_threads(config)

    def __call__(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cfg = self.config.clip
        t0 = time.perf_counter()
        try:
            item = {**item, "bytes_in": storage.size(item["uri"], self.options)}
        except OSError:
            pass  # the decode below names the problem
        base = new_row(item)
        try:
            video = self._decode_with_retries(item["uri"])
            plan = plan_fit(video.frames.shape[1:3], cfg.size_multiple, cfg.target_size)
            if min(plan.out_size) < cfg.min_side:
                raise InputError("too_small", f"{video.info.width}x{video.info.height} video: the clip would be "
                                 f"{plan.out_size[1]}x{plan.out_size[0]}, below clip.min_side={cfg.min_side}")
            camera_K = None
            if self.config.poses.method == "file":
                camera_K, camera_c2w = self._camera_file(item["uri"], video, plan)
            shots = self._shots(video)
            caption = find_caption(item, self.config, self.options)
        except Exception as exc:  # noqa: BLE001
            base["t_decode"], base["rss_decode"] = time.perf_counter() - t0, peak_rss_mib()
            yield reject(base, reason_code(exc, "decode_failed"), f"{type(exc).__name__}: {exc}")
            return
        # Clips are planned inside each shot (never across a cut); a shot too short for any clip
        # is a rejected row of its own, so every part of every input is in the manifest.
        planned: list[tuple[int, tuple[int, int], tuple[int, int] | None, str]] = []
        for s, (a, b) in enumerate(shots):
            try:
                spans = plan_clips(b - a, cfg.frames, stride=cfg.stride, min_frames=cfg.min_frames)
                planned += [(s, (a, b), (a + x, a + y), "") for x, y in spans]
            except VideoError as exc:
                planned.append((s, (a, b), None, f"shot {s} (frames {a}-{b - 1}): {exc.args[0] if exc.args else exc}"))
        if not shots:
            planned.append((0, (0, len(video)), None, "no shot: every frame is black"))
        ok = [i for i, p in enumerate(planned) if p[2] is not None]
        if cfg.max_clips is not None and len(ok) > cfg.max_clips:
            keep = {ok[i] for i in np.unique(np.round(np.linspace(0, len(ok) - 1, cfg.max_clips)).astype(int))}
            planned = [p for i, p in enumerate(planned) if p[2] is None or i in keep]
        elapsed = (time.perf_counter() - t0) / len(planned)
        for i, (shot, shot_span, span, why) in enumerate(planned):
            row = new_row(item, i, input_clips=len(planned))
            row["t_decode"], row["rss_decode"] = elapsed, peak_rss_mib()
            if span is None:
                yield reject(row, "too_short", why)
                continue
            start, end = span
            row["budget_s"] = clip_budget_s(self.config.budget, end - start, plan.out_size) or 0.0
            data = {"frames": apply_fit(video.frames[start:end], plan), "fps": video.fps, "caption": caption,
                    "frame_indices": np.arange(start, end),
                    "source_frame_indices": np.asarray(video.source_indices[start:end]),
                    "stats": {"source_fps": video.info.fps, "fps": video.fps, "rotation": video.info.rotation,
                              "sample_aspect_ratio": video.info.sample_aspect_ratio,
                              "shot": shot, "shots": len(shots), "shot_frames": list(shot_span),
                              "source_size": [video.info.height, video.info.width], "clip_size": list(plan.out_size),
                              "sample_layout": _default_layout(end - start)}}
            if camera_K is not None:
                data["K"], data["c2w"] = camera_K[start:end], camera_c2w[start:end]
            row.update(n_frames=end - start, payload=pack(data))
            yield row

    def _shots(self, video) -> list[tuple[int, int]]:
        if not self.config.shots.enabled:
            return [(0, len(video))]
        from .shots import detect_shots

        return detect_shots(video.frames, video.fps, self.config.shots)

    def _decode_with_retries(self, uri: str, attempts: int = 3):
        """Decode, retrying transient I/O errors (OSError: network, S3 throttling) with backoff."""
        for attempt in range(attempts):
            try:
                return decode_uri(uri, self.options, fps=self.config.clip.fps, upsample=False)
            except OSError as exc:
                if attempt == attempts - 1:
                    raise VideoError("io_error", f"{type(exc).__name__}: {exc}", uri) from exc
                log.warning("I/O error reading %s (attempt %d/%d): %s", uri, attempt + 1, attempts, exc)
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _camera_file(self, uri: str, video, plan):
        """Cameras a user already has, next to the video: ``<stem><camera_suffix>``."""
        stem = uri.rsplit(".", 1)[0]
        path = stem + self.config.poses.camera_suffix
        if not storage.exists(path, self.options):
            raise InputError("no_cameras", f"{uri}: poses.method=file but {path} does not exist")
        size = (video.info.height, video.info.width)
        if storage.is_s3(path):  # camera files are small: read them through a local copy
            import tempfile

            with tempfile.TemporaryDirectory(prefix="mirage-cams-") as tmp:
                local = Path(tmp) / storage.basename(path)
                local.write_bytes(storage.read_bytes(path, self.options))
                traj = _read_cameras(local, size, path)
        else:
            traj = _read_cameras(storage.local_path(path), size, path)
        idx = np.asarray(video.source_indices)
        if idx.max() >= len(traj):
            raise InputError("bad_cameras", f"{path} has {len(traj)} cameras, the video {idx.max() + 1}+ frames")
        K = np.asarray(fit_intrinsics(traj.K[idx], plan), dtype=np.float64)
        return K, traj.c2w[idx].numpy()


def _default_layout(n_frames: int) -> str:
    """The training-sample layout a clip of ``n_frames`` gets with the default SampleConfig
    (``T9_P2`` for 81 frames; shorter clips get shorter layouts; ``none``: too short to train on)."""
    from mirage_model.training.samples import SampleConfig, fit_to_clip, layout_name

    fitted = fit_to_clip(SampleConfig(), (n_frames - 1) // 4 + 1)
    return layout_name(fitted) if fitted is not None else "none"


def _read_cameras(local, size: tuple[int, int], uri: str):
    from mirage_model.geometry.formats import load_trajectory

    try:
        return load_trajectory(local, image_size=size)
    except (ValueError, OSError) as exc:
        raise InputError("bad_cameras", f"{uri}: {exc}") from exc


UNDISTORT_ABOVE = 1e-3
"""Radial distortion (|k|) SfM estimated above which the frames are undistorted to the pinhole K."""


NATIVE_CANNOT_HELP = frozenset({"static", "textureless", "too_few_matches"})
"""Failures that SfM at the clip's own size cannot turn around (a static camera stays static; the
motion check measures static in pixels of the clip): no native-size retry for them."""
SPAN_PROBLEMS = frozenset({"registration_gap", "path_jump"})
"""Gate failures that concern a stretch of the clip, not its camera: the clip is trimmed, not retried."""


class EstimatePoses(_Stage):
    """Per-frame K and c2w by pycolmap SfM (weight-free default), or the cameras read from a file.

    SfM runs at ``poses.max_side`` first. When that fails -- SfM raises, or its model fails a
    quality gate about the camera (``pose_quality``) -- and the clip is larger, it runs once more
    at the clip's own size (parallax below a pixel when downscaled can be several at full size),
    unless the failure is one the size cannot change (``NATIVE_CANNOT_HELP``). A model whose only
    problem is a bad stretch (a gap, a jump) is trimmed to its longest good span and mapped again.
    Each SfM call runs within the clip's remaining budget (``pipeline.budget``)."""

    name = "poses"
    reason = "sfm_failed"

    def process(self, data, row) -> None:
        if "c2w" in data:  # cameras came from a file
            data["stats"].update(pose_source="file", depth_units="as the camera file (metric only if the file is)")
            return
        result, side, quality = self._posed(data["frames"])
        data["stats"]["pose_quality"] = quality.to_dict()
        if not quality.ok:
            start, end = quality.good_span
            n = _four_n_plus_one(end - start)
            reason, message = quality.problems[0]
            if n < self.config.clip.min_frames:
                raise InputError(reason, f"{message}; the longest good span, frames {start}-{end - 1}, is "
                                 f"shorter than clip.min_frames={self.config.clip.min_frames}")
            log.info("%s clip %s: %s; trimmed to frames %d-%d", row["uri"], row["clip_index"], message,
                     start, start + n - 1)
            _trim(data, start, start + n)
            row["n_frames"] = n
            data["stats"]["trimmed"] = {"span": [start, start + n], "reason": reason, "message": message}
            data["stats"]["sample_layout"] = _default_layout(n)
            # the kept frames alone, at the size that worked: their own, cleaner model
            result = self._sfm(data["frames"], max_side=side)
            quality = self._assess(result)
            data["stats"]["pose_quality"] = quality.to_dict()
            if not quality.ok:
                raise InputError(*quality.problems[0])
        data["c2w"], data["K"] = result.c2w.numpy(), result.K.numpy()
        data["sparse_points"] = result.points3d.numpy()
        if result.distortion and max(abs(d) for d in result.distortion) > UNDISTORT_ABOVE:
            from mirage_model.perception.poses import undistort_frames, undistorted_valid

            data["frames"] = undistort_frames(data["frames"], result.K, result.distortion)
            # the black border pulled in from outside the source: no depth, never stored in memory
            data["image_valid"] = undistorted_valid(data["frames"].shape[1:3], result.K, result.distortion)
            data["stats"]["undistorted"] = [float(d) for d in result.distortion]
            data["stats"]["undistorted_valid_fraction"] = float(data["image_valid"].mean())
        data["stats"].update(pose_source="sfm", depth_units=f"SfM, not metric: {result.scale_rule}",
                             registered_fraction=float(result.registered.float().mean()),
                             interpolated_frames=int(result.interpolated.sum()),
                             reprojection_error_px=float(result.reprojection_error), sfm_scale_rule=result.scale_rule,
                             focal_px=float(result.K[0, 0, 0]), sfm_max_side=side, sfm_keyframes=result.keyframes)
        if result.motion:
            data["stats"]["motion_check"] = {k: result.motion[k] for k in
                                             ("verdict", "max_displacement_px", "min_homography_ratio")}
        if result.attempts:
            data["stats"]["sfm_attempts"] = result.attempts

    def _thresholds(self):
        from mirage_model.perception.pose_quality import PoseThresholds

        two_focal = self.config.poses.camera_model in ("OPENCV", "PINHOLE")  # fx != fy is what they are for
        return PoseThresholds(max_reprojection_px=self.config.poses.max_reprojection_px,
                              max_aspect_error=0.5 if two_focal else 0.1)

    def _assess(self, result):
        from mirage_model.perception.pose_quality import assess_poses

        return assess_poses(result, self._thresholds())

    def _posed(self, frames: np.ndarray):
        """(PoseResult, the longer side SfM ran at, its PoseQuality): at ``poses.max_side``, then
        at the clip's own size when that failed in a way the size can change (class docstring).
        A result whose gates fail only on a stretch (``SPAN_PROBLEMS``) is returned for trimming."""
        from mirage_model.perception import PoseEstimationError

        cfg = self.config.poses
        native = max(frames.shape[1:3])
        working = min(native, cfg.max_side or native)
        try:
            result = self._sfm(frames, max_side=working)
            quality = self._assess(result)
            if quality.ok or {r for r, _ in quality.problems} <= SPAN_PROBLEMS:
                return result, working, quality
            failure: Exception = InputError(*quality.problems[0])
        except PoseEstimationError as exc:
            failure = exc
        reason = reason_code(failure, self.reason)
        if not cfg.retry_native or native <= working or reason in NATIVE_CANNOT_HELP:
            raise failure
        log.info("SfM at max_side=%d failed (%s: %s); trying the native %dx%d", working, reason, failure,
                 frames.shape[2], frames.shape[1])
        try:
            result = self._sfm(frames, max_side=None)
        except PoseEstimationError as exc:
            exc.args = (f"{exc} (at max_side={working}: {reason}: {failure})",)
            raise
        quality = self._assess(result)
        if quality.ok or {r for r, _ in quality.problems} <= SPAN_PROBLEMS:
            return result, native, quality
        raise InputError(quality.problems[0][0], f"{quality.problems[0][1]} (at max_side={working}: {reason}: {failure})")

    def _sfm(self, frames: np.ndarray, max_side: int | None):
        """``estimate_poses`` with the configured options, within the clip's remaining budget. Its
        work folder belongs to this process, so a child stopped at the limit leaves nothing behind."""
        import tempfile

        from mirage_model.perception import estimate_poses

        cfg = self.config.poses
        size = "native size" if max_side is None or max_side >= max(frames.shape[1:3]) else f"max_side={max_side}"
        with tempfile.TemporaryDirectory(prefix="mirage-sfm-") as work:
            return call_with_time_limit(
                estimate_poses, frames, time_limit_s=self.time_left(), what=f"SfM at {size}", workdir=work,
                max_side=max_side, matcher=cfg.matcher, min_registered=cfg.min_registered,
                camera_model=cfg.camera_model, attempts=cfg.attempts, keyframes=cfg.keyframes,
                check_motion=cfg.check_motion, feature_extractor=cfg.features,
                num_threads=max(1, int(self.config.resources.num_cpus)))


def _four_n_plus_one(n: int) -> int:
    return 0 if n < 1 else (n - 1) // 4 * 4 + 1


def _trim(data: dict[str, Any], start: int, end: int) -> None:
    """Keep frames ``[start, end)`` of a clip's per-frame arrays (before depth: frames and indices)."""
    for key in ("frames", "frame_indices", "source_frame_indices", "K", "c2w"):
        if key in data:
            data[key] = data[key][start:end]


def _small(data: dict[str, Any], scale: float) -> tuple[np.ndarray, torch.Tensor]:
    """Frames and intrinsics at ``scale`` of the clip size (what stereo and flow run on)."""
    import cv2

    from mirage_model.geometry.camera import scale_intrinsics

    frames = data["frames"]
    H, W = frames.shape[1:3]
    h, w = max(8, round(H * scale)), max(8, round(W * scale))
    if (h, w) == (H, W):
        return frames, torch.as_tensor(data["K"])
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    return small, scale_intrinsics(torch.as_tensor(data["K"]), (H, W), (h, w))


class EstimateDepth(_Stage):
    """Depth for every ``depth.every``-th frame (the latent-frame cameras) by plane-sweep stereo at
    the known poses (``depth.method: plane_sweep``), then ``finish_depth``."""

    name = "depth"
    reason = "depth_failed"

    def process(self, data, row) -> None:
        idx, frames, K, c2w = depth_inputs(data, self.config)
        finish_depth(data, self.config, idx, frames, stereo_depth(data, self.config, idx, frames, K, c2w))


def depth_inputs(data: dict[str, Any], config: PreprocessConfig):
    """(depth frame indices, the clip's frames and K at ``depth.scale``, c2w)."""
    T = data["frames"].shape[0]
    frames, K = _small(data, config.depth.scale)
    return list(range(0, T, config.depth.every)), frames, K, torch.as_tensor(data["c2w"])


def stereo_depth(data: dict[str, Any], config: PreprocessConfig, idx, frames, K, c2w):
    """Plane-sweep depth of the frames ``idx``. The sweep's (near, far) comes from the SfM sparse
    points seen by each frame (2nd / 98th percentile, widened 0.6x / 1.6x); only without points (a
    camera file) from the baselines."""
    from mirage_model.perception import estimate_depth_video

    points = data.get("sparse_points")
    points = torch.as_tensor(points) if points is not None and len(points) else None
    return estimate_depth_video(frames, K, c2w, indices=idx, params=config.depth.stereo, points=points)


def finish_depth(data: dict[str, Any], config: PreprocessConfig, idx, frames, results) -> None:
    """Store the depth of frames ``idx`` (``DepthResult`` each): invalid outside undistorted frames,
    a clip with under 5 % valid pixels rejected, completed (``depth.complete``) and its stats."""
    cfg = config.depth
    depth = np.stack([r.depth.numpy() for r in results])
    valid = np.stack([r.valid.numpy() for r in results])
    inside = None
    if "image_valid" in data:  # undistorted frames: their black border has no depth
        import cv2

        inside = cv2.resize(data["image_valid"].astype(np.uint8), (depth.shape[2], depth.shape[1]),
                            interpolation=cv2.INTER_NEAREST).astype(bool)
        valid &= inside
    if not np.isfinite(depth).all():
        raise ValueError("depth has non-finite values")
    if valid.mean() < 0.05:
        raise ValueError(f"depth is valid on only {100 * valid.mean():.1f}% of pixels")
    data["stats"]["depth_coverage_measured"] = float(valid.mean())
    if cfg.complete:
        from mirage_model.perception.completion import complete_depth_video

        depth, valid, conf, sky = complete_depth_video(frames[idx], depth, valid,
                                                       outside=None if inside is None else ~inside)
        data["depth_confidence"], data["sky"] = conf, sky
        data["stats"]["sky_fraction"] = float(sky.mean())
    data.update(depth_frames=np.asarray(idx), depth=depth, depth_valid=valid)
    data["stats"]["depth_coverage"] = float(valid.mean())
    ranges = [r.depth_range for r in results if r.depth_range is not None]
    if ranges:
        data["stats"]["depth_range"] = [float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))]


class DepthFitError(ValueError):
    """A learned depth that does not agree with the clip's geometry (manifest code ``depth_fit``)."""

    reason = "depth_fit"


class LearnedDepth(_BatchStage):
    """``depth.method: model``: a transformers depth model (Depth Anything V2, DPT), loaded once per
    actor (on a GPU with ``depth.num_gpus`` > 0), predicts the depth frames of a batch of clips,
    ``depth.batch_size`` frames per call across clips. Each frame's relative inverse depth is fitted
    to the clip's metric scale robustly (``fit_depth_alignment``): to the SfM points that project
    into it, or without them (cameras from a file) to the plane-sweep depth. The fit's median
    residual and share explained are the clip's ``depth_fit_residual`` / ``depth_fit_explained``;
    past ``depth.max_fit_residual`` or ``depth.min_fit_explained`` the clip is rejected
    (``depth_fit``). Then ``finish_depth`` as for stereo (completion, sky, confidence)."""

    name = "depth"
    reason = "depth_failed"

    def __init__(self, config: PreprocessConfig):
        from mirage_model.perception.depth import depth_output, load_depth_model

        super().__init__(config)
        cfg = config.depth
        self.device = model_device(cfg.num_gpus, "depth")
        self.model, self.processor = load_depth_model(self.model_files(cfg.model_dir))
        self.model.to(self.device)
        self.inverse = depth_output(self.model) == "disparity"

    def process(self, datas, rows) -> list[BaseException | None]:
        from mirage_model.perception.depth import predict_depth, to_uint8_rgb

        inputs = [depth_inputs(data, self.config) for data in datas]
        images = [[to_uint8_rgb(f) for f in frames[idx]] for idx, frames, _, _ in inputs]
        preds = self._predict(images, predict_depth)
        errors: list[BaseException | None] = []
        for data, (idx, frames, K, c2w), pred in zip(datas, inputs, preds):
            try:
                self._align_and_finish(data, idx, frames, K, c2w, pred)
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - one clip's failure is its own
                errors.append(exc)
        return errors

    def _predict(self, images: list[list[np.ndarray]], predict_depth) -> list[torch.Tensor]:
        """Predictions per clip, batching the frames of all clips of one size together."""
        flat = [(c, img) for c, imgs in enumerate(images) for img in imgs]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for k, (_, img) in enumerate(flat):
            by_size.setdefault(img.shape, []).append(k)
        out: list[torch.Tensor | None] = [None] * len(flat)
        for ks in by_size.values():
            pred = predict_depth(self.model, self.processor, [flat[k][1] for k in ks], self.config.depth.batch_size)
            for k, p in zip(ks, pred):
                out[k] = p
        return [torch.stack([out[k] for k, (c, _) in enumerate(flat) if c == clip]) for clip in range(len(images))]

    def _align_and_finish(self, data, idx, frames, K, c2w, pred) -> None:
        from mirage_model.perception.depth import align_predictions, sparse_depth_samples

        cfg = self.config.depth
        points = data.get("sparse_points")
        if points is not None and len(points):
            targets, source = sparse_depth_samples(points, K[idx] if K.ndim == 3 else K, c2w[idx],
                                                   tuple(pred.shape[1:])), "sfm_points"
        else:
            stereo = stereo_depth(data, self.config, idx, frames, K, c2w)
            targets, source = torch.stack([torch.where(r.valid, r.depth, 0.0) for r in stereo]), "stereo"
        results = align_predictions(pred, targets, inverse=self.inverse)
        residual = float(np.median([r.fit.residual for r in results]))
        explained = float(np.median([r.fit.explained for r in results]))
        data["stats"].update(depth_source="model", depth_fit_to=source, depth_fit_residual=residual,
                             depth_fit_explained=explained,
                             depth_fit_inliers=float(np.mean([r.fit.inliers for r in results])))
        to = source.replace("_", " ")
        if cfg.max_fit_residual is not None and residual > cfg.max_fit_residual:
            raise DepthFitError(f"the depth model's fit to the {to} leaves a median relative residual of "
                                f"{residual:.3f} (> depth.max_fit_residual={cfg.max_fit_residual})")
        if cfg.min_fit_explained is not None and explained < cfg.min_fit_explained:
            raise DepthFitError(f"the depth model's fit to the {to} explains {explained:.2f} of their depth "
                                f"(< depth.min_fit_explained={cfg.min_fit_explained})")
        finish_depth(data, self.config, idx, frames, results)


class EstimateMasks(_Stage):
    """Static mask (not moving, not sky, valid depth) for the depth frames: flow vs rigid flow."""

    name = "masks"
    reason = "masks_failed"

    def process(self, data, row) -> None:
        from mirage_model.perception.masks import clip_masks

        static, moving = clip_masks(data["frames"], data["depth_frames"], data["depth"], data["depth_valid"],
                                    torch.as_tensor(data["K"]), torch.as_tensor(data["c2w"]),
                                    method=self.config.masks.method, model_dir=self.config.masks.model_dir,
                                    params=self.config.masks.flow)
        data["static"], data["moving"] = static.numpy(), moving.numpy()
        data["stats"]["moving_fraction"] = float(moving.float().mean())


class PropagateMasks(_BatchStage):
    """``masks.video_model_dir``: a SAM2 video model, loaded once per actor (on a GPU with
    ``masks.num_gpus``), follows the moving objects through each clip. The flow test's moving mask
    on the depth frame where it is largest seeds the objects (its connected components of at least
    ``masks.min_object_area``); the model propagates them forwards and backwards over every frame
    of the clip, and where it finds them on the depth frames is added to the moving masks (and
    removed from the static ones): an object that stops, or moves along the epipolar lines, stays
    masked where flow alone loses it."""

    name = "masks"
    reason = "masks_failed"

    def __init__(self, config: PreprocessConfig):
        from transformers import Sam2VideoModel

        super().__init__(config)
        cfg = config.masks
        self.device = model_device(cfg.num_gpus, "masks")
        local = self.model_files(cfg.video_model_dir)
        self.model = Sam2VideoModel.from_pretrained(local, local_files_only=True).to(self.device).eval()

    def process(self, datas, rows) -> list[BaseException | None]:
        from mirage_model.perception.masks import propagate_objects, seed_objects

        errors: list[BaseException | None] = []
        for data in datas:
            try:
                moving = torch.from_numpy(data["moving"])
                seed = int(moving.flatten(1).sum(1).argmax())
                objects = seed_objects(moving[seed], self.config.masks.min_object_area)
                found = propagate_objects(self.model, data["frames"], int(data["depth_frames"][seed]), objects,
                                          [int(f) for f in data["depth_frames"]])
                data["moving"] = (moving | found).numpy()
                data["static"] = data["static"] & ~found.numpy()
                data["stats"].update(moving_fraction_flow=data["stats"]["moving_fraction"],
                                     moving_fraction=float(data["moving"].mean()), propagated_objects=len(objects))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - one clip's failure is its own
                errors.append(exc)
        return errors


class EncodeLatents(_Stage):
    """Wan2.2 VAE latents of the clip (optional): the VAE is loaded once per actor."""

    name = "latents"
    reason = "vae_failed"

    def __init__(self, config: PreprocessConfig):
        super().__init__(config)
        from mirage_model.vae import load_vae

        self.device = model_device(config.resources.num_gpus, "latents (resources.num_gpus)")
        self.vae = load_vae(config.latents.vae, device=self.device) if config.latents.vae else None

    def process(self, data, row) -> None:
        if self.vae is None:
            return
        from mirage_model.vae import encode_video

        video = torch.from_numpy(data["frames"]).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
        data["latents"] = encode_video(self.vae, video.to(self.device))[0].half().cpu().numpy()


class CaptionClips(_BatchStage):
    """``captions.method: model``: clips that got no caption from the manifest or a sidecar file are
    captioned by a transformers image-text-to-text model (Qwen2.5-VL, Qwen3-VL, LLaVA, ...), loaded
    once per actor (on a GPU with ``captions.num_gpus``): ``captions.frames`` evenly spaced frames and
    the instruction ``captions.prompt`` in the model's chat template, ``captions.batch_size`` clips
    per greedy ``generate`` call. The caption's source is ``model`` and the model is recorded."""

    name = "caption"
    reason = "caption_failed"

    def __init__(self, config: PreprocessConfig):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        super().__init__(config)
        cfg = config.captions
        self.device = model_device(cfg.num_gpus, "captions")
        dtype = getattr(torch, cfg.dtype or ("bfloat16" if self.device.type == "cuda" else "float32"))
        local = self.model_files(cfg.model_dir)
        self.processor = AutoProcessor.from_pretrained(local, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # generation continues every prompt at its end
        self.model = AutoModelForImageTextToText.from_pretrained(local, dtype=dtype, local_files_only=True)
        self.model.to(self.device).eval()

    def process(self, datas, rows) -> list[BaseException | None]:
        from PIL import Image

        cfg = self.config.captions
        todo = [d for d in datas if not d.get("caption", {}).get("text")]
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            picks = [np.unique(np.linspace(0, len(d["frames"]) - 1, cfg.frames).round().astype(int)) for d in batch]
            images = [[Image.fromarray(d["frames"][i]) for i in p] for d, p in zip(batch, picks)]
            texts = [self.processor.apply_chat_template(
                [{"role": "user", "content": [*({"type": "image"} for _ in imgs), {"type": "text", "text": cfg.prompt}]}],
                add_generation_prompt=True) for imgs in images]
            inputs = self.processor(text=texts, images=[img for imgs in images for img in imgs], return_tensors="pt",
                                    padding=True).to(self.device)
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, do_sample=False)
            captions = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for d, caption in zip(batch, captions):
                d["caption"] = {"text": " ".join(caption.split()), "source": "model", "model": cfg.model_dir}
        return [None] * len(datas)


class EncodeText(_BatchStage):
    """Clip rows in batches -> each ok clip's payload gains ``text`` (the caption's and the empty
    prompt's encoder states, without padding) and ``text_meta`` (encoder identity, prompt tokens,
    dtype). The encoder (``text_embeddings.model``) is loaded once per actor, on a GPU when
    ``text_embeddings.num_gpus`` > 0; a batch's distinct captions go through it in one call. A clip
    whose caption fails to encode is rejected (``text_failed``) alone."""

    name = "text"
    reason = "text_failed"

    def __init__(self, config: PreprocessConfig):
        from mirage_model.model.text import build_text_stack, load_text_stack

        super().__init__(config)
        cfg = config.text_embeddings
        if cfg.model is None:
            raise ValueError("EncodeText needs text_embeddings.model")
        self.device = model_device(cfg.num_gpus, "text_embeddings")
        dtype = getattr(torch, cfg.dtype or ("bfloat16" if self.device.type == "cuda" else "float32"))
        if cfg.model in TEXT_PRESETS:
            self.tokenizer, encoder = build_text_stack(cfg.model, seed=cfg.seed)
        else:
            self.tokenizer, encoder = load_text_stack(self.model_files(cfg.model), dtype=dtype)
        self.encoder = encoder.to(device=self.device, dtype=dtype)
        self.max_length = cfg.tokens()
        self.meta = {"encoder": text_stack_id_at(cfg.model, cfg.seed, config.storage.options()), "model": cfg.model,
                     "tokens": self.max_length, "dtype": str(dtype).removeprefix("torch.")}
        self.empty = self._states([""])[0]
        log.info("text encoder %s (%s) on %s, %d tokens", cfg.model, self.meta["encoder"], self.device,
                 self.max_length)

    def _states(self, captions: list[str]) -> list[torch.Tensor]:
        from mirage_model.model.text import encode_prompt_states

        return [s.to(self.encoder.dtype) for s in encode_prompt_states(self.tokenizer, self.encoder, captions,
                                                                       self.max_length)]

    def process(self, datas, rows) -> list[BaseException | None]:
        captions = [data.get("caption", {}).get("text", "") for data in datas]
        distinct = list(dict.fromkeys(captions))
        try:
            states: dict[str, Any] = dict(zip(distinct, self._states(distinct)))
        except Exception:  # noqa: BLE001 - find the caption that fails, encode the others
            states = {}
            for caption in distinct:
                try:
                    states[caption] = self._states([caption])[0]
                except Exception as exc:  # noqa: BLE001
                    states[caption] = exc
        errors: list[BaseException | None] = []
        for data, caption in zip(datas, captions):
            got = states[caption]
            if isinstance(got, BaseException):
                errors.append(got)
                continue
            data["text"], data["text_meta"] = {"caption": got, "empty": self.empty}, self.meta
            errors.append(None)
        return errors


class EncodeSample(_Stage):
    """The clip's arrays -> its shard members (``sample_format.encode_sample``: the frames as an
    mp4, compressed depth and masks, cameras, latents). It runs as a task on a worker's CPU, so the
    single publisher only writes bytes, and the object store carries the compressed sample to it
    rather than the raw frames."""

    name = "encode"
    reason = "encode_failed"

    def process(self, data, row) -> None:
        key = sample_key(str(row["input_id"]), int(row["clip_index"]))
        caption = data.get("caption") or {"text": "", "source": ""}
        T = data["frames"].shape[0]
        K = np.broadcast_to(data["K"], (T, 3, 3)) if np.ndim(data["K"]) == 2 else data["K"]
        aux = self.config.aux_size or (data["frames"].shape[1] // 4, data["frames"].shape[2] // 4)
        clip = ClipSample(
            frames=data["frames"], c2w=data["c2w"], K=K, depth=data["depth"], static=data["static"], fps=data["fps"],
            source_uri=str(row["uri"]), frame_indices=data["frame_indices"].tolist(),
            depth_frames=data["depth_frames"].tolist(), depth_confidence=data.get("depth_confidence"),
            latents=data.get("latents"), stats=data["stats"], text=data.get("text"),
            extra_meta={"source_frame_indices": data["source_frame_indices"].tolist(),
                        "caption": caption["text"], "caption_source": caption["source"],
                        **({"caption_model": caption["model"]} if caption.get("model") else {}),
                        **({"text": data["text_meta"]} if "text_meta" in data else {})})
        sample = encode_sample(key, clip, aux_size=tuple(aux))
        stats = data["stats"]
        data.clear()
        data.update(sample=sample, stats=stats, caption=caption)


class PublishGroups:
    """All rows of one shard group (encoded by ``EncodeSample``) -> ``shard-<group>.tar`` + its
    sidecar (see ``shards``); one output row (``PUBLISHED_KEYS``) saying what was published."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.options = config.storage.options()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, list]:
        n = len(rows["uri"])
        group_id = str(rows["group_id"][0])
        by_input: dict[str, list[int]] = {}
        for i in range(n):
            by_input.setdefault(str(rows["input_id"][i]), []).append(i)
        samples, records, uncaptioned = [], [], 0
        for input_id in sorted(by_input):
            idx = sorted(by_input[input_id], key=lambda i: int(rows["clip_index"][i]))
            ok = [i for i in idx if rows["status"][i] == "ok"]
            keys, stats, captions = [], {}, {}
            for i in ok:
                data = pickle.loads(rows["payload"][i])  # EncodeSample's output: shard members, stats, caption
                key = data["sample"]["__key__"]
                samples.append(data["sample"])
                keys.append(key)
                stats[key] = data["stats"]
                captions[i] = {"caption": data["caption"]["text"], "caption_source": data["caption"]["source"],
                               **({"caption_model": data["caption"]["model"]} if data["caption"].get("model") else {})}
                uncaptioned += not data["caption"]["text"]
            first_bad = next((i for i in idx if rows["status"][i] != "ok"), None)
            status = "ok" if ok else "rejected"
            reason = "" if ok else str(rows["reason"][first_bad])
            message = "" if ok else str(rows["message"][first_bad])
            clips = [{"clip": int(rows["clip_index"][i]), "status": str(rows["status"][i]),
                      "reason": str(rows["reason"][i]) or None, "message": str(rows["message"][i]),
                      "frames": int(rows["n_frames"][i]),
                      "key": sample_key(input_id, int(rows["clip_index"][i])) if rows["status"][i] == "ok" else None,
                      "seconds": {st: round(float(rows[f"t_{st}"][i]), 3) for st in STAGES if rows[f"t_{st}"][i]},
                      "budget_s": round(float(rows["budget_s"][i]), 1), **captions.get(i, {})}
                     for i in idx]
            records.append(InputRecord(input_id=input_id, uri=str(rows["uri"][idx[0]]), status=status,
                                       reason=reason, message=message, sample_keys=keys, stats=stats,
                                       clips=clips))
        result = publish_group(self.config.output, group_id, samples, records, self.options)
        timings = {k: [float(np.sum(rows[k]))] for k in ROW_KEYS if k.startswith("t_")}  # summed over clips
        outcome = {}  # the same, for accepted and rejected clips apart
        for status in ("ok", "rejected"):
            sel = [i for i in range(n) if str(rows["status"][i]) == status]
            outcome[f"clips_{status}"] = [len(sel)]
            outcome[f"frames_{status}"] = [int(sum(int(rows["n_frames"][i]) for i in sel))]
            outcome[f"stage_s_{status}"] = [json.dumps({st: float(sum(float(rows[f"t_{st}"][i]) for i in sel))
                                                        for st in STAGES})]
        rss = {k: [float(np.max(rows[k]))] for k in ROW_KEYS if k.startswith("rss_")}  # the largest worker
        first = {str(rows["input_id"][i]): i for i in reversed(range(n))}
        return {"group_id": [group_id], "n_samples": [len(samples)], "n_inputs": [len(records)],
                "clips_uncaptioned": [uncaptioned],
                "n_clips": [n], "rejected": [json.dumps(dict(Counter(r.reason for r in records if r.status != "ok")))],
                "frames": [int(np.sum(rows["n_frames"]))], "shard": [result.shard_uri or ""],
                "bytes_in": [int(sum(int(rows["bytes_in"][i]) for i in first.values()))],
                "bytes_out": [int(result.bytes)], **timings, **outcome, **rss, "rss_publish": [peak_rss_mib()]}


PUBLISHED_KEYS = ("group_id", "n_samples", "n_inputs", "n_clips", "clips_uncaptioned", "rejected", "frames", "shard",
                  "bytes_in", "bytes_out", *(k for k in ROW_KEYS if k.startswith(("t_", "rss_"))), "rss_publish",
                  *(f"{k}_{status}" for status in ("ok", "rejected") for k in ("clips", "frames", "stage_s")))
"""What ``PublishGroups`` reports per group (``clips_uncaptioned``: accepted clips without a caption;
``rejected``: JSON of inputs rejected per reason;
``stage_s_ok`` / ``stage_s_rejected``: JSON of stage seconds summed over accepted / rejected clips)."""


class PublishCompleteGroups:
    """Clip rows in, in any order; each shard group is published the moment its last clip arrives.

    The streaming replacement of a group-by (which waits for every input of the run before it
    publishes anything): rows carry their group's input count (``group_inputs``) and their input's
    clip count (``input_clips``), so the publisher knows when a group is whole. It runs as a
    single Ray Data actor (every row of a group must reach the same one); it holds only the rows of
    groups still in flight, and a batch retried after a failure is de-duplicated by (input, clip).
    Groups it never completes (its actor lost with a node) stay pending for the next run, which
    skip-done makes exact (``jobs.preprocess.run_preprocess`` re-runs them once)."""

    def __init__(self, config: PreprocessConfig):
        self.publish = PublishGroups(config)
        self.pending: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in PUBLISHED_KEYS}
        whole = []
        for values in zip(*batch.values()):
            row = dict(zip(batch, values))
            group = str(row["group_id"])
            self.pending.setdefault(group, {})[(str(row["input_id"]), int(row["clip_index"]))] = row
            if group not in whole and self._whole(group):
                whole.append(group)
        for group in whole:
            published = self._publish(list(self.pending[group].values()))
            del self.pending[group]  # only once it is on storage: a failed publish is retried with its rows
            for k in PUBLISHED_KEYS:
                out[k] += published[k]
        return out

    def _publish(self, rows: list[dict[str, Any]], attempts: int = 3) -> dict[str, list]:
        """``PublishGroups`` on one whole group, retrying storage errors (network, S3 throttling)."""
        columns = {k: np.array([r[k] for r in rows], dtype=object) for k in ROW_KEYS}
        for attempt in range(attempts):
            try:
                return self.publish(columns)
            except OSError as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("publishing group %s failed (attempt %d/%d): %s", rows[0]["group_id"], attempt + 1,
                            attempts, exc)
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _whole(self, group: str) -> bool:
        rows = self.pending[group].values()
        clips: Counter = Counter(str(r["input_id"]) for r in rows)
        expected = {str(r["input_id"]): int(r["input_clips"]) for r in rows}
        inputs = int(next(iter(rows))["group_inputs"])
        return len(clips) == inputs and all(clips[i] == expected[i] for i in clips)
