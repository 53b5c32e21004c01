"""Training ingest: every Ray Train worker streams its own shards (docs/training.md, "Ingest").

The driver lists the shards and reads each tar's member headers (a truncated or foreign file is
skipped with its reason); it decodes nothing. ``ShardSplit`` -- the ``DataConfig`` that Ray Train
calls to split the ``train`` dataset -- gives worker ``r`` of ``W`` the shards ``r, r + W, ...`` (in
sorted order) as its own streaming Ray Data ``read_webdataset`` with the order preserved, so each
shard is read by exactly one worker once per epoch and the row order is the same on every run.
In the worker, ``ray.train.get_dataset_shard("train")`` is that stream; ``SampleStream`` puts it
through a seeded shuffle buffer and keeps the exact data position for checkpoints. A sample that
misses a member or fails to decode is skipped and counted where it is met (``sample_from_row``).

Ray Data's own ``streaming_split`` balances rows dynamically between workers, which is faster to
start but gives a different split on every run, so an interrupted epoch could not be resumed
exactly; splitting by shard is WebDataset's ``split_by_node`` and needs at least as many shards as
workers (``mirage preprocess --set inputs_per_shard=...`` sets the shard size).
"""

from __future__ import annotations

import json
import logging
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.train import DataConfig

from mirage_model.io.sample_format import REQUIRED_MEMBERS
from pipeline import storage
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)


def list_shards(uri: str, options: StorageOptions) -> list[str]:
    """The .tar shards under a directory / prefix (or matching a glob), sorted."""
    found = storage.list_files(uri, options, suffixes=(".tar",))
    shards = sorted(u for u in found if u.endswith(".tar") and not storage.basename(u).startswith(".tmp"))
    if not shards:
        raise FileNotFoundError(f"data.shards {uri}: no .tar shards found (run `mirage preprocess` first)")
    return shards


def check_shards(uris: list[str], options: StorageOptions, threads: int = 32) -> tuple[list[str], list[dict]]:
    """Shards whose tar headers read to the end-of-archive marker (member data is seeked over, not
    read); the others with a reason (truncated, not a tar, empty). Reading headers is round trips
    to storage, not CPU, so ``threads`` shards are checked at once. Runs on the driver, which holds
    the storage credentials."""

    def check(uri: str) -> str | None:
        try:
            with storage.open_uri(uri, "rb", options) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                if not tar.getmembers():
                    raise tarfile.ReadError("empty archive")
                # tarfile stops quietly at a header cut short: only the end-of-archive marker (two
                # zero blocks, written by every tar writer) shows that nothing is missing
                f.seek(tar.offset)
                end = f.read(2 * tarfile.BLOCKSIZE)
                if len(end) < 2 * tarfile.BLOCKSIZE or any(end):
                    raise tarfile.ReadError(f"truncated after {len(tar.getmembers())} members "
                                            "(no end-of-archive marker)")
        except (tarfile.TarError, OSError, EOFError) as exc:
            return str(exc) or type(exc).__name__
        return None

    good, bad = [], []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris)))) as pool:
        for uri, error in zip(uris, pool.map(check, uris)):
            if error is None:
                good.append(uri)
            else:
                bad.append({"shard": uri, "reason": f"unreadable shard: {error}"})
                log.warning("skipping shard %s: %s", uri, error)
    return good, bad


def first_sample(uri: str, options: StorageOptions) -> tuple[str, set[str], dict[str, Any]]:
    """(key, member names, ``meta.json``) of a shard's first sample, read from the tar's start only."""
    key, names, meta = "", set(), {}
    with storage.open_uri(uri, "rb", options) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            k, _, ext = member.name.partition(".")
            key = key or k
            if k != key:
                break
            names.add(ext)
            if ext == "meta.json":
                meta = json.loads(tar.extractfile(member).read())
    return key, names, meta


def read_shards(uris: list[str], options: StorageOptions):
    """A lazy Ray dataset of raw samples (one row per sample, one column per member), in shard order."""
    import ray

    fs, _ = storage.pyarrow_filesystem(uris[0], options)
    paths = [storage.filesystem(u, options)[1] for u in uris]
    ds = ray.data.read_webdataset(paths, filesystem=fs, decoder=None)
    ds.context.execution_options.preserve_order = True
    return ds


def shards_for_rank(uris: list[str], rank: int, world: int) -> list[str]:
    """Worker ``rank``'s shards: every ``world``-th of the sorted list, starting at ``rank``."""
    if len(uris) < world:
        raise ValueError(f"{len(uris)} readable shards for {world} training workers: each worker reads whole "
                         "shards, so write at least one per worker (smaller `inputs_per_shard` in "
                         "`mirage preprocess`) or use fewer workers")
    return sorted(uris)[rank::world]


class ShardSplit(DataConfig):
    """Ray Train's split of the ``train`` dataset by shard: worker ``r`` streams ``shards_for_rank(r)``.

    The per-worker reads are built here, on the driver, where the storage credentials are (Ray
    Train calls ``configure`` in its controller, once per worker group and again after a restart);
    the ``train`` dataset Train passes in is the lazy read of all shards, which they replace. Other
    datasets (the ``validation`` read) reach every worker whole."""

    def __init__(self, uris: list[str], options: StorageOptions, world_size: int):
        super().__init__(datasets_to_split=["train"])
        self.per_rank = [read_shards(shards_for_rank(uris, rank, world_size), options) for rank in range(world_size)]
        for rank, ds in enumerate(self.per_rank):
            ds.set_name(f"train_rank{rank}")

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        """``train``: each worker its own shards; any other dataset (``validation``): all of it."""
        if world_size != len(self.per_rank):
            raise ValueError(f"ShardSplit was built for {len(self.per_rank)} workers, Train has {world_size}")
        out = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            for rank in range(world_size):
                out[rank][name] = (self.per_rank[rank] if name == "train" else ds).iterator()
        return out


def _present(value: Any) -> bool:
    """A member is present when it holds bytes (a column missing in one sample reads as None/NaN)."""
    return isinstance(value, (bytes, bytearray, memoryview, str))


def strip_row(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data webdataset rows -> the raw member dict ``mirage_model.io.sample_format.decode_sample`` expects."""
    return {k: v for k, v in row.items() if _present(v)}


def sample_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A decoded sample from a raw row; ``ValueError`` naming the sample and the reason otherwise."""
    from mirage_model.io.sample_format import decode_sample

    key = str(row.get("__key__"))
    missing = [m for m in REQUIRED_MEMBERS if not _present(row.get(m))]
    if missing:
        raise ValueError(f"sample {key}: missing member(s) {missing}")
    try:
        return decode_sample(strip_row(row))
    except Exception as exc:  # noqa: BLE001 - any decode failure names the sample
        raise ValueError(f"sample {key}: {type(exc).__name__}: {exc}") from exc
