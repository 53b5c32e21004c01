"""Deployment files: ray_cluster.yaml through Ray's own launcher validation (no cloud calls), the KubeRay /
MLflow manifests under infra/ (kinds, images, env, entrypoints parsed by mirage's own CLI parser)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser
from jobs.submit import JOB_KINDS

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


# ----------------------------------------------------------------------------------------------
# ray_cluster.yaml
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launcher_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_ray_cluster_yaml_passes_rays_own_validation(launcher_config):
    """What `ray up` does before touching AWS: fill defaults, merge setup commands, schema + checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher_config))
    validate_config(prepared)  # raises on schema errors / bad head_node_type / min > max workers
    assert prepared["provider"] == {**prepared["provider"], "type": "aws", "region": "us-west-2"}
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["max_workers"] >= 1 and t["min_workers"] == 0 for t in gpu_types)
    assert any(t["node_config"]["InstanceType"].startswith(("g5.", "p4d.", "p5.")) for t in gpu_types)
    assert prepared["idle_timeout_minutes"] > 0 and prepared["max_workers"] >= sum(
        t["min_workers"] for t in types.values())


def _install_order_ok(commands: list[str]) -> None:
    text = "\n".join(commands)
    assert "torchvision" not in text
    torch_at = next(i for i, c in enumerate(commands) if "torch==2.13.0" in c)
    pkg_at = next(i for i, c in enumerate(commands)
                  if "pip install -c /home/ray/mirage/constraints.txt -e /home/ray/mirage" in c)
    assert torch_at < pkg_at, "torch must be pinned before the package is installed (against constraints.txt)"


def test_ray_cluster_setup_installs_pinned_torch_first_then_the_mounted_repo(launcher_config):
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(copy.deepcopy(launcher_config))
    assert "/home/ray/mirage" in prepared["file_mounts"]
    _install_order_ok(prepared["head_setup_commands"])
    assert "whl/cpu" in " ".join(prepared["head_setup_commands"])
    _install_order_ok(prepared["worker_setup_commands"])
    assert "whl/cu" in " ".join(prepared["worker_setup_commands"])  # CUDA torch on GPU workers
    for node_type in prepared["available_node_types"].values():
        if "worker_setup_commands" in node_type:  # per-type override (the CPU workers)
            _install_order_ok(node_type["worker_setup_commands"])
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-port=8265" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(prepared["worker_start_ray_commands"])


# ----------------------------------------------------------------------------------------------
# infra/
# ----------------------------------------------------------------------------------------------

def _all_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(INFRA.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def _k8s(kind: str) -> list[dict]:
    return [d for _, d in _all_docs() if d.get("kind") == kind]


def test_every_yaml_under_infra_parses_and_k8s_documents_are_well_formed():
    docs = _all_docs()
    assert len(docs) >= 8
    for path, doc in docs:
        if path.name.startswith("docker-compose"):
            assert set(doc["services"]) == {"postgres", "mlflow"}
            continue
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc["metadata"]["name"], path


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["template"]["spec"]["containers"]


def _env_sources(container: dict) -> set[tuple[str, str]]:
    out = set()
    for src in container.get("envFrom", []):
        for key in ("configMapRef", "secretRef"):
            if key in src:
                out.add((key, src[key]["name"]))
    return out


def _pinned(package: str) -> str:
    """The exact version constraints.txt pins (what `make install` installs, locally and in the image)."""
    for line in (INFRA.parent / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def test_raycluster_has_a_head_and_a_gpu_worker_group_with_s3_and_mlflow_env():
    ray_version = _pinned("ray")
    (cluster,) = _k8s("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"] == "mirage"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_version  # same Ray as the client, images tagged with it
    assert spec["authOptions"]["mode"] == "token"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    gpu = [g for g in spec["workerGroupSpecs"]
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g))]
    assert gpu and gpu[0]["minReplicas"] <= gpu[0]["replicas"] <= gpu[0]["maxReplicas"]
    for group in groups:
        for c in _containers(group):
            assert {("configMapRef", "mirage-env"), ("secretRef", "mirage-s3")} <= _env_sources(c)
            assert c["workingDir"] == "/home/ray/mirage"
    assert f"rayproject/ray:{ray_version}-" in (INFRA / "docker" / "Dockerfile").read_text()
    head_ports = {p["containerPort"] for p in _containers(spec["headGroupSpec"])[0]["ports"]}
    assert {6379, 8265} <= head_ports

    (env,) = [c for c in _k8s("ConfigMap") if c["metadata"]["name"] == "mirage-env"]
    assert env["data"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["data"]["AWS_DEFAULT_REGION"]
    assert not any(k.startswith("AWS_SECRET") or k == "AWS_ACCESS_KEY_ID" for k in env["data"])


def test_one_rayjob_per_job_kind_with_entrypoints_mirage_itself_accepts():
    jobs = _k8s("RayJob")
    parser = build_parser()
    registered = set(parser._subparsers._group_actions[0].choices)  # the subcommand names
    seen = set()
    for job in jobs:
        assert job["apiVersion"] == "ray.io/v1"
        spec = job["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": "mirage"}
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "mirage" and argv[1] in JOB_KINDS and argv[1] in registered, argv
        args = parser.parse_args(argv[1:])  # SystemExit (a failed test) on any unknown flag
        assert args.command == argv[1]
        assert (ROOT / args.config).is_file(), f"{job['metadata']['name']}: no {args.config} in the repo"
        yaml.safe_load(spec["runtimeEnvYAML"])
        submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
        env = {e["name"]: e for e in submitter["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == \
            _k8s("RayCluster")[0]["spec"]["authOptions"]["secretName"]
        seen.add(argv[1])
    assert seen == set(JOB_KINDS)


def _mlflow_server_args(command: list[str]) -> list[str]:
    """The arguments after `mlflow server` in a container command (list or `sh -c "..."`)."""
    if command[:2] == ["sh", "-c"]:
        command = shlex.split(command[2])
    words = [w for w in command if w != "exec"]
    at = words.index("mlflow")
    assert words[at + 1] == "server"
    return words[at + 2:]


def _check_mlflow_command(args: list[str]) -> None:
    from mlflow.cli import server

    ctx = server.make_context("server", list(args))  # click parsing only: unknown options raise
    assert ctx.params["backend_store_uri"].startswith("postgresql://")
    assert ctx.params["artifacts_destination"].startswith("s3://") or "MLFLOW_ARTIFACTS" in args[
        args.index("--artifacts-destination") + 1]
    assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == 5000
    assert "mlflow" in ctx.params["allowed_hosts"].split(",")


def test_mlflow_server_recipes_use_postgres_and_s3_and_a_valid_command():
    (deploy,) = [d for d in _k8s("Deployment") if d["metadata"]["name"] == "mlflow"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    _check_mlflow_command(_mlflow_server_args(container["command"] + container["args"]))
    assert ("secretRef", "mirage-s3") in _env_sources(container)
    services = {s["metadata"]["name"]: s for s in _k8s("Service")}
    assert services["mlflow"]["spec"]["ports"][0]["port"] == 5000 and "mlflow-postgres" in services

    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    _check_mlflow_command(_mlflow_server_args(compose["services"]["mlflow"]["command"]))
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    assert f"mlflow=={_pinned('mlflow')}" in (INFRA / "mlflow" / "Dockerfile").read_text()


def test_infra_readme_names_the_pieces():
    text = (INFRA / "README.md").read_text()
    for needle in ("ray up ray_cluster.yaml", "RayCluster", "RayJob", "mlflow server --backend-store-uri postgresql://",
                   "--artifacts-destination s3://", "mirage submit", "mirage jobs"):
        assert needle in text, needle
