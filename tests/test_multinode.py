"""A real multi-node Ray cluster on 127.0.0.1 (issue 13): a head and a second node started as separate
``ray start`` processes, each with two logical CPUs (the machine has two cores). Preprocessing and
training spread over both; the second node is killed in the middle of each job.

The jobs' driver runs in a child process (``tests/multinode_driver.py``): Ray's connection and auth
mode are process-wide, and the pytest process keeps its own local Ray for the other tests."""

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from servers import LocalRayCluster

from pipeline import shards
from pipeline.synth_data import make_synthetic_dataset

pytestmark = pytest.mark.slow

VIDEOS = 4
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    nodes = LocalRayCluster(tmp)
    try:
        nodes.start_head(num_cpus=2)
        nodes.add_node("node2", num_cpus=2)
        nodes.wait_for({"head", "node2"})
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_when(nodes: LocalRayCluster, name: str, ready, timeout: float = 600.0) -> threading.Thread:
    """Kill node ``name`` from a thread as soon as ``ready()`` holds."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready():
            time.sleep(0.2)
        nodes.kill(name)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def preprocessed(cluster, tmp_path_factory):
    videos = tmp_path_factory.mktemp("videos")
    make_synthetic_dataset(videos, VIDEOS, seed=1, frames=21, size=(240, 320), moving_fraction=0.0)
    out = tmp_path_factory.mktemp("shards")
    cfg = {"source": str(videos), "output": str(out), "clip": {"frames": 17, "max_clips": 1, "min_side": 64},
           "poses": {"method": "file"},  # the videos' camera files: SfM is not what this test is about
           "depth": {"stereo": {"num_depths": 32}, "scale": 0.5, "every": 4}, "inputs_per_shard": 1,
           "ray_address": cluster.address, "mlflow": {"enabled": False}}
    killer = _kill_when(cluster, "node2", lambda: len(list(out.glob("shard-*.json"))) >= 1)
    result = cluster.driver("preprocess", json.dumps(cfg), "node2")
    killer.join(timeout=60)
    return videos, out, result


def test_preprocess_survives_losing_a_node(cluster, preprocessed):
    videos, out, result = preprocessed
    assert cluster.nodes["node2"].poll() is not None  # the node really died during the run
    assert result["decoded_on"] == ["head", "node2"]  # decoding ran on both nodes (Ray's state API)
    assert result["dead"] == ["node2"]
    # The same output set as an undisturbed run: every input once, all ok, one sample each;
    # every shard has its sidecar and the other way round, nothing half-written.
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(r["uri"]).name for r in manifest) == sorted(p.name for p in videos.glob("*.mp4"))
    assert {r["status"] for r in manifest} == {"ok"} and result["samples"] == VIDEOS
    tars = {p.stem for p in out.glob("shard-*.tar")}
    assert tars == {p.stem for p in out.glob("shard-*.json")} and len(tars) == VIDEOS
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    keys = {s["__key__"] for s in shards.read_shard_samples(shards.list_shards(str(out)))}
    assert keys == {k for r in manifest for k in r["sample_keys"]}


def test_train_resumes_from_its_checkpoint_when_a_node_dies(cluster, preprocessed, tmp_path):
    from jobs.config import TrainConfig
    from mirage_model.config import load_config

    cluster.add_node("node3", num_cpus=2)  # node2 is gone: a fresh node joins the cluster
    cluster.wait_for({"head", "node3"})
    _, shards_dir, _ = preprocessed
    storage = tmp_path / "ckpt"
    cfg = load_config(TrainConfig, CONFIGS / "train" / "tiny.yaml", {
        "data.shards": str(shards_dir), "storage_path": str(storage), "name": "multinode",
        "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "ray_address": cluster.address,
        "stages": [{"name": "branch", "steps": 4, "lr": 3e-3}, {"name": "lora", "steps": 4, "lr": 3e-3}],
        "scaling.cpus_per_worker": 1, "scaling.placement_strategy": "STRICT_SPREAD", "checkpoint.every": 2,
        "checkpoint.keep": 10, "checkpoint.max_failures": 2, "validation.every": 100, "validation.video": False,
        "log_every": 1})

    # One worker per node (the other CPU of each node reads its shards); node3 dies once the step-4
    # checkpoint is on storage (so Train has registered the step-2 one: reports are barriers), and
    # node4 replaces it.
    def step4() -> bool:
        for p in storage.glob("multinode/checkpoint_*/train_state.json"):
            try:
                if json.loads(p.read_text())["global_step"] >= 4:
                    return True
            except ValueError:  # still being written
                pass
        return False

    killer = _kill_when(cluster, "node3", step4)

    def replace():
        killer.join()
        cluster.add_node("node4", num_cpus=2)

    threading.Thread(target=replace, daemon=True).start()
    summary = cluster.driver("train", cfg.model_dump_json())
    assert cluster.nodes["node3"].poll() is not None
    state = summary["state"]
    assert state["global_step"] == 8 and state["resumes"] >= 1  # Train restarted the worker group
    # The steps between the checkpoint and the crash were trained twice: the same losses both times.
    from mlflow.tracking import MlflowClient

    history = MlflowClient(cfg.mlflow.uri()).get_metric_history(summary["run_id"], "loss")
    by_step: dict[int, list[float]] = {}
    for m in sorted(history, key=lambda m: m.timestamp):
        by_step.setdefault(m.step, []).append(m.value)
    assert sorted(by_step) == list(range(1, 9))
    for step, values in by_step.items():
        assert max(values) - min(values) < 1e-6, (step, values)
    acct = json.loads((storage / "multinode" / "summary.json").read_text())
    assert acct["details"]["steps"] == 8 and {"worker0", "worker1"} <= set(acct["peak_rss_mib"])
    assert Path(summary["checkpoint"]).is_dir()
