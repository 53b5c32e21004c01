"""The shard sample format: member names, and one clip <-> webdataset member bytes.

Pure numpy / OpenCV / PyAV, and safetensors for the text states (no Ray, no fsspec, no
webdataset): the preprocessing pipeline (``pipeline.shards``, ``pipeline.stages``) writes samples
with ``encode_sample`` (a ``ClipSample`` in, the members out), and training (``mirage_model.training.samples``, ``jobs.train``) reads them
with ``decode_sample`` (a dict keyed by the ``ClipSample`` names). Writing and reading shard tars,
the sidecars and the resume protocol live in ``pipeline.shards``.

Sample layout (one sample per clip; the pipeline's keys are ``f"{input_id}-{clip_index:03d}"``,
sanitised to ``[A-Za-z0-9_-]`` by ``sanitize_key`` because webdataset splits member names at the
first dot):

==============  =================================================================================
member          content
==============  =================================================================================
``video.mp4``   the clip, H.264 yuv420p (``video.write_video``); decode with ``video.decode_bytes``
``cameras.json`` ``{"convention": "opencv", "pose": "c2w", "image_size": [H, W], "fps",
                ``"c2w": T x 4 x 4, "K": T x 3 x 3}`` (K in pixels of the video frames)
``depth.npy``   float16 (T, h, w) camera z-depth in the units of the cameras (0 = unknown/sky), at
                ``aux_size``; ``meta.json``'s ``stats.depth_units`` says which: SfM's normalised
                units (no metric scale) or the camera file's
``static.npy``  uint8 (T, h, w), 1 = static scene (neither dynamic nor sky), same resolution
``latents.npy`` optional float16 VAE latents
``depth_conf.npy`` optional float16 (T, h, w) per-pixel confidence of ``depth`` in [0, 1]: measured
                (multi-view stereo) pixels near 1, filled ones lower (``perception.completion``)
``text.safetensors`` optional text-encoder states of the clip's caption and of the empty prompt
                (``caption`` and ``empty``, each (n_tokens, D) without the padding); ``meta.json``'s
                ``text`` says which encoder and prompt length made them (``mirage_model.model.text``)
``meta.json``   ``source_uri``, ``frame_indices``, ``fps``, ``n_frames``, ``image_size``,
                ``aux_size``, ``depth_frames``, ``stats`` (perception quality numbers) and any
                extra keys
==============  =================================================================================

``REQUIRED_MEMBERS`` lists the members every sample has (``OPTIONAL_MEMBERS`` the others); when
``depth_frames`` (in ``meta.json``) is a subset of the clip, ``depth.npy`` / ``static.npy`` hold
only those frames.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .video import decode_bytes, write_video

CAMERA_CONVENTION = "opencv"
"""Camera axes in ``cameras.json``: x right, y down, z forward; poses are camera-to-world."""

REQUIRED_MEMBERS: tuple[str, ...] = ("video.mp4", "cameras.json", "depth.npy", "static.npy",
                                     "meta.json")
"""Members every sample has (``decode_sample`` rejects a sample missing any of them)."""

OPTIONAL_MEMBERS: tuple[str, ...] = ("latents.npy", "depth_conf.npy", "text.safetensors")
"""Members a sample may have."""

INVALID_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
"""Runs of characters not allowed in a sample key (webdataset splits member names at dots)."""

__all__ = [
    "CAMERA_CONVENTION",
    "INVALID_KEY_CHARS",
    "OPTIONAL_MEMBERS",
    "REQUIRED_MEMBERS",
    "ClipSample",
    "decode_npy",
    "decode_sample",
    "encode_npy",
    "encode_sample",
    "json_default",
    "sanitize_key",
    "wds_video_decoder",
]


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------
def sanitize_key(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_-]`` replaced by ``_``.

    When anything had to change, an 8-character hash of the original is appended so distinct
    inputs cannot collide (``a.b`` and ``a_b`` stay different).
    """
    clean = INVALID_KEY_CHARS.sub("_", text).strip("_") or "x"
    return clean if clean == text else f"{clean}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------
def encode_npy(arr: np.ndarray) -> bytes:
    """``.npy`` bytes of ``arr`` (C-contiguous, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes | np.ndarray) -> np.ndarray:
    """Inverse of ``encode_npy`` (an array already decoded, e.g. by webdataset, passes through)."""
    if isinstance(data, np.ndarray):
        return data
    return np.load(io.BytesIO(data), allow_pickle=False)


def _json_load(data: bytes | str | Mapping) -> Any:
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    return json.loads(data)


def _resize_stack(arr: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    h, w = size
    if tuple(arr.shape[1:3]) == (h, w):
        return arr
    return np.stack([cv2.resize(a, (w, h), interpolation=interpolation) for a in arr])


@dataclass(frozen=True)
class ClipSample:
    """The content of one shard sample (one clip), as ``encode_sample`` takes it.

    The array and metadata names are the keys ``decode_sample`` returns them under.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB, H and W even.
        c2w: (T, 4, 4) camera-to-world, OpenCV axes.
        K: (T, 3, 3) or (3, 3) intrinsics, pixels of ``frames``.
        depth: (T_d, h, w) camera z-depth in the units of ``c2w`` (0 = unknown / sky).
        static: (T_d, h, w) bool / 0-1 static mask (neither moving nor sky), any resolution
            common with ``depth`` after ``encode_sample``'s ``aux_size``.
        fps: clip frame rate.
        source_uri: the input video (provenance).
        frame_indices: T indices into the decoded, resampled source video (provenance).
        depth_frames: the clip frames ``depth`` / ``static`` belong to when they cover a subset
            (e.g. every 4th frame, the latent-frame cameras); None: all T frames.
        depth_confidence: optional (T_d, h', w') per-pixel confidence of ``depth`` in [0, 1].
        latents: optional VAE latents, stored as float16.
        stats: perception quality numbers (JSON-serialisable), ``meta.json``'s ``stats``.
        extra_meta: more ``meta.json`` keys (e.g. ``caption``, ``source_frame_indices``).
        text: optional text-encoder states (``{"caption": (n, D), "empty": (m, D)}`` torch tensors,
            any float dtype), stored as they are.
    """

    frames: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    static: np.ndarray
    fps: float
    source_uri: str
    frame_indices: Sequence[int]
    depth_frames: Sequence[int] | None = None
    depth_confidence: np.ndarray | None = None
    latents: np.ndarray | None = None
    stats: Mapping[str, Any] | None = None
    extra_meta: Mapping[str, Any] | None = None
    text: Mapping[str, Any] | None = None


def encode_sample(key: str, clip: ClipSample, *, aux_size: tuple[int, int] | None = None,
                  qp: int = 18) -> dict[str, bytes | str]:
    """Serialise one clip into webdataset members (see the module docstring for the layout).

    Args:
        key: sample key (sanitised here with ``sanitize_key``; the pipeline's keys come from
            ``pipeline.shards.sample_key``).
        clip: the clip's arrays and metadata (``ClipSample``).
        aux_size: (h, w) to store depth and its confidence (bilinear) and the mask (nearest) at;
            default: as given.
        qp: H.264 quantiser of ``video.mp4`` (``video.write_video``).
    Returns:
        ``{"__key__": key, "video.mp4": ..., "cameras.json": ..., ...}`` (bytes values).
    """
    frames = np.asarray(clip.frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    fps, frame_indices, source_uri = clip.fps, clip.frame_indices, clip.source_uri
    c2w = np.asarray(clip.c2w, dtype=np.float64)
    K = np.asarray(clip.K, dtype=np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (t, 3, 3))
    depth = np.asarray(clip.depth, dtype=np.float32)
    static = np.asarray(clip.static)
    checks = {"c2w": (c2w.shape, (t, 4, 4)), "K": (K.shape, (t, 3, 3))}
    for name, (got, want) in checks.items():
        if tuple(got) != want:
            raise ValueError(f"{name}: expected shape {want}, got {tuple(got)}")
    depth_frames = list(range(t)) if clip.depth_frames is None else [int(i) for i in clip.depth_frames]
    if any(i < 0 or i >= t for i in depth_frames):
        raise ValueError(f"depth_frames: indices must lie in [0, {t}), got {depth_frames}")
    td = len(depth_frames)
    for name, arr in (("depth", depth), ("static", static)):
        if arr.ndim != 3 or arr.shape[0] != td:
            raise ValueError(f"{name}: expected ({td} depth frames, h, w), got {arr.shape}")
    if len(frame_indices) != t:
        raise ValueError(f"frame_indices: expected {t} entries, got {len(frame_indices)}")
    static_u8 = (static > 0).astype(np.uint8)
    if aux_size is not None:
        aux = (int(aux_size[0]), int(aux_size[1]))
        depth = _resize_stack(depth, aux, cv2.INTER_LINEAR)
        static_u8 = _resize_stack(static_u8, aux, cv2.INTER_NEAREST)
    if depth.shape != static_u8.shape:
        raise ValueError(f"depth {depth.shape} and static {static_u8.shape} must have the same shape "
                         "(give aux_size to store both at one resolution)")
    key = sanitize_key(key)

    with tempfile.TemporaryDirectory(prefix="mirage-sample-") as tmp_dir:
        path = os.path.join(tmp_dir, "clip.mp4")
        write_video(path, frames, fps, qp=qp)
        with open(path, "rb") as f:
            video_bytes = f.read()

    cameras = {"convention": CAMERA_CONVENTION, "pose": "c2w", "image_size": [h, w],
               "fps": float(fps), "c2w": c2w.tolist(), "K": np.asarray(K).tolist()}
    meta: dict[str, Any] = dict(clip.extra_meta or {})
    meta.update({"key": key, "source_uri": str(source_uri),
                 "frame_indices": [int(i) for i in frame_indices], "fps": float(fps),
                 "n_frames": t, "image_size": [h, w], "aux_size": list(depth.shape[1:]),
                 "depth_frames": depth_frames,
                 "stats": dict(clip.stats or {})})
    sample: dict[str, bytes | str] = {
        "__key__": key,
        "video.mp4": video_bytes,
        "cameras.json": json.dumps(cameras).encode("utf-8"),
        "depth.npy": encode_npy(depth.astype(np.float16)),
        "static.npy": encode_npy(static_u8),
        "meta.json": json.dumps(meta, default=json_default).encode("utf-8"),
    }
    if clip.latents is not None:
        sample["latents.npy"] = encode_npy(np.asarray(clip.latents).astype(np.float16))
    if clip.depth_confidence is not None:
        conf = np.asarray(clip.depth_confidence, dtype=np.float32)
        if conf.shape[1:] != depth.shape[1:]:
            conf = _resize_stack(conf, tuple(depth.shape[1:]), cv2.INTER_LINEAR)
        if conf.shape != depth.shape:
            raise ValueError(f"depth_confidence {conf.shape} does not match depth {depth.shape}")
        sample["depth_conf.npy"] = encode_npy(np.clip(conf, 0, 1).astype(np.float16))
    if clip.text is not None:
        from safetensors.torch import save

        sample["text.safetensors"] = save({k: v.detach().contiguous().cpu() for k, v in clip.text.items()})
    return sample


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def decode_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Decode the members of one sample (raw bytes, e.g. from a plain ``wds.WebDataset``).

    Returns a dict (what Ray Data rows and the training code carry), its arrays under the names of
    the ``ClipSample`` that was encoded: ``__key__`` (and ``__url__`` when present), ``frames``
    (T, H, W, 3) uint8 decoded with PyAV, ``c2w`` (T, 4, 4) and ``K`` (T, 3, 3) float64,
    ``image_size``, ``fps``, ``cameras`` (the JSON dict), ``depth`` float16 (T_d, h, w), ``static``
    bool (T_d, h, w), ``depth_frames``, ``meta`` (``source_uri``, ``frame_indices``, ``stats`` and
    the extra keys) and, when stored, ``latents`` and ``depth_confidence`` float16 and ``text`` (the
    states, torch tensors by name).
    """
    out: dict[str, Any] = {k: v for k, v in sample.items() if k.startswith("__")}
    missing = [m for m in REQUIRED_MEMBERS if m not in sample]
    if missing:
        raise ValueError(f"sample {sample.get('__key__')!r}: missing member(s) {missing}")
    video = sample["video.mp4"]
    out["frames"] = video if isinstance(video, np.ndarray) else \
        decode_bytes(bytes(video), name=f"{sample.get('__key__')}.video.mp4").frames
    cameras = _json_load(sample["cameras.json"])
    out["cameras"] = cameras
    out["c2w"] = np.asarray(cameras["c2w"], dtype=np.float64)
    out["K"] = np.asarray(cameras["K"], dtype=np.float64)
    out["image_size"] = tuple(int(v) for v in cameras["image_size"])
    out["fps"] = float(cameras.get("fps", 0.0))
    out["depth"] = decode_npy(sample["depth.npy"])
    out["static"] = decode_npy(sample["static.npy"]).astype(bool)
    out["meta"] = _json_load(sample["meta.json"])
    out["depth_frames"] = list(out["meta"].get("depth_frames", range(len(out["frames"]))))
    if "latents.npy" in sample:
        out["latents"] = decode_npy(sample["latents.npy"])
    if "depth_conf.npy" in sample:
        out["depth_confidence"] = decode_npy(sample["depth_conf.npy"])
    if "text.safetensors" in sample:
        from safetensors.torch import load

        out["text"] = load(bytes(sample["text.safetensors"]))
    return out


def wds_video_decoder(key: str, data: bytes) -> np.ndarray | None:
    """A webdataset decode handler for ``.mp4`` members using PyAV (instead of torchvision).

    Use as ``wds.WebDataset(url).decode(wds_video_decoder)``: returns (T, H, W, 3) uint8 frames
    for keys ending in ``mp4``, ``None`` (not handled) otherwise.
    """
    if not key.lower().endswith("mp4"):
        return None
    return decode_bytes(bytes(data), name=key).frames
