"""RealEstate10K-format test sets: a camera file and a folder of frames per clip, local or on S3.

The layout is the RealEstate10K test split once its frames are extracted (as most papers that
evaluate on it do)::

    <root>/<clip>.txt     RealEstate10K camera file: the video URL, then one line per frame,
                          ``timestamp_us fx fy cx cy 0 0 <3x4 world-to-camera>`` (normalised intrinsics)
    <root>/<clip>/        the clip's frames (.png / .jpg): named by their timestamp in microseconds
                          (``52052000.png``, RealEstate10K's own naming), or any names whose natural
                          order is the camera order, one per camera line

``list_clips`` finds the clips (a camera file with a frame folder next to it); ``load_clip`` reads
``frames`` frames of one (every ``stride``-th camera line), resized to the evaluation size with the
intrinsics scaled to match (the normalised RealEstate10K intrinsics make that exact, also for a
change of aspect ratio); ``write_clip`` writes the layout, which is how the tests and
``mirage synth-data --testset`` build test sets with ground truth, and ``testset_from_shards``
turns the clips ``mirage preprocess`` made of one's own footage (frames and the cameras it
estimated) into a test set.

Bad clips raise ``ClipError`` with a reason (``missing_frames``, ``bad_camera_file``,
``frames_mismatch``, ``too_short``, ``bad_image``) and a message naming the file.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from mirage_model.geometry.formats import read_re10k, write_re10k
from mirage_model.geometry.trajectory import Trajectory

from . import storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

__all__ = ["ClipError", "TestClip", "list_clips", "load_clip", "testset_from_shards", "write_clip"]


class ClipError(ValueError):
    """A test clip that cannot be evaluated; ``reason`` is a short code, the message names the file."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class TestClip:
    """One clip's real frames (N, H, W, 3) uint8 and their cameras at that size."""

    id: str
    frames: np.ndarray
    trajectory: Trajectory


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_clips(root: str, options: storage.StorageOptions | None = None) -> list[str]:
    """Clip ids under ``root``: every ``<clip>.txt`` that has a ``<clip>/`` frame folder, sorted."""
    fs, path = storage.filesystem(root, options)
    if not fs.isdir(path):
        raise FileNotFoundError(f"test set {root}: no such directory or prefix")
    names = {storage.basename(p.rstrip("/")): fs.isdir(p) for p in fs.ls(path, detail=False)}
    return sorted((n[:-4] for n, is_dir in names.items() if not is_dir and n.endswith(".txt")
                   and names.get(n[:-4]) is True), key=_natural_key)


def _read_cameras(uri: str, size: tuple[int, int], options: storage.StorageOptions | None) -> Trajectory:
    try:
        text = storage.read_bytes(uri, options)
    except FileNotFoundError as exc:
        raise ClipError("bad_camera_file", f"camera file {uri} does not exist") from exc
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "cameras.txt")
        with open(local, "wb") as f:
            f.write(text)
        try:
            return read_re10k(local, size)
        except ValueError as exc:
            raise ClipError("bad_camera_file", f"camera file {uri}: {str(exc).replace(local, '').lstrip(', ')}") from exc


def _match_frames(images: list[str], traj: Trajectory, clip: str) -> list[str]:
    """The image of each camera line: by timestamp when the images are named by it, else in order."""
    stems = [os.path.splitext(storage.basename(u))[0] for u in images]
    if traj.timestamps is not None and all(s.isdigit() for s in stems):
        by_stamp = {int(s): u for s, u in zip(stems, images)}
        stamps = [int(round(float(t) * 1e6)) for t in traj.timestamps]
        if all(t in by_stamp for t in stamps):
            return [by_stamp[t] for t in stamps]
    if len(images) != len(traj):
        raise ClipError("frames_mismatch", f"clip {clip}: {len(images)} frames for {len(traj)} camera lines, "
                        "and the frame names are not the cameras' timestamps")
    return images


def _decode(uri: str, size: tuple[int, int], options: storage.StorageOptions | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri, options))) as im:
            return np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ClipError("bad_image", f"frame {uri} is not a readable image: {exc}") from exc


def load_clip(root: str, clip: str, *, frames: int, size: tuple[int, int], stride: int = 1,
              options: storage.StorageOptions | None = None) -> TestClip:
    """``frames`` frames of ``clip`` (camera lines 0, stride, 2 stride, ...) at ``size`` (H, W)."""
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be >= 1, got {frames}, {stride}")
    traj = _read_cameras(storage.join_uri(root, f"{clip}.txt"), size, options)
    folder = storage.join_uri(root, clip)
    try:
        images = sorted(storage.list_files(folder, options, suffixes=IMAGE_SUFFIXES),
                        key=lambda u: _natural_key(storage.basename(u)))
    except FileNotFoundError:
        images = []
    if not images:
        raise ClipError("missing_frames", f"clip {clip}: no frames ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    matched = _match_frames(images, traj, clip)
    need = (frames - 1) * stride + 1
    if len(traj) < need:
        raise ClipError("too_short", f"clip {clip}: {len(traj)} camera lines, {need} needed for {frames} frames "
                        f"at stride {stride}")
    idx = list(range(0, need, stride))
    pixels = np.stack([_decode(matched[i], size, options) for i in idx])
    stamps = traj.timestamps[idx] if traj.timestamps is not None else None
    return TestClip(clip, pixels, Trajectory(traj.c2w[idx], traj.K[idx], size, stamps))


def write_clip(root: str, clip: str, frames: np.ndarray, trajectory: Trajectory, *, fps: float = 30.0,
               url: str = "", options: storage.StorageOptions | None = None) -> None:
    """Write one clip in the layout above: PNG frames named by timestamp, then the camera file (last,
    so a camera file implies its frames are complete)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) != len(trajectory):
        raise ValueError(f"frames: expected uint8 ({len(trajectory)}, H, W, 3), got {frames.dtype} {frames.shape}")
    from PIL import Image

    stamps = trajectory.timestamps if trajectory.timestamps is not None else \
        torch.arange(len(trajectory), dtype=torch.float64) / float(fps)
    for frame, t in zip(frames, stamps):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        storage.atomic_write_bytes(storage.join_uri(root, clip, f"{int(round(float(t) * 1e6))}.png"), buf.getvalue(),
                                   options)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, f"{clip}.txt")
        write_re10k(local, Trajectory(trajectory.c2w, trajectory.K, trajectory.image_size, stamps), url=url, fps=fps)
        with open(local, "rb") as f:
            storage.atomic_write_bytes(storage.join_uri(root, f"{clip}.txt"), f.read(), options)


def testset_from_shards(shards_uri: str, out_root: str, *, max_clips: int | None = None,
                        options: storage.StorageOptions | None = None) -> list[str]:
    """Write each sample of the training shards under ``shards_uri`` (``mirage preprocess``'s
    output: its frames, the cameras it estimated, its fps) as a clip of a test set at ``out_root``,
    named by its sample key, with its source as the camera file's URL; returns the clip names. The
    first ``max_clips`` samples in shard order when given. Poses from SfM keep their arbitrary
    scale: ``mirage eval`` reads the first frame's depth at the given cameras, in their units."""
    from . import shards

    uris = shards.list_shards(shards_uri, options)
    if not uris:
        raise FileNotFoundError(f"{shards_uri}: no published shard (run mirage preprocess first)")
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    names = []
    for uri in uris:
        for sample in shards.read_shard_samples(uri, options):
            clip = sample["__key__"]
            traj = Trajectory(sample["c2w"], sample["K"], sample["image_size"])
            write_clip(out_root, clip, sample["frames"], traj, fps=sample["fps"] or 30.0,
                       url=str(sample["meta"].get("source_uri", "")), options=options)
            names.append(clip)
            if len(names) == max_clips:
                return names
    return names
