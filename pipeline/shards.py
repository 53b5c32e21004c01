"""WebDataset training shards, their sidecars and the crash-safe resume protocol.

Sample layout (one sample per clip; key ``f"{input_id}-{clip_index:03d}"``, sanitised to
``[A-Za-z0-9_-]`` because webdataset splits member names at the first dot):

==============  =================================================================================
member          content
==============  =================================================================================
``video.mp4``   the clip, H.264 yuv420p (``video.write_video``); decode with ``video.decode_bytes``
``cameras.json`` ``{"convention": "opencv", "pose": "c2w", "image_size": [H, W], "fps",
                ``"c2w": T x 4 x 4, "K": T x 3 x 3}`` (K in pixels of the video frames)
``depth.npy``   float16 (T, h, w) camera z-depth in metres (0 = unknown/sky), at ``aux_size``
``static.npy``  uint8 (T, h, w), 1 = static scene (neither dynamic nor sky), same resolution
``latents.npy`` optional float16 VAE latents
``meta.json``   ``source_uri``, ``frame_indices``, ``fps``, ``n_frames``, ``image_size``,
                ``aux_size``, ``stats`` (perception quality numbers) and any extra keys
==============  =================================================================================

Crash-safe, resumable output (one output prefix, local or ``s3://``):

1. Inputs get a stable ``input_id`` (``make_input_id``: sanitised file stem + hash of the URI).
2. Pending inputs are grouped deterministically (``group_inputs``: sorted ids, fixed-size chunks);
   ``group_id`` = a short hash of the sorted input ids of the group, so re-running the same
   pending inputs reproduces the same names.
3. A finished group is published by ``publish_group`` in this order: ``shard-<group_id>.tar``
   (only when the group has at least one ok sample), **then** the sidecar
   ``shard-<group_id>.json`` listing every input of the group with its status (``ok`` /
   ``rejected``), reason, message, sample keys and stats. Both writes are atomic (temporary name
   + rename, see ``storage``).
4. An input is *done* iff it appears in a published sidecar. A crash before the sidecar leaves an
   orphan tar (and maybe ``.tmp-*`` objects); its inputs are not done.
5. On resume ``scan_output`` reads all sidecars (the done set), deletes orphan tars without a
   sidecar and every ``.tmp-*`` leftover, and drops sidecars whose tar went missing (their inputs
   become pending again). The driver then re-groups only the pending inputs. Only one driver may
   write to an output prefix at a time (the scan deletes temporaries of a concurrent writer).
6. ``finalize_manifest`` merges all sidecars into ``manifest.jsonl`` (one line per input, atomic)
   and returns counts by status and reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
import webdataset as wds

from . import storage
from .storage import StorageOptions
from .video import decode_bytes, write_video

logger = logging.getLogger(__name__)

CAMERA_CONVENTION = "opencv"
"""Camera axes in ``cameras.json``: x right, y down, z forward; poses are camera-to-world."""
SIDECAR_VERSION = 1
SHARD_PREFIX = "shard-"
MANIFEST_NAME = "manifest.jsonl"
STATUSES = ("ok", "rejected")

__all__ = [
    "CAMERA_CONVENTION",
    "GroupResult",
    "InputRecord",
    "MANIFEST_NAME",
    "ResumeState",
    "decode_sample",
    "encode_sample",
    "finalize_manifest",
    "group_id_for",
    "group_inputs",
    "list_shards",
    "make_input_id",
    "publish_group",
    "read_shard_samples",
    "sample_key",
    "sanitize_key",
    "scan_output",
    "shard_uri",
    "sidecar_uri",
    "wds_video_decoder",
    "write_shard",
]


# ----------------------------------------------------------------------------------------------
# Keys and ids
# ----------------------------------------------------------------------------------------------
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def _short_hash(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def sanitize_key(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_-]`` replaced by ``_``.

    When anything had to change, an 8-character hash of the original is appended so distinct
    inputs cannot collide (``a.b`` and ``a_b`` stay different).
    """
    clean = _KEY_BAD.sub("_", text).strip("_") or "x"
    return clean if clean == text else f"{clean}_{_short_hash(text, 8)}"


def make_input_id(uri: str) -> str:
    """Stable id of an input: sanitised file stem + 8 hex chars of the full URI's hash."""
    stem = storage.basename(uri).rsplit(".", 1)[0] if "." in storage.basename(uri) \
        else storage.basename(uri)
    stem = _KEY_BAD.sub("_", stem).strip("_")[:64] or "input"
    return f"{stem}-{_short_hash(str(uri), 8)}"


def sample_key(input_id: str, clip_index: int) -> str:
    """Sample key of clip ``clip_index`` of an input."""
    return sanitize_key(f"{input_id}-{int(clip_index):03d}")


def group_id_for(input_ids: Iterable[str]) -> str:
    """16-hex-char hash of the sorted input ids: the same group always gets the same name."""
    ids = sorted(set(input_ids))
    if not ids:
        raise ValueError("a group needs at least one input")
    return _short_hash("\n".join(ids))


def group_inputs(input_ids: Iterable[str], group_size: int) -> list[list[str]]:
    """Deterministic groups: sorted, de-duplicated ids cut into chunks of ``group_size``."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    ids = sorted(set(input_ids))
    return [ids[i:i + group_size] for i in range(0, len(ids), group_size)]


def shard_uri(output_uri: str, group_id: str) -> str:
    """``<output>/shard-<group_id>.tar``."""
    return storage.join_uri(output_uri, f"{SHARD_PREFIX}{group_id}.tar")


def sidecar_uri(output_uri: str, group_id: str) -> str:
    """``<output>/shard-<group_id>.json``."""
    return storage.join_uri(output_uri, f"{SHARD_PREFIX}{group_id}.json")


# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------
def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes | np.ndarray) -> np.ndarray:
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


def encode_sample(
    key: str,
    frames: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    depth: np.ndarray,
    static: np.ndarray,
    *,
    fps: float,
    source_uri: str,
    frame_indices: Sequence[int],
    stats: Mapping[str, Any] | None = None,
    latents: np.ndarray | None = None,
    aux_size: tuple[int, int] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    crf: int = 18,
    depth_frames: Sequence[int] | None = None,
) -> dict[str, bytes | str]:
    """Serialise one clip into webdataset members (see the module docstring for the layout).

    Args:
        key: sample key (sanitised here; use ``sample_key``).
        frames: (T, H, W, 3) uint8 RGB, H and W even.
        c2w: (T, 4, 4) camera-to-world, OpenCV axes. K: (T, 3, 3) or (3, 3), pixels of ``frames``.
        depth: (T, h, w) z-depth; static: (T, h, w) bool/0-1 static mask (any common resolution).
        fps: clip frame rate. source_uri / frame_indices: provenance (indices into the decoded,
            resampled source video).
        stats: perception quality numbers (JSON-serialisable).
        latents: optional VAE latents, stored as float16.
        aux_size: (h, w) to store depth (bilinear) and the mask (nearest) at; default: as given.
        depth_frames: the clip frames ``depth``/``static`` belong to when they cover a subset
            (e.g. every 4th frame, the latent-frame cameras); default: all T frames.
    Returns:
        ``{"__key__": key, "video.mp4": ..., "cameras.json": ..., ...}`` (bytes values).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    c2w = np.asarray(c2w, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (t, 3, 3))
    depth = np.asarray(depth, dtype=np.float32)
    static = np.asarray(static)
    checks = {"c2w": (c2w.shape, (t, 4, 4)), "K": (K.shape, (t, 3, 3))}
    for name, (got, want) in checks.items():
        if tuple(got) != want:
            raise ValueError(f"{name}: expected shape {want}, got {tuple(got)}")
    depth_frames = list(range(t)) if depth_frames is None else [int(i) for i in depth_frames]
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
        write_video(path, frames, fps, crf=crf)
        with open(path, "rb") as f:
            video_bytes = f.read()

    cameras = {"convention": CAMERA_CONVENTION, "pose": "c2w", "image_size": [h, w],
               "fps": float(fps), "c2w": c2w.tolist(), "K": np.asarray(K).tolist()}
    meta: dict[str, Any] = dict(extra_meta or {})
    meta.update({"key": key, "source_uri": str(source_uri),
                 "frame_indices": [int(i) for i in frame_indices], "fps": float(fps),
                 "n_frames": t, "image_size": [h, w], "aux_size": list(depth.shape[1:]),
                 "depth_frames": depth_frames,
                 "stats": dict(stats or {})})
    sample: dict[str, bytes | str] = {
        "__key__": key,
        "video.mp4": video_bytes,
        "cameras.json": json.dumps(cameras).encode("utf-8"),
        "depth.npy": _npy_bytes(depth.astype(np.float16)),
        "static.npy": _npy_bytes(static_u8),
        "meta.json": json.dumps(meta, default=_json_default).encode("utf-8"),
    }
    if latents is not None:
        sample["latents.npy"] = _npy_bytes(np.asarray(latents).astype(np.float16))
    return sample


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def decode_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Decode the members of one sample (raw bytes, e.g. from a plain ``wds.WebDataset``).

    Returns ``__key__`` (and ``__url__`` when present), ``frames`` (T, H, W, 3) uint8 decoded with
    PyAV, ``c2w`` (T, 4, 4) and ``K`` (T, 3, 3) float64, ``image_size``, ``fps``, ``cameras``
    (the JSON dict), ``depth`` float16 (T, h, w), ``static`` bool (T, h, w), ``meta`` and, when
    stored, ``latents`` float16.
    """
    out: dict[str, Any] = {k: v for k, v in sample.items() if k.startswith("__")}
    missing = [m for m in ("video.mp4", "cameras.json", "depth.npy", "static.npy", "meta.json")
               if m not in sample]
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
    out["depth"] = _npy_load(sample["depth.npy"])
    out["static"] = _npy_load(sample["static.npy"]).astype(bool)
    out["meta"] = _json_load(sample["meta.json"])
    out["depth_frames"] = list(out["meta"].get("depth_frames", range(len(out["frames"]))))
    if "latents.npy" in sample:
        out["latents"] = _npy_load(sample["latents.npy"])
    return out


def wds_video_decoder(key: str, data: bytes) -> np.ndarray | None:
    """A webdataset decode handler for ``.mp4`` members using PyAV (instead of torchvision).

    Use as ``wds.WebDataset(url).decode(wds_video_decoder)``: returns (T, H, W, 3) uint8 frames
    for keys ending in ``mp4``, ``None`` (not handled) otherwise.
    """
    if not key.lower().endswith("mp4"):
        return None
    return decode_bytes(bytes(data), name=key).frames


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------
def write_shard(samples: Sequence[Mapping[str, bytes | str]], uri: str,
                options: StorageOptions | None = None) -> dict[str, Any]:
    """Write encoded samples to a tar at ``uri`` (local or S3) atomically.

    The tar is built in a local temporary file with ``webdataset.TarWriter`` (fixed mtime, so
    the same samples give the same bytes) and then published by ``storage.atomic_write_file``.
    Returns ``{"uri", "n_samples", "bytes"}``.
    """
    if not samples:
        raise ValueError("write_shard: no samples")
    keys = [str(s.get("__key__")) for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"write_shard: duplicate sample keys in {keys}")
    for k in keys:
        if sanitize_key(k) != k:
            raise ValueError(f"write_shard: key {k!r} is not sanitised (use sanitize_key)")
    with tempfile.TemporaryDirectory(prefix="mirage-shard-") as tmp_dir:
        local = os.path.join(tmp_dir, storage.basename(uri))
        with open(local, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False, mtime=0.0)
            for sample in samples:
                writer.write(dict(sample))
            writer.close()
        nbytes = os.path.getsize(local)
        storage.atomic_write_file(local, uri, options, move=True)
    return {"uri": str(uri), "n_samples": len(samples), "bytes": nbytes}


def read_shard_samples(uri: str | Sequence[str], options: StorageOptions | None = None,
                       decode: bool = True) -> list[dict[str, Any]]:
    """All samples of one or more shards, read with a plain ``webdataset.WebDataset``.

    ``s3://`` URLs go through the s3fs gopen handler (registered here). With ``decode=False`` the
    raw member bytes are returned.
    """
    urls = [uri] if isinstance(uri, str) else list(uri)
    if any(storage.is_s3(u) for u in urls):
        storage.register_webdataset_s3(options)
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    out = []
    for sample in dataset:
        out.append(decode_sample(sample) if decode else dict(sample))
    return out


# ----------------------------------------------------------------------------------------------
# Sidecars, resume and the manifest
# ----------------------------------------------------------------------------------------------
@dataclass
class InputRecord:
    """Outcome of one input in a group (one line of the manifest)."""

    input_id: str
    uri: str
    status: str
    reason: str | None = None
    message: str = ""
    sample_keys: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status == "rejected" and not self.reason:
            raise ValueError(f"{self.input_id}: a rejected input needs a reason")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputRecord":
        """Inverse of ``to_dict`` (unknown keys are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class GroupResult:
    """What ``publish_group`` wrote."""

    group_id: str
    sidecar_uri: str
    shard_uri: str | None
    n_samples: int
    records: list[InputRecord]


@dataclass
class ResumeState:
    """Result of ``scan_output``: done inputs, their sidecars and what the scan deleted."""

    done: dict[str, InputRecord]
    sidecars: list[str]
    removed: list[str]

    def pending(self, input_ids: Iterable[str]) -> list[str]:
        """The ids among ``input_ids`` that are not done, sorted."""
        return sorted(set(input_ids) - set(self.done))


def publish_group(output_uri: str, group_id: str, samples: Sequence[Mapping[str, bytes | str]],
                  records: Sequence[InputRecord], options: StorageOptions | None = None
                  ) -> GroupResult:
    """Publish a finished group: the shard (if any ok samples) and then its sidecar.

    Every sample key must belong to an ok record's ``sample_keys`` and vice versa.
    """
    if not records:
        raise ValueError("publish_group: a group needs at least one input record")
    expected = {k for r in records if r.status == "ok" for k in r.sample_keys}
    got = {str(s["__key__"]) for s in samples}
    if expected != got:
        raise ValueError(f"publish_group {group_id}: sample keys {sorted(got)} do not match the ok "
                         f"records' sample_keys {sorted(expected)}")
    tar = None
    if samples:
        tar = shard_uri(output_uri, group_id)
        write_shard(samples, tar, options)
    side = sidecar_uri(output_uri, group_id)
    payload = {
        "version": SIDECAR_VERSION,
        "group_id": group_id,
        "shard": storage.basename(tar) if tar else None,
        "n_samples": len(samples),
        "created": time.time(),
        "inputs": [r.to_dict() for r in records],
    }
    storage.atomic_write_bytes(side, json.dumps(payload, indent=1, default=_json_default)
                               .encode("utf-8"), options)
    return GroupResult(group_id, side, tar, len(samples), list(records))


def _read_sidecars(output_uri: str, options: StorageOptions | None) -> list[tuple[str, dict]]:
    out = []
    for uri in storage.find_names(output_uri, f"{SHARD_PREFIX}*.json", options):
        try:
            data = json.loads(storage.read_bytes(uri, options).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # Sidecars are published atomically, so this is outside damage: treat as absent.
            logger.warning("%s: unreadable sidecar ignored (%s)", uri, exc)
            continue
        out.append((uri, data))
    return out


def scan_output(output_uri: str, options: StorageOptions | None = None,
                cleanup: bool = True) -> ResumeState:
    """Resume scan of an output prefix (see the module docstring, step 5).

    Returns the done inputs (from sidecars) and, with ``cleanup``, deletes orphan tars, sidecars
    whose tar is missing (their inputs become pending again) and ``.tmp-*`` leftovers.
    """
    done: dict[str, InputRecord] = {}
    kept: list[str] = []
    removed: list[str] = []
    tars = {storage.basename(u): u for u in
            storage.find_names(output_uri, f"{SHARD_PREFIX}*.tar", options)}
    claimed: set[str] = set()
    for uri, data in _read_sidecars(output_uri, options):
        shard = data.get("shard")
        if shard:
            if shard not in tars:
                logger.warning("%s: its shard %s is missing; its inputs are pending again", uri, shard)
                if cleanup:
                    storage.remove(uri, options)
                    removed.append(uri)
                continue
            claimed.add(shard)
        kept.append(uri)
        for entry in data.get("inputs", []):
            rec = InputRecord.from_dict(entry)
            if rec.input_id in done:
                logger.warning("input %s appears in more than one sidecar; keeping the first",
                               rec.input_id)
                continue
            done[rec.input_id] = rec
    if cleanup:
        for name in sorted(set(tars) - claimed):
            tar = tars[name]
            logger.info("removing orphan shard without sidecar: %s", tar)
            storage.remove(tar, options)
            removed.append(tar)
        for tmp in storage.find_names(output_uri, f"{storage.TMP_PREFIX}*", options):
            storage.remove(tmp, options)
            removed.append(tmp)
    return ResumeState(done=done, sidecars=kept, removed=removed)


def list_shards(output_uri: str, options: StorageOptions | None = None) -> list[str]:
    """URIs of the published shards (those referenced by a sidecar), sorted."""
    out = []
    for _, data in _read_sidecars(output_uri, options):
        if data.get("shard"):
            out.append(storage.join_uri(output_uri, data["shard"]))
    return sorted(out)


def finalize_manifest(output_uri: str, options: StorageOptions | None = None) -> dict[str, Any]:
    """Merge all sidecars into ``<output>/manifest.jsonl`` (atomic) and return counts.

    Each line is one input: the ``InputRecord`` fields plus ``group_id`` and ``shard`` (the URI
    holding its samples, null for inputs without samples). Returns ``{"inputs", "samples", "shards", "status": {status: n}, "reason":
    {reason: n}, "manifest": uri}``.
    """
    lines = []
    seen: set[str] = set()
    status: Counter[str] = Counter()
    reason: Counter[str] = Counter()
    samples = 0
    shards = 0
    for _, data in sorted(_read_sidecars(output_uri, options), key=lambda x: x[0]):
        shard = storage.join_uri(output_uri, data["shard"]) if data.get("shard") else None
        shards += shard is not None
        for entry in data.get("inputs", []):
            rec = InputRecord.from_dict(entry)
            if rec.input_id in seen:
                continue
            seen.add(rec.input_id)
            status[rec.status] += 1
            if rec.reason:
                reason[rec.reason] += 1
            samples += len(rec.sample_keys)
            line = rec.to_dict()
            line.update({"group_id": data.get("group_id"),
                         "shard": shard if rec.sample_keys else None})
            lines.append(json.dumps(line, default=_json_default, sort_keys=True))
    manifest = storage.join_uri(output_uri, MANIFEST_NAME)
    storage.atomic_write_bytes(manifest, ("\n".join(lines) + ("\n" if lines else "")).encode(),
                               options)
    return {"inputs": len(seen), "samples": samples, "shards": shards,
            "status": dict(status), "reason": dict(reason), "manifest": manifest}
