"""Storage helpers over fsspec for local paths and ``s3://`` URIs.

* ``filesystem(uri, options)`` returns ``(fs, path)``: a local filesystem and an absolute path, or an
  s3fs filesystem and ``bucket/key``. URIs without a scheme (or ``file://``) are local.
* Credentials: ``StorageOptions`` takes ``key``/``secret`` explicitly or, when they are not given,
  from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` at the time a filesystem is built (so an
  options object shipped to Ray workers carries no secret unless one was put in it). The
  endpoint and region also fall back to ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` /
  ``AWS_DEFAULT_REGION``. Secrets never appear in ``repr``/``str`` and are never logged.
* Publishing is atomic: ``atomic_write_bytes`` / ``atomic_write_file`` write to a temporary name in
  the destination directory (``.tmp-<uuid>-<name>``) and then rename it. Locally that is
  ``os.replace`` (atomic on POSIX). On S3 it is s3fs ``mv`` (server-side copy + delete): readers
  never see a partial object under the final key, and a crash leaves at most a ``.tmp-*`` object
  that a resume scan deletes (see ``pipeline.shards``).
* ``list_files`` expands a directory (recursively), a glob, an ``s3://`` prefix or a manifest
  (``.txt``: one URI per line; ``.jsonl``: objects with a ``"uri"`` or ``"path"`` key) into a
  sorted list of URIs.
* ``register_webdataset_s3`` installs a webdataset ``gopen`` handler for ``s3://`` backed by s3fs
  (webdataset has none). It is per process: call it in every Ray worker that reads shards.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mirage_model.io import atomic as _atomic

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
"""File suffixes (lower case) that ``list_files`` treats as videos by default."""

TMP_PREFIX = _atomic.TMP_PREFIX
"""Prefix of temporary names used by the atomic writers (and cleaned up by resume scans)."""

MANIFEST_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl")

__all__ = [
    "MANIFEST_SUFFIXES",
    "StorageOptions",
    "TMP_PREFIX",
    "VIDEO_SUFFIXES",
    "atomic_write_bytes",
    "atomic_write_file",
    "basename",
    "exists",
    "filesystem",
    "find_names",
    "is_s3",
    "join_uri",
    "list_files",
    "local_path",
    "open_uri",
    "read_bytes",
    "register_webdataset_s3",
    "remove",
    "size",
    "tmp_name",
]


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StorageOptions:
    """Connection settings for ``s3://`` URIs (ignored for local paths).

    Attributes:
        endpoint_url: S3-compatible endpoint (e.g. ``http://127.0.0.1:9000``); default
            ``$AWS_ENDPOINT_URL`` or AWS itself.
        region: region name; default ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``.
        key, secret: credentials; default ``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY``.
            Hidden from ``repr``.
        anon: anonymous access (public buckets).
    """

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    anon: bool = False

    def __repr__(self) -> str:
        key = "<set>" if self.key else ("<env>" if os.environ.get("AWS_ACCESS_KEY_ID") else None)
        secret = "<hidden>" if (self.secret or os.environ.get("AWS_SECRET_ACCESS_KEY")) else None
        return (f"StorageOptions(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
                f"key={key!r}, secret={secret!r}, anon={self.anon})")

    __str__ = __repr__

    def s3fs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` (contains secrets: never log the result)."""
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs: dict[str, Any] = {"use_listings_cache": False}
        if self.anon:
            kwargs["anon"] = True
        else:
            key = self.key or os.environ.get("AWS_ACCESS_KEY_ID")
            secret = self.secret or os.environ.get("AWS_SECRET_ACCESS_KEY")
            if key:
                kwargs["key"] = key
            if secret:
                kwargs["secret"] = secret
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        if region:
            kwargs["client_kwargs"] = {"region_name": region}
        return kwargs


def _opts(options: StorageOptions | None) -> StorageOptions:
    return options if options is not None else StorageOptions()


# ----------------------------------------------------------------------------------------------
# Filesystems and paths
# ----------------------------------------------------------------------------------------------
def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://`` (and ``s3a://``) URIs."""
    return str(uri).startswith(("s3://", "s3a://"))


def _local_path(uri: str | os.PathLike) -> str:
    text = str(uri)
    if text.startswith("file://"):
        text = urlparse(text).path
    return os.path.abspath(os.path.expanduser(text))


def filesystem(uri: str | os.PathLike, options: StorageOptions | None = None
               ) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for ``uri``: local (absolute path) or s3fs (``bucket/key``)."""
    text = str(uri)
    if is_s3(text):
        import s3fs

        fs = s3fs.S3FileSystem(**_opts(options).s3fs_kwargs())
        return fs, text.split("://", 1)[1].rstrip("/")
    scheme = urlparse(text).scheme
    if scheme not in ("", "file") and len(scheme) > 1:  # len 1: a Windows drive letter
        raise ValueError(f"{text}: unsupported URI scheme {scheme!r} (use a local path or s3://)")
    return LocalFileSystem(), _local_path(text)


def pyarrow_filesystem(uri: str | os.PathLike, options: StorageOptions | None = None):
    """``(pyarrow.fs.FileSystem, path)`` for ``uri``, for Ray APIs that take one (Ray Train storage,
    Ray Data readers). S3 goes through the same s3fs settings as ``filesystem`` (one place for
    endpoints and credentials)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri, options)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of ``filesystem``: a URI for ``path`` on ``fs``."""
    return path if isinstance(fs, LocalFileSystem) else f"s3://{path}"


def join_uri(base: str | os.PathLike, *parts: str) -> str:
    """Join path components onto a local path or an ``s3://`` URI (always with ``/`` on S3)."""
    text = str(base)
    if is_s3(text):
        return "/".join([text.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(text, *parts)


def basename(uri: str | os.PathLike) -> str:
    """Last path component of a local path or URI."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def tmp_name(name: str) -> str:
    """A temporary sibling name for ``name``: ``.tmp-<uuid>-<name>`` (keeps the suffix)."""
    return _atomic.tmp_name(name)


def open_uri(uri: str | os.PathLike, mode: str = "rb", options: StorageOptions | None = None) -> IO:
    """Open ``uri`` (local or S3) with fsspec; use as a context manager."""
    fs, path = filesystem(uri, options)
    return fs.open(path, mode)


def read_bytes(uri: str | os.PathLike, options: StorageOptions | None = None) -> bytes:
    """The whole content of ``uri``."""
    fs, path = filesystem(uri, options)
    return fs.cat_file(path)


def exists(uri: str | os.PathLike, options: StorageOptions | None = None) -> bool:
    """Whether ``uri`` exists."""
    fs, path = filesystem(uri, options)
    return bool(fs.exists(path))


def size(uri: str | os.PathLike, options: StorageOptions | None = None) -> int:
    """Size of ``uri`` in bytes (FileNotFoundError when missing)."""
    fs, path = filesystem(uri, options)
    return int(fs.size(path))


def remove(uri: str | os.PathLike, options: StorageOptions | None = None) -> None:
    """Delete one file (no error when it is already gone)."""
    fs, path = filesystem(uri, options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------------------------
# Atomic publication
# ----------------------------------------------------------------------------------------------
def _split_parent(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, str]:
    if isinstance(fs, LocalFileSystem):
        return os.path.dirname(path), os.path.basename(path)
    parent, _, name = path.rpartition("/")
    if not parent or not name:
        raise ValueError(f"s3://{path}: expected s3://bucket/key")
    return parent, name


def atomic_write_bytes(uri: str | os.PathLike, data: bytes,
                       options: StorageOptions | None = None) -> str:
    """Write ``data`` to ``uri`` via a temporary sibling and a rename; returns ``uri``.

    Local: ``mirage_model.io.atomic.atomic_write_bytes`` (temp file + fsync + ``os.replace``).
    S3: upload to ``.tmp-*`` then ``mv``.
    """
    if not is_s3(uri):
        _atomic.atomic_write_bytes(filesystem(uri, options)[1], data)
        return str(uri)

    def write(fs, tmp: str, local: bool) -> None:
        fs.pipe_file(tmp, bytes(data))

    return _publish(uri, options, write)


def atomic_write_file(local_src: str | os.PathLike, uri: str | os.PathLike,
                      options: StorageOptions | None = None, *, move: bool = False) -> str:
    """Publish the local file ``local_src`` at ``uri`` atomically; returns ``uri``.

    With ``move=True`` a local source on the same filesystem is renamed instead of copied.
    """
    src = os.fspath(local_src)
    if not os.path.isfile(src):
        raise FileNotFoundError(src)

    def write(fs, tmp: str, local: bool) -> None:
        if not local:
            fs.put_file(src, tmp)
            return
        if move:
            shutil.move(src, tmp)
        else:
            shutil.copyfile(src, tmp)

    _publish(uri, options, write)
    if move and os.path.exists(src):
        os.unlink(src)
    return str(uri)


def _publish(uri: str | os.PathLike, options: StorageOptions | None, write) -> str:
    """The one atomic-publish protocol: ``write(fs, tmp, local)`` fills a temporary name next to
    the target, which is then renamed onto it (locally ``mirage_model.io.atomic.atomic_path``:
    fsync + ``os.replace``; s3fs ``mv`` on S3, where the final key appears whole). The temporary
    is removed whatever happens."""
    fs, path = filesystem(uri, options)
    if isinstance(fs, LocalFileSystem):
        with _atomic.atomic_path(path) as tmp:
            write(fs, str(tmp), True)
        return str(uri)
    parent, name = _split_parent(fs, path)
    tmp = f"{parent}/{tmp_name(name)}"
    try:
        write(fs, tmp, False)
        fs.mv(tmp, path)
    finally:
        _quiet_rm(fs, tmp)
    return str(uri)


def _quiet_rm(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except (FileNotFoundError, OSError):  # best effort: a resume scan removes leftovers
        pass


# ----------------------------------------------------------------------------------------------
# Listing inputs
# ----------------------------------------------------------------------------------------------
def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _matches(path: str, suffixes: Sequence[str] | None) -> bool:
    if not suffixes:
        return True
    return path.lower().endswith(tuple(s.lower() for s in suffixes))


def _read_manifest(fs: fsspec.AbstractFileSystem, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(URI, the row's other fields) of each entry of a .txt or .jsonl manifest; relative entries
    resolve against its folder."""
    text = fs.cat_file(path).decode("utf-8")
    parent, _ = _split_parent(fs, path)
    base = _to_uri(fs, parent)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.lower().endswith(".jsonl"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{_to_uri(fs, path)}:{lineno}: invalid JSON ({exc})") from exc
            entry = obj.get("uri", obj.get("path")) if isinstance(obj, dict) else None
            if not isinstance(entry, str) or not entry:
                raise ValueError(f"{_to_uri(fs, path)}:{lineno}: expected an object with a "
                                 "'uri' or 'path' string")
            fields = {k: v for k, v in obj.items() if k not in ("uri", "path")}
        else:
            entry, fields = line, {}
        if not is_s3(entry) and not entry.startswith("file://") and not os.path.isabs(entry):
            entry = join_uri(base, entry)
        out.append((entry, fields))
    return out


def manifest_fields(uri: str | os.PathLike, options: StorageOptions | None = None) -> dict[str, dict[str, Any]]:
    """The fields besides ``uri``/``path`` of each row of a ``.jsonl`` manifest (e.g. ``caption``),
    by the URI ``list_files`` gives for it (the first row of a URI listed twice); ``{}`` for any
    other source."""
    fs, path = filesystem(uri, options)
    if not path.lower().endswith(".jsonl") or _has_glob(path) or not fs.isfile(path):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for entry, fields in _read_manifest(fs, path):
        out.setdefault(entry, fields)
    return out


def list_files(uri_or_glob: str | os.PathLike, options: StorageOptions | None = None,
               suffixes: Sequence[str] | None = VIDEO_SUFFIXES) -> list[str]:
    """Expand inputs into a sorted, de-duplicated list of URIs.

    ``uri_or_glob`` may be a directory or ``s3://`` prefix (searched recursively, filtered by
    ``suffixes``; ``None`` keeps every file), a glob (filtered the same way), a manifest file
    (``.txt``/``.jsonl``; its entries are returned as listed, unfiltered, in file order with
    duplicates dropped) or a single file. Hidden temporary files (``.tmp-*``) are skipped.
    """
    fs, path = filesystem(uri_or_glob, options)
    text = str(uri_or_glob)
    if _has_glob(path):
        found = [p for p in fs.glob(path) if not fs.isdir(p)]
    elif path.lower().endswith(MANIFEST_SUFFIXES) and fs.isfile(path):
        return list(dict.fromkeys(entry for entry, _ in _read_manifest(fs, path)))
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.isfile(path):
        found = [path]
    else:
        raise FileNotFoundError(f"{text}: no such file, directory, prefix or manifest")
    keep = [p for p in found
            if _matches(p, suffixes) and not basename(p).startswith(TMP_PREFIX)]
    return sorted(dict.fromkeys(_to_uri(fs, p) for p in keep))


def find_names(uri: str | os.PathLike, pattern: str, options: StorageOptions | None = None
               ) -> list[str]:
    """URIs of the direct children of directory/prefix ``uri`` whose name matches ``pattern``."""
    fs, path = filesystem(uri, options)
    try:
        entries: Iterable[str] = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    out = [p for p in entries if fnmatch.fnmatchcase(basename(p), pattern)]
    return sorted(_to_uri(fs, p.rstrip("/")) for p in out)


# ----------------------------------------------------------------------------------------------
# webdataset
# ----------------------------------------------------------------------------------------------
def register_webdataset_s3(options: StorageOptions | None = None) -> None:
    """Make ``webdataset`` open ``s3://`` URLs through s3fs with ``options`` (this process only)."""
    import importlib

    wds_gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function

    opts = _opts(options)

    def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO:
        if mode not in ("rb", "wb"):
            raise ValueError(f"{url}: unsupported mode {mode!r}")
        fs, path = filesystem(url, opts)
        return fs.open(path, mode)

    wds_gopen.gopen_schemes["s3"] = gopen_s3
    wds_gopen.gopen_schemes["s3a"] = gopen_s3


def local_path(uri: str | os.PathLike) -> Path:
    """``Path`` for a local URI (ValueError for ``s3://``)."""
    if is_s3(uri):
        raise ValueError(f"{uri}: not a local path")
    return Path(_local_path(uri))


# ----------------------------------------------------------------------------------------------
# A node-local copy of a remote directory (model weights, checkpoints)
# ----------------------------------------------------------------------------------------------
COMPLETE_FILE = ".mirage-complete.json"


def local_copy(uri: str | os.PathLike, options: StorageOptions | None = None, *,
               names: Sequence[str] | None = None, kind: str = "models") -> Path:
    """A local directory holding the files under ``uri``: ``uri`` itself when it is local; an
    ``s3://`` prefix is downloaded once per machine into ``$MIRAGE_CACHE`` (default
    ``~/.cache/mirage``)/``<kind>``/ (keyed by the URI). Every process of a node asks for the same
    copy: the first downloads it under a file lock while the others wait, into a temporary
    directory that is renamed only when every file is there with the size the listing gives, so a
    failed or interrupted download is never taken for the model. ``names``: only these relative
    paths (the ones missing remotely are skipped). The key is the URI: weights rewritten under the
    same URI need the cache entry removed."""
    import fcntl
    import hashlib

    if not is_s3(uri):
        return local_path(uri).expanduser()
    text = str(uri).rstrip("/")
    cache = Path(os.environ.get("MIRAGE_CACHE", "~/.cache/mirage")).expanduser() / kind
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    local = cache / key
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if (local / COMPLETE_FILE).is_file():
            return local
        fs, root = filesystem(text, options)
        root = root.rstrip("/")
        listing = {p[len(root) + 1:]: (p, int(info.get("size") or 0))
                   for p, info in fs.find(root, detail=True).items() if p.startswith(root + "/")}
        if names is not None:
            listing = {n: listing[n] for n in names if n in listing}
        if not listing:
            raise FileNotFoundError(f"{text}: no files to download")
        for stale in cache.glob(f"{key}.tmp-*"):  # a download that died with its process (the lock is free)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f"{key}.tmp-{os.getpid()}"
        logger.info("downloading %s (%d files, %.1f MiB) to %s", text, len(listing),
                    sum(s for _, s in listing.values()) / 2**20, local)
        try:
            for name, (src, expected) in listing.items():
                dst = tmp / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                with fs.open(src, "rb") as f, open(dst, "wb") as g:
                    shutil.copyfileobj(f, g, 16 << 20)
                if dst.stat().st_size != expected:
                    raise OSError(f"{text}/{name}: downloaded {dst.stat().st_size} bytes, the listing says {expected}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / COMPLETE_FILE).write_text(json.dumps({"uri": text, "files": {n: s for n, (_, s) in listing.items()}}))
        shutil.rmtree(local, ignore_errors=True)  # an incomplete copy of an older version of this code
        tmp.rename(local)
    return local
