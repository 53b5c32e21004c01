"""``mirage submit`` / ``mirage jobs``: run Mirage jobs on a remote Ray cluster through the Ray Jobs API.

    mirage submit train --address http://HEAD:8265 --config configs/train/tiny.yaml [-- --workers 8]
    mirage jobs status|logs|stop JOB_ID  /  mirage jobs list

How a job reaches the cluster (``ray.job_submission.JobSubmissionClient``):

* code: by default the repo root is uploaded as the job's ``working_dir`` (minus ``.git``, ``.venv``,
  ``runs/``, caches and files over 10 MiB); the entrypoint ``python -m jobs.cli KIND ...`` then
  imports that copy. ``--no-working-dir`` uploads nothing and runs the package installed on the cluster
  (``ray_cluster.yaml`` setup commands, the KubeRay image).
* config: when the file is inside the uploaded working dir, the entrypoint names it by its relative path.
  Otherwise (outside it, git-ignored, or ``--no-working-dir``) its bytes travel inline, base64 in the
  job's env var ``MIRAGE_JOB_CONFIG_B64``; the entrypoint ``python -m jobs.cli --inline-config KIND``
  writes them to a temp file on the cluster and runs ``mirage KIND --config <that file>``.
* paths: a relative path in the config (or in ``--set`` / a short flag) is relative to the submitting
  directory, as it is for a local run. For a cluster that is this machine (every node's hostname, as
  its dashboard reports them, is this one's) it is made absolute; on any other cluster (a
  port-forwarded head on 127.0.0.1 included) an input inside the upload is made relative to the upload's root (the job's working
  directory), and anything else is refused with the key and the reason (``plan_paths``). The MLflow
  store is the config's ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI`` (forwarded), else, for a
  cluster that is this machine, this directory's default store.
* environment: AWS_* credentials/region/endpoint, MLflow settings and every ``MIRAGE_*`` variable set
  locally are copied into ``runtime_env.env_vars`` (``--no-forward-env`` turns that off), plus
  ``--env KEY=VAL``. They are visible to anyone who can read the dashboard's job details.
* auth: Ray 2.60 token auth as the ``ray`` CLI does it: ``RAY_AUTH_MODE=token`` or a token in
  ``~/.ray/auth_token`` (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) adds the bearer header.

Exit codes: 0 job succeeded (or submitted with ``--no-wait``), 1 job failed or was stopped, 2 usage /
connection errors, 130 interrupted while following (the job keeps running).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

log = logging.getLogger(__name__)

JOB_KINDS = ("preprocess", "train", "train-vae", "generate-batch", "eval-memory", "eval", "demo")
"""Every job with a config (``jobs.config.JOB_CONFIGS``)."""
# Forwarded from the local environment when set (plus every MIRAGE_* except those below).
FORWARD_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
               "AWS_REGION", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
               "MLFLOW_EXPERIMENT_NAME")
FORWARD_PREFIX = "MIRAGE_"
ADDRESS_ENV = ("MIRAGE_RAY_ADDRESS", "RAY_ADDRESS")  # first one set wins
INLINE_CONFIG_ENV = "MIRAGE_JOB_CONFIG_B64"
INLINE_NAME_ENV = "MIRAGE_JOB_CONFIG_NAME"
NOT_FORWARDED = {"MIRAGE_RAY_ADDRESS", INLINE_CONFIG_ENV, INLINE_NAME_ENV}
# gitwildmatch patterns relative to the working dir. No trailing "/": a directory pattern must match
# the directory itself so that Ray's packager prunes it instead of walking every file below it.
DEFAULT_EXCLUDES = (".git", ".venv", "venv", "/runs", "/mlruns", "/build", "/dist", "__pycache__", "*.pyc",
                    ".pytest_cache", "*.egg-info", ".mypy_cache", ".ruff_cache")
_PRUNE_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_PRUNE_TOP = {"runs", "mlruns", "build", "dist"}
MAX_FILE_BYTES = 10 * 1024 * 1024      # Ray warns above this per file; the whole package must stay < 512 MiB
MAX_INLINE_CONFIG_BYTES = 64 * 1024    # one env var; Linux caps a single one at 128 KiB
REPO_ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
HEAD_HINT = ("start a head with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --dashboard-host "
             "127.0.0.1` (local test), `ray up ray_cluster.yaml && ray dashboard ray_cluster.yaml` (AWS), or "
             "`kubectl port-forward svc/mirage-head-svc 8265:8265` (KubeRay), then pass --address "
             "http://HOST:8265 (or set MIRAGE_RAY_ADDRESS)")


class SubmitError(ValueError):
    """A user-facing error (bad arguments, unreachable cluster, auth); the CLI prints it and exits 2."""


@dataclass
class JobSpec:
    """What is sent to ``JobSubmissionClient.submit_job``."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    submission_id: str | None = None
    notes: list[str] = field(default_factory=list)  # how the config's paths were resolved, for the user


# ----------------------------------------------------------------------------------------------
# Building the job: environment, working dir, config, entrypoint (no Ray import needed).
# ----------------------------------------------------------------------------------------------

def parse_env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` -> dict; a clear error for anything that is not ``KEY=VALUE``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not (key[0].isalpha() or key[0] == "_") or \
                not all(c.isalnum() or c == "_" for c in key):
            raise SubmitError(f"--env expects KEY=VALUE with a shell-style KEY, got {pair!r}")
        out[key] = value
    return out


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The local variables a job needs on the cluster: S3/AWS, MLflow and ``MIRAGE_*`` (when set)."""
    environ = os.environ if environ is None else environ
    out = {k: environ[k] for k in FORWARD_ENV if environ.get(k)}
    out.update({k: v for k, v in environ.items()
                if k.startswith(FORWARD_PREFIX) and k not in NOT_FORWARDED and v})
    return dict(sorted(out.items()))


def large_files(root: Path, max_bytes: int = MAX_FILE_BYTES) -> list[str]:
    """Files under ``root`` at least ``max_bytes`` big (posix paths relative to root), skipping the
    directories the default excludes drop anyway."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE_DIRS and not d.endswith(".egg-info")
                             and not (top and d in _PRUNE_TOP))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            try:
                if not path.is_symlink() and path.stat().st_size >= max_bytes:
                    found.append(path.relative_to(root).as_posix())
            except OSError:
                continue
    return found


def _glob_escape(path: str) -> str:
    """A literal path as a gitwildmatch pattern (file names may contain ``*?[]``)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", path)


def build_runtime_env(working_dir: Path | None, env_vars: Mapping[str, str],
                      max_file_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """``runtime_env`` with ``env_vars`` and, unless ``working_dir`` is None, the directory to upload
    with ``excludes`` = the default patterns + every file over ``max_file_bytes`` (anchored)."""
    runtime_env: dict[str, Any] = {}
    if working_dir is not None:
        root = Path(working_dir).resolve()
        big = large_files(root, max_file_bytes)
        if big:
            log.warning("not uploading %d file(s) over %d MiB: %s", len(big), max_file_bytes >> 20,
                        ", ".join(big[:5]) + (" ..." if len(big) > 5 else ""))
        runtime_env["working_dir"] = str(root)
        runtime_env["excludes"] = list(DEFAULT_EXCLUDES) + ["/" + _glob_escape(p) for p in big]
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def _pathspec(lines: Sequence[str]):
    from ray._private.thirdparty.pathspec import PathSpec  # the matcher Ray's packager uses

    return PathSpec.from_lines("gitwildmatch", list(lines))


def is_uploaded(path: Path, root: Path, excludes: Sequence[str]) -> bool:
    """Whether Ray's working-dir packager would include ``path``: inside ``root``, not matched by
    ``excludes`` nor by a ``.gitignore`` / ``.rayignore`` on the way down (same rules as Ray's
    ``_dir_travel``). Any doubt (e.g. the private matcher moved) answers False: the caller then inlines."""
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    parts = rel.parts
    if not parts:
        return False
    try:
        spec = _pathspec(excludes)
        if any(spec.match_file("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            return False
        include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
        for i in range(len(parts)):
            directory = Path(root).resolve().joinpath(*parts[:i])
            for name in (".gitignore", ".rayignore"):
                ignore = directory / name
                if ignore.is_file() and (include_gitignore or name == ".rayignore"):
                    sub = _pathspec(ignore.read_text().splitlines())
                    if any(sub.match_file("/".join(parts[i:j])) for j in range(i + 1, len(parts) + 1)):
                        return False
    except Exception:  # noqa: BLE001 - fall back to inlining, which is always correct
        return False
    return True


def default_working_dir() -> Path:
    """The repo checkout this module lives in (the thing to upload by default)."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "mirage_model").is_dir():
        return REPO_ROOT
    raise SubmitError(f"no repo checkout next to {Path(__file__).name} (installed package?): pass "
                      "--working-dir DIR, or --no-working-dir to run the package installed on the cluster")


def cluster_on_this_machine(client, wait_s: float = 15.0) -> bool:
    """Whether every alive node of the cluster behind ``client`` is this machine (then its jobs see
    this disk). Asked from the dashboard (its node hostnames), not read from the address: a
    port-forwarded or tunnelled remote head is on 127.0.0.1 too. Any doubt answers False."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            response = client._do_request("GET", "/nodes?view=hostNameList")
            data = response.json()["data"]
            hosts = set(data.get("hostNameList", data.get("host_name_list")))  # the dashboard camel-cases its keys
        except Exception as exc:  # noqa: BLE001 - an older / proxied dashboard: treat as remote (the safe side)
            log.warning("could not list the cluster's hosts (%s): treating it as remote", exc)
            return False
        if hosts or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # a head started a moment ago lists its own node once it has registered
    if not hosts:
        log.warning("the cluster lists no alive node after %.0f s: treating it as remote", wait_s)
    return hosts == {socket.gethostname()}


@dataclass
class PathPlan:
    """How a job's relative paths reach the cluster: ``overrides`` (``KEY=VALUE``, appended to the
    job's command as ``--set``), ``env`` (a resolved MLflow store) and one line per change."""

    overrides: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _job_config(command: Sequence[str], config: Path | None):
    """The job's config as the job itself will load it (file, short flags, ``--set``)."""
    from jobs.config import CONFIG_DIR
    from jobs.job_args import add_job_parser, job_config

    parser = argparse.ArgumentParser(add_help=False)
    add_job_parser(parser.add_subparsers(dest="command"), command[0], func=None)
    argv = [command[0], *(["--config", str(config)] if config is not None else []), *command[1:]]
    args, _ = parser.parse_known_args(argv)
    quick = command[0] == "demo" and "--quick" in command[1:]
    try:
        return job_config(args, CONFIG_DIR / "demo" / "quick.yaml" if quick else None)
    except (ValueError, FileNotFoundError) as exc:  # pydantic's ValidationError is a ValueError
        raise SubmitError(f"mirage {command[0]}: the config does not validate: {exc}") from None


def _sqlite_file(uri: str) -> str | None:
    """The file of a ``sqlite:///`` tracking URI, None for anything else."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def plan_paths(command: Sequence[str], config: Path | None, *, root: Path | None, excludes: Sequence[str],
               local: bool, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> PathPlan:
    """Make every relative path of the job's config mean on the cluster what it means here.

    A relative path is relative to ``cwd`` (the submitting directory). On a cluster whose head
    runs on this machine (``local``) it becomes absolute. On a remote cluster an input inside the
    upload becomes relative to the job's working directory (the upload's root); any other relative
    path is refused, naming the key and why: the cluster cannot read this machine's disk, and what
    a job writes under its working directory is deleted with it. ``env`` holds the variables the
    job will get: a relative ``sqlite:///`` MLflow store (there or in the config) is treated like
    an output path, and without any store a local cluster is given this directory's default one,
    so that ``mlflow ui`` here shows the job."""
    from jobs.config import JOB_CONFIGS
    from jobs.resources import RESOURCE_ROOT
    from mirage_model.config import path_values
    from pipeline.config import DEFAULT_TRACKING_URI

    plan = PathPlan()
    if not command or command[0] not in JOB_CONFIGS:
        return plan
    cwd = Path.cwd() if cwd is None else Path(cwd)
    env = dict(env or {})
    cfg = _job_config(command, config)
    where = "this machine" if local else "a remote cluster"

    def resolved(key: str, value: str, role: str) -> str:
        target = (cwd / Path(value).expanduser()).resolve()
        if local:
            return str(target)
        if role == "input" and root is not None and target.exists() and is_uploaded(target, root, excludes):
            return target.relative_to(root).as_posix()
        why = ("is not uploaded with the job" if role == "input" and target.exists() else
               "does not exist here" if role == "input" else "would be written inside the job's working "
               "directory on the cluster and deleted with it")
        raise SubmitError(f"{key}: {value!r} is a relative path ({target}), which {why}; the cluster "
                          f"cannot read this machine's disk. Give an s3:// URI or an absolute path every node "
                          f"shares (e.g. --set {key}=s3://bucket/...), or submit to a cluster on this machine")

    for key, value, role in path_values(cfg):
        if "://" in value or Path(value).expanduser().is_absolute():
            if value.startswith("~"):  # the job would expand it on the cluster, in another home
                plan.overrides.append(f"{key}={json.dumps(str(Path(value).expanduser()))}")
            continue
        if role == "input" and not (cwd / value).exists() and (RESOURCE_ROOT / value).exists():
            continue  # a shipped resource (assets/world): the job finds its own copy the same way
        new = resolved(key, value, role)
        if new != value:
            plan.overrides.append(f"{key}={json.dumps(new)}")
            plan.notes.append(f"{key}: {value} -> {new}")

    if not cfg.mlflow.enabled:
        return plan
    if cfg.mlflow.tracking_uri:
        db = _sqlite_file(cfg.mlflow.tracking_uri)
        if db and not Path(db).is_absolute():
            uri = "sqlite:///" + resolved("mlflow.tracking_uri", db, "output")
            plan.overrides.append(f"mlflow.tracking_uri={json.dumps(uri)}")
            plan.notes.append(f"mlflow.tracking_uri: {cfg.mlflow.tracking_uri} -> {uri}")
        return plan
    uri = env.get("MLFLOW_TRACKING_URI") or (DEFAULT_TRACKING_URI if local else None)
    db = _sqlite_file(uri) if uri else None
    if db and not Path(db).is_absolute():
        plan.env["MLFLOW_TRACKING_URI"] = uri = "sqlite:///" + resolved("$MLFLOW_TRACKING_URI", db, "output")
    plan.notes.append(f"MLflow: {uri}" if uri else
                      f"MLflow: the cluster's $MLFLOW_TRACKING_URI (none set here for {where}); without one "
                      "the run goes to a sqlite file in the job's working directory and is lost")
    return plan


def build_job(command: Sequence[str], config: str | Path | None = None, *,
              working_dir: str | Path | None, env: Mapping[str, str] | None = None,
              forward_env: bool = True, environ: Mapping[str, str] | None = None,
              max_file_bytes: int = MAX_FILE_BYTES, submission_id: str | None = None,
              local_cluster: bool = False, cwd: str | Path | None = None) -> JobSpec:
    """The job for ``mirage <command...> [--config CONFIG]`` on the cluster.

    ``working_dir`` None: nothing is uploaded (the cluster's installed package runs). The config goes
    by relative path when the upload contains it, else inline (see the module docstring). The
    relative paths of a config job are made to mean the same on the cluster (:func:`plan_paths`;
    ``local_cluster``: the head runs on this machine; ``cwd``: the directory they are relative to)."""
    command = [str(c) for c in command]
    if not command:
        raise SubmitError("empty command")
    env_vars = forwarded_env(environ) if forward_env else {}
    env_vars.update(env or {})
    root = Path(working_dir).resolve() if working_dir is not None else None
    if root is not None and not root.is_dir():
        raise SubmitError(f"--working-dir {working_dir} is not a directory")
    runtime_env = build_runtime_env(root, {}, max_file_bytes)
    if config is not None and not Path(config).expanduser().is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    plan = plan_paths(command, Path(config).expanduser() if config is not None else None, root=root,
                      excludes=runtime_env.get("excludes", ()), local=local_cluster, cwd=cwd, env=env_vars)
    env_vars.update(plan.env)
    for item in plan.overrides:
        command += ["--set", item]
    cli = ["python", "-m", "jobs.cli"]
    metadata = {"mirage_command": command[0]}
    if config is None:
        args = cli + command
    else:
        cfg = Path(config).expanduser()
        metadata["mirage_config"] = str(config)
        if root is not None and is_uploaded(cfg, root, runtime_env["excludes"]):
            args = cli + [command[0], "--config", cfg.resolve().relative_to(root).as_posix(), *command[1:]]
        else:
            data = cfg.read_bytes()
            if len(data) > MAX_INLINE_CONFIG_BYTES:
                raise SubmitError(f"config {config} is {len(data)} bytes: too big to send inline "
                                  f"(max {MAX_INLINE_CONFIG_BYTES}); put it inside the working dir")
            env_vars[INLINE_CONFIG_ENV] = base64.b64encode(data).decode("ascii")
            env_vars[INLINE_NAME_ENV] = cfg.name
            args = [*cli, "--inline-config", *command]
            metadata["mirage_config_inline"] = "1"
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if submission_id is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        submission_id = f"mirage-{command[0]}-{stamp}-{secrets.token_hex(3)}"
    return JobSpec(entrypoint=shlex.join(args), runtime_env=runtime_env, metadata=metadata,
                   submission_id=submission_id, notes=plan.notes)


def materialize_inline_config(environ: Mapping[str, str] | None = None) -> Path:
    """Cluster side of an inline config: write ``$MIRAGE_JOB_CONFIG_B64`` to a temp file (named as the
    original) and return its path; ``python -m jobs.cli --inline-config KIND ...`` then runs
    ``mirage KIND --config <file> ...``."""
    environ = os.environ if environ is None else environ
    blob = environ.get(INLINE_CONFIG_ENV)
    if not blob:
        raise SubmitError(f"--inline-config: ${INLINE_CONFIG_ENV} is not set")
    name = Path(environ.get(INLINE_NAME_ENV) or "config.yaml").name
    path = Path(tempfile.mkdtemp(prefix="mirage-job-config-")) / name
    path.write_bytes(base64.b64decode(blob))
    print(f"mirage submit: config {name} written to {path}", flush=True)
    return path


# ----------------------------------------------------------------------------------------------
# Talking to the cluster.
# ----------------------------------------------------------------------------------------------

def resolve_address(address: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--address`` or ``$MIRAGE_RAY_ADDRESS`` / ``$RAY_ADDRESS``, as a dashboard URL (``http://`` added
    when no scheme is given)."""
    environ = os.environ if environ is None else environ
    if not address:
        address = next((environ[k] for k in ADDRESS_ENV if environ.get(k)), None)
    if not address:
        raise SubmitError("no Ray address: pass --address http://HEAD:8265 or set MIRAGE_RAY_ADDRESS "
                          "(the dashboard / Jobs API URL, port 8265 by default)")
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    return address


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens there (``requests`` can hang much longer)."""
    url = urlparse(address)
    if url.scheme not in ("http", "https"):
        return  # ray:// and module addresses: let Ray resolve them
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", port), timeout=timeout):
            pass
    except OSError as exc:
        raise SubmitError(f"cannot reach the Ray dashboard at {address} ({exc}); {HEAD_HINT}") from None


def enable_token_auth_if_configured() -> bool:
    """Ray 2.60 token auth, as ``ray start`` / ``ray.init(address=...)`` decide it: honour an explicit
    ``RAY_AUTH_MODE``, else switch to token mode when a token exists (``~/.ray/auth_token``,
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``). Returns whether token mode is on."""
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # older Ray: no token auth
        return False
    quiet = logging.getLogger(setup.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Token authentication is enabled for this Ray cluster" is misleading here
    try:
        return bool(setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False))
    finally:
        quiet.setLevel(level)


@contextlib.contextmanager
def _ray_errors(address: str) -> Iterator[None]:
    """Turn the SDK's connection / auth / HTTP errors into ``SubmitError`` naming the address."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        raise SubmitError(f"{address} rejected the request: {exc}. Token auth: set RAY_AUTH_MODE=token and "
                          "put the cluster's token in ~/.ray/auth_token (print it on the head with "
                          "`ray get-auth-token`)") from None
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise SubmitError(f"cannot reach the Ray dashboard at {address} ({exc}); {HEAD_HINT}") from None
    except RuntimeError as exc:
        msg = str(exc)
        if "404" in msg and "job" in msg.lower():
            raise SubmitError(f"{address}: no such job ({msg})") from None
        raise SubmitError(f"{address}: {msg}") from None


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    """Ray's client lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override its ``address`` argument: hide them."""
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_client(address: str | None):
    """A connected ``JobSubmissionClient`` for ``address`` (or the env default), with token auth."""
    url = resolve_address(address)
    check_reachable(url)
    enable_token_auth_if_configured()
    from ray.job_submission import JobSubmissionClient

    with _ray_errors(url), _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        client = JobSubmissionClient(url)
    client.mirage_address = url  # for messages
    return client


def _address_of(client) -> str:
    return getattr(client, "mirage_address", None) or getattr(client, "_address", "?")


def follow_logs(client, job_id: str, out: TextIO) -> None:
    """Stream the job's logs to ``out`` until it ends (websocket tail; polling if that breaks)."""
    written = 0

    async def _tail() -> None:
        nonlocal written
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            written += len(chunk)

    try:
        asyncio.run(_tail())
        return
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a proxy that drops websockets
        log.info("log tail failed (%s): polling instead", exc)
    while True:
        status = str(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        if len(logs) > written:
            out.write(logs[written:])
            out.flush()
            written = len(logs)
        if status in TERMINAL:
            return
        time.sleep(1.0)


def wait_for_job(client, job_id: str, timeout: float | None = None, poll: float = 0.5) -> str:
    """Poll until the job is terminal; returns SUCCEEDED / FAILED / STOPPED."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout} s")
        time.sleep(poll)


def submit(address, spec: JobSpec, *, wait: bool = True, out: TextIO | None = None,
           timeout: float | None = None) -> tuple[str, str | None]:
    """Submit ``spec`` to ``address`` (or a client of :func:`make_client`); with ``wait`` stream its
    logs to ``out`` and wait for the end.

    Returns (job id, final status or None when not waiting). ``mirage submit`` is this + exit codes."""
    out = out or sys.stdout
    client = address if hasattr(address, "submit_job") else make_client(address)
    url = _address_of(client)
    with _ray_errors(url):
        job_id = client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                                   metadata=spec.metadata, submission_id=spec.submission_id)
    print(f"submitted job {job_id} to {url}\n  entrypoint: {spec.entrypoint}", file=out, flush=True)
    env_names = sorted(spec.runtime_env.get("env_vars", {}))
    if env_names:
        print(f"  env: {', '.join(env_names)}", file=out, flush=True)
    for note in spec.notes:
        print(f"  {note}", file=out, flush=True)
    if not wait:
        print(f"  follow: mirage jobs logs {job_id} --follow --address {url}", file=out, flush=True)
        return job_id, None
    with _ray_errors(url):
        follow_logs(client, job_id, out)
        status = wait_for_job(client, job_id, timeout=timeout)
        info = client.get_job_info(job_id)
    message = f" ({info.message})" if info.message and status != "SUCCEEDED" else ""
    print(f"job {job_id}: {status}{message}", file=out, flush=True)
    return job_id, status


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def _cmd_submit(args: argparse.Namespace) -> int:
    extra = [a for a in (getattr(args, "extra", None) or []) if a != "--"]
    if any(a == "--config" or a.startswith("--config=") for a in extra):
        raise SubmitError("give --config before any extra arguments (it must be shipped with the job)")
    if args.no_working_dir:
        working_dir = None
    elif args.working_dir:
        working_dir = Path(args.working_dir)
    else:
        working_dir = default_working_dir()
    env = parse_env_pairs(args.env)
    if args.config and not Path(args.config).expanduser().is_file():
        raise FileNotFoundError(f"config file not found: {args.config}")
    if working_dir is not None and not Path(working_dir).is_dir():
        raise SubmitError(f"--working-dir {working_dir} is not a directory")
    client = make_client(args.address)  # after the local checks: they need no cluster
    spec = build_job([args.kind, *extra], args.config, working_dir=working_dir,
                     env=env, forward_env=not args.no_forward_env,
                     submission_id=args.submission_id, local_cluster=cluster_on_this_machine(client))
    try:
        job_id, status = submit(client, spec, wait=not args.no_wait)
    except KeyboardInterrupt:
        print("\ninterrupted: the job keeps running; `mirage jobs logs ID --follow` / `mirage jobs stop ID`",
              file=sys.stderr)
        return 130
    return 0 if status in (None, "SUCCEEDED") else 1


def _fmt_time(ms: int | None) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _cmd_status(args: argparse.Namespace) -> int:
    client = make_client(args.address)
    with _ray_errors(_address_of(client)):
        info = client.get_job_info(args.job_id)
    print(f"{args.job_id}: {info.status}")
    if info.message:
        print(f"  message: {info.message}")
    print(f"  entrypoint: {info.entrypoint}")
    print(f"  started: {_fmt_time(info.start_time)}  ended: {_fmt_time(info.end_time)}")
    if info.metadata:
        print("  metadata: " + ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    client = make_client(args.address)
    with _ray_errors(_address_of(client)):
        if args.follow:
            try:
                follow_logs(client, args.job_id, sys.stdout)
            except KeyboardInterrupt:
                return 130
        else:
            sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    client = make_client(args.address)
    with _ray_errors(_address_of(client)):
        stopped = client.stop_job(args.job_id)
        status = str(client.get_job_status(args.job_id))
    print(f"{args.job_id}: stop requested ({status})" if stopped else f"{args.job_id}: not running ({status})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    client = make_client(args.address)
    with _ray_errors(_address_of(client)):
        jobs = client.list_jobs()
    jobs = sorted(jobs, key=lambda j: j.start_time or 0)
    print(f"{'SUBMISSION ID':<40} {'STATUS':<10} {'STARTED':<19}  ENTRYPOINT")
    for j in jobs:
        entry = j.entrypoint if len(j.entrypoint) <= 70 else j.entrypoint[:67] + "..."
        print(f"{(j.submission_id or j.job_id or '-'):<40} {str(j.status):<10} {_fmt_time(j.start_time):<19}  "
              f"{entry}")
    return 0


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard / Jobs API URL, e.g. http://HEAD:8265 "
                                     "(default: $MIRAGE_RAY_ADDRESS, then $RAY_ADDRESS)")


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``submit`` and ``jobs`` to the ``mirage`` subcommands (called from ``build_parser``)."""
    p = sub.add_parser("submit", help="run a job (" + " / ".join(JOB_KINDS) + ") on a Ray cluster (Jobs API)",
                       description="Submit a Mirage job to a Ray cluster and follow it. Arguments after "
                                   "`--` go to the job's command, e.g. `-- --workers 8`. Relative paths in the "
                                   "config are relative to this directory: made absolute for a head on this "
                                   "machine, relative to the upload for inputs inside it, refused otherwise.")
    p.add_argument("kind", choices=JOB_KINDS, help="the job to run on the cluster")
    p.add_argument("--config", help="the job's YAML config (shipped with the job; default: the job's defaults)")
    _add_address(p)
    wd = p.add_mutually_exclusive_group()
    wd.add_argument("--working-dir", help="directory uploaded as the job's working_dir (default: the repo root)")
    wd.add_argument("--no-working-dir", action="store_true",
                    help="upload nothing: run the package installed on the cluster")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="extra job env var (repeatable)")
    p.add_argument("--no-forward-env", action="store_true",
                   help="do not copy local AWS_* / MLFLOW_* / MIRAGE_* variables into the job")
    p.add_argument("--submission-id", help="job id to use (default: mirage-KIND-TIMESTAMP-RANDOM)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following")
    p.set_defaults(func=_cmd_submit, passthrough=True)

    j = sub.add_parser("jobs", help="status / logs / stop / list jobs on a Ray cluster")
    actions = j.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)
    q = actions.add_parser("status", help="a job's status, message, entrypoint, times")
    q.add_argument("job_id", help="the id `mirage submit` printed (or `mirage jobs list` shows)")
    _add_address(q)
    q.set_defaults(func=_cmd_status)
    q = actions.add_parser("logs", help="a job's logs")
    q.add_argument("job_id", help="the id `mirage submit` printed (or `mirage jobs list` shows)")
    q.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    _add_address(q)
    q.set_defaults(func=_cmd_logs)
    q = actions.add_parser("stop", help="stop a running job")
    q.add_argument("job_id", help="the id `mirage submit` printed (or `mirage jobs list` shows)")
    _add_address(q)
    q.set_defaults(func=_cmd_stop)
    q = actions.add_parser("list", help="all jobs of the cluster")
    _add_address(q)
    q.set_defaults(func=_cmd_list)
