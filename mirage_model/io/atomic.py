"""Atomic writes of local files: a temporary sibling, ``fsync``, then ``os.replace``.

A reader of ``path`` sees either the previous file or the complete new one, never a partial write,
and a crash leaves at most a temporary file. The temporary lives in the destination directory (so
the rename never crosses filesystems) and is named ``.tmp-<random>-<name>``: it starts with
``TMP_PREFIX`` (``.tmp-``), which resume scans and clean-ups delete, and it keeps ``name``'s suffix,
so writers that choose a format from the file extension (PyAV, matplotlib, numpy) still work.

Local paths only; ``pipeline.storage.atomic_write_bytes`` / ``atomic_write_file`` also publish to
``s3://`` and use this module for local destinations. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_PREFIX", "atomic_path", "atomic_write_bytes", "atomic_write_text", "tmp_name"]

TMP_PREFIX = ".tmp-"
"""Prefix of every temporary name used by the atomic writers (and deleted by resume scans)."""


def tmp_name(name: str) -> str:
    """A temporary sibling name for ``name``: ``.tmp-<12 hex digits>-<name>`` (keeps the suffix)."""
    return f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The body writes the complete file at the yielded path (any writer that takes a file name). When
    the body returns, the temporary is fsynced (``fsync=True``) and renamed onto ``path`` with
    ``os.replace`` (an existing file is replaced). When it raises, the temporary is removed, ``path``
    is left as it was, and the exception propagates. The parent directory is created if needed.

    Example::

        with atomic_path(out / "video.mp4") as tmp:
            encode(str(tmp))
    """
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    if not name:
        raise ValueError(f"atomic_path: {os.fspath(path)!r} names a directory, not a file")
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, tmp_name(name))
    try:
        yield Path(tmp)
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to the local file ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to the local file ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding) as f:
        f.write(text)
