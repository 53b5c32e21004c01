"""MLflow plumbing shared by the jobs: one client per tracking URI, experiments with a sane artifact root."""

from __future__ import annotations

import os


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
