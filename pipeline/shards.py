"""WebDataset training shards, their sidecars and the crash-safe resume protocol.

A shard is a tar of samples, one per clip, keyed ``f"{input_id}-{clip_index:03d}"``
(``sample_key``). The sample format itself -- member names, ``encode_sample`` /
``decode_sample`` -- lives in ``mirage_model.io.sample_format`` (training reads it without Ray or
fsspec); this module writes and reads the tars (``write_shard`` / ``read_shard_samples``, local
or ``s3://``) and keeps the output prefix consistent.

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
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import webdataset as wds

from mirage_model.io.sample_format import (
    INVALID_KEY_CHARS,
    decode_sample,
    json_default,
    sanitize_key,
)

from . import storage
from .storage import StorageOptions

logger = logging.getLogger(__name__)

SIDECAR_VERSION = 1
SHARD_PREFIX = "shard-"
MANIFEST_NAME = "manifest.jsonl"
STATUSES = ("ok", "rejected")

__all__ = [
    "GroupResult",
    "InputRecord",
    "MANIFEST_NAME",
    "ResumeState",
    "finalize_manifest",
    "group_id_for",
    "group_inputs",
    "list_shards",
    "make_input_id",
    "publish_group",
    "read_shard_samples",
    "sample_key",
    "scan_output",
    "shard_uri",
    "sidecar_uri",
    "write_shard",
]


# ----------------------------------------------------------------------------------------------
# Keys and ids
# ----------------------------------------------------------------------------------------------
def _short_hash(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def make_input_id(uri: str) -> str:
    """Stable id of an input: sanitised file stem + 8 hex chars of the full URI's hash."""
    stem = storage.basename(uri).rsplit(".", 1)[0] if "." in storage.basename(uri) \
        else storage.basename(uri)
    stem = INVALID_KEY_CHARS.sub("_", stem).strip("_")[:64] or "input"
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
    """Outcome of one input in a group (one line of the manifest): ``ok`` when at least one clip
    became a sample, else ``rejected`` with the first clip's reason; ``clips`` lists each one."""

    input_id: str
    uri: str
    status: str
    reason: str | None = None
    message: str = ""
    sample_keys: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    clips: list[dict[str, Any]] = field(default_factory=list)
    """Every clip (and every shot too short for one) of the input, good or rejected:
    ``{"clip", "status", "reason", "message", "frames", "key"}``."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status == "rejected" and not self.reason:
            raise ValueError(f"{self.input_id}: a rejected input needs a reason")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputRecord:
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
    bytes: int = 0  # shard + sidecar


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
    tar, written = None, 0
    if samples:
        tar = shard_uri(output_uri, group_id)
        written = write_shard(samples, tar, options)["bytes"]
    side = sidecar_uri(output_uri, group_id)
    payload = {
        "version": SIDECAR_VERSION,
        "group_id": group_id,
        "shard": storage.basename(tar) if tar else None,
        "n_samples": len(samples),
        "created": time.time(),
        "inputs": [r.to_dict() for r in records],
    }
    text = json.dumps(payload, indent=1, default=json_default).encode("utf-8")
    storage.atomic_write_bytes(side, text, options)
    return GroupResult(group_id, side, tar, len(samples), list(records), written + len(text))


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
            lines.append(json.dumps(line, default=json_default, sort_keys=True))
    manifest = storage.join_uri(output_uri, MANIFEST_NAME)
    storage.atomic_write_bytes(manifest, ("\n".join(lines) + ("\n" if lines else "")).encode(),
                               options)
    return {"inputs": len(seen), "samples": samples, "shards": shards,
            "status": dict(status), "reason": dict(reason), "manifest": manifest}
