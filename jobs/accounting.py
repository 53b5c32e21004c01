"""What a job did, in one file a monitoring system or a benchmark can read: ``summary.json``.

Every job writes it next to its output (``write_summary``) and logs its numbers to the job's MLflow
run. The common keys, present in every job's summary (null where a job has no such thing):

    job, wall_s, inputs, accepted, rejected {reason: n}, clips, frames, bytes_in, bytes_out,
    stages {name: {busy_s, per_s}}   busy seconds summed over workers, items (frames) per busy second
    peak_rss_mib {driver, <stage or worker>: MiB}   the largest process of each kind
    details {...}                    the job's own summary

It is written atomically (temporary name, then rename), so a reader never sees half of one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipeline import storage
from pipeline.stages import peak_rss_mib
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
COMMON_KEYS = ("job", "wall_s", "inputs", "accepted", "rejected", "clips", "frames", "bytes_in", "bytes_out",
               "stages", "peak_rss_mib")


def job_summary(job: str, wall_s: float, *, inputs: int | None = None, accepted: int | None = None,
                rejected: dict[str, int] | None = None, clips: int | None = None, frames: int | None = None,
                bytes_in: int | None = None, bytes_out: int | None = None,
                stage_seconds: dict[str, float] | None = None, stage_items: dict[str, int] | None = None,
                peak_rss: dict[str, float] | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The common summary; ``stage_items`` (default: ``frames`` for every stage) gives throughput."""
    stages = {}
    for name, busy in (stage_seconds or {}).items():
        items = (stage_items or {}).get(name, frames)
        stages[name] = {"busy_s": round(float(busy), 3),
                        "per_s": round(items / busy, 3) if items is not None and busy > 0 else None}
    return {"job": job, "wall_s": round(float(wall_s), 3), "inputs": inputs, "accepted": accepted,
            "rejected": dict(rejected or {}), "clips": clips, "frames": frames, "bytes_in": bytes_in,
            "bytes_out": bytes_out, "stages": stages,
            "peak_rss_mib": {"driver": round(peak_rss_mib(), 1),
                             **{k: round(float(v), 1) for k, v in (peak_rss or {}).items()}},
            "details": details or {}}


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers as MLflow metrics (``summary.inputs``, ``summary.stage.poses.busy_s``, ...)."""
    out: dict[str, float] = {}
    for key in ("wall_s", "inputs", "accepted", "clips", "frames", "bytes_in", "bytes_out"):
        if summary.get(key) is not None:
            out[f"summary.{key}"] = summary[key]
    for reason, n in summary["rejected"].items():
        out[f"summary.rejected.{reason}"] = n
    for name, st in summary["stages"].items():
        out.update({f"summary.stage.{name}.{k}": v for k, v in st.items() if v is not None})
    out.update({f"summary.peak_rss_mib.{k}": v for k, v in summary["peak_rss_mib"].items()})
    return out


def write_summary(summary: dict[str, Any], uri: str, options: StorageOptions | None = None, tracker=None) -> str:
    """Write ``summary`` to ``uri`` (a ``summary.json`` path, local or ``s3://``) atomically, and log
    its numbers to ``tracker`` (a ``jobs.tracking.Tracker``) when given. Returns the URI."""
    missing = [k for k in COMMON_KEYS if k not in summary]
    if missing:
        raise ValueError(f"summary for {uri} lacks {missing} (build it with job_summary)")
    storage.atomic_write_bytes(uri, json.dumps(summary, indent=1, sort_keys=True, default=str).encode(), options)
    if tracker is not None:
        tracker.log_metrics(summary_metrics(summary))
    log.info("summary: %s", uri)
    return uri
