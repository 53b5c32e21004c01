"""Connecting a job to Ray: a cluster at an address, or a local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` or start a local Ray on 127.0.0.1 (idempotent: an initialised Ray is
    reused, so the jobs of one process share it).

    The local Ray runs its dashboard: Ray's state API lives there, and Ray Train's placement-group
    cleaner polls it (without it, the cleaner logs "Failed to query Ray Train Controller actor
    state" every few seconds and never learns that the controller has exited)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind loopback, not the LAN address
    if ray.is_initialized():
        return
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
