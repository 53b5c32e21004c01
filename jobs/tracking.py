"""The one way a job tracks itself in MLflow: open (or resume) a run, log params, metrics, artifacts.

Every job (preprocess, train, generate-batch, demo) goes through :class:`Tracker`. It talks to the
store through an explicit ``MlflowClient`` -- never the fluent ``mlflow.start_run`` API -- so the
process-wide MLflow state (active run, tracking URI) is left alone, a resumed training run can
reopen its run by id, and Ray Train workers can attach to the driver's run (rank 0 only; other
ranks get a disabled tracker whose calls do nothing). Ray's ``setup_mlflow`` configures the
fluent API per worker, which is what this avoids.

One rule for parameters: nested configs are flattened to dotted keys (``stages.0.lr``) and values
longer than :data:`MAX_PARAM_CHARS` are truncated. Metrics that are not finite are dropped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

from pipeline.config import MlflowConfig

MAX_PARAM_CHARS = 500
"""Longest parameter value logged (MLflow allows 6000; long lists are unreadable in the UI anyway)."""

_BATCH = 100  # MLflow's limit of params per log_batch call


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists of dicts get their index: ``stages.0.lr``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = v
    return out


def sqlite_path(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local sqlite store: ``<db dir>/mlartifacts`` (MLflow's default is ``./mlruns`` of
    whatever directory the job ran in). None for servers, which choose their own."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")


def experiment_id(client, name: str, tracking_uri: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name``, created on first use (with the store's artifact root)."""
    db = sqlite_path(tracking_uri)
    if db:
        os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location or
                                    default_artifact_location(tracking_uri))


def _finite_number(v: Any) -> bool:
    """A finite real number (Python, numpy or a 0-d tensor; not a bool)."""
    if isinstance(v, bool) or not hasattr(v, "__float__"):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class Tracker:
    """One MLflow run. Build it with :meth:`start` (driver), :meth:`attach` (a worker) or
    :meth:`disabled`; every method of a disabled tracker is a no-op."""

    def __init__(self, client=None, run_id: str | None = None, tracking_uri: str | None = None,
                 experiment_id: str | None = None):
        self.client, self.run_id = client, run_id
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id

    @property
    def enabled(self) -> bool:
        return self.client is not None

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def disabled(cls) -> Tracker:
        return cls()

    @classmethod
    def start(cls, cfg: MlflowConfig, job: str, run_name: str | None = None,
              tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
              resume_run_id: str | None = None) -> Tracker:
        """A new run in ``cfg.experiment`` (tagged ``mirage.job = job``) with ``params`` flattened,
        or the existing run ``resume_run_id`` when the store still has it. Disabled when
        ``cfg.enabled`` is false."""
        if not cfg.enabled:
            return cls.disabled()
        from mlflow.tracking import MlflowClient

        uri = cfg.uri()
        client = MlflowClient(uri)
        exp_id = experiment_id(client, cfg.experiment, uri, cfg.artifact_location)
        if resume_run_id:
            try:
                active = client.get_run(resume_run_id).info.lifecycle_stage == "active"
            except Exception:  # noqa: BLE001 - another store: start a fresh run
                active = False
            if active:  # a deleted run cannot take metrics: then a fresh one
                client.update_run(resume_run_id, status="RUNNING")
                return cls(client, resume_run_id, uri, exp_id)
        run = client.create_run(exp_id, run_name=cfg.run_name or run_name,
                                tags={"mirage.job": job, **(tags or {})})
        tracker = cls(client, run.info.run_id, uri, exp_id)
        if params:
            tracker.log_params(params)
        return tracker

    @classmethod
    def attach(cls, tracking_uri: str | None, run_id: str | None, enabled: bool = True) -> Tracker:
        """The driver's run, from a worker process (pass ``enabled=rank == 0``)."""
        if not (enabled and tracking_uri and run_id):
            return cls.disabled()
        from mlflow.tracking import MlflowClient

        return cls(MlflowClient(tracking_uri), run_id, tracking_uri)

    # -- logging -----------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(flatten(params).items())]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def log_metrics(self, values: Mapping[str, Any], step: int = 0) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in values.items() if _finite_number(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of a metric, sorted by step (empty when disabled)."""
        if not self.enabled:
            return []
        return sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status=status)

    def ui_url(self, port: int = 5000) -> str:
        """Where ``mlflow ui`` shows this run (on its default port)."""
        return f"http://127.0.0.1:{port}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def summary(self) -> dict[str, str | None]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.tracking_uri}
