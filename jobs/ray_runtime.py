"""Connecting a job to Ray: a cluster at an address, or a local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` or start a local Ray on 127.0.0.1 (idempotent: an initialised Ray is
    reused, so the jobs of one process share it).

    The local Ray runs its dashboard: Ray's state API lives there, and Ray Train's placement-group
    cleaner polls it (without it, the cleaner logs "Failed to query Ray Train Controller actor
    state" every few seconds and never learns that the controller has exited)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind loopback, not the LAN address
    # Ray Data's progress display on a terminal only: into a file or a pipe (a cluster job's log, CI,
    # `mirage demo > log`) it prints a 15-line status block every 10 s; `collect` logs one line per
    # finished unit instead. Datasets copy this context when they are built, so it is set here.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stdout.isatty()
    if ray.is_initialized():
        return
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)


def ray_data_info_to_files_only() -> None:
    """Ray Data's INFO lines (each execution's "Starting execution", plan and "finished") go to Ray's
    log files (``ray-data.log`` in the session directory) and no longer to this process's console.
    For a training worker, which streams its shards again each epoch: forwarded to the driver
    (``log_to_driver``), those lines were most of a run's log. Warnings and errors still print."""
    import ray.data  # noqa: F401 - importing it configures the "ray.data" logger

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


def collect(dataset, total: int, what: str, rows: list[dict] | None = None) -> list[dict]:
    """All rows of a Ray dataset, logging one line per finished row (``what`` names the unit).
    Rows are appended to ``rows`` when given, so a caller still has those that arrived before a
    failure."""
    rows = [] if rows is None else rows
    for row in dataset.iter_rows():
        rows.append(row)
        log.info("%s %d/%d done", what, len(rows), total)
    return rows
