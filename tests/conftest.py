import os

# Ray must bind loopback on these machines (see README, "Traps").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# S3 for pipeline tests: a moto_server on loopback, one per session, stopped by PID at the end.
# ----------------------------------------------------------------------------------------------
import shutil as _shutil
import subprocess as _subprocess
import sys as _sys
from pathlib import Path as _Path

import pytest as _pytest
from servers import free_port, wait_for_http


@_pytest.fixture(scope="session")
def moto_s3():
    """``{"endpoint_url", "region", "key", "secret"}`` of a moto S3 server on 127.0.0.1.

    Region us-west-2: bucket creation through s3fs fails against moto with us-east-1.
    """
    exe = _Path(_sys.executable).with_name("moto_server")
    cmd = str(exe) if exe.exists() else _shutil.which("moto_server")
    if not cmd:
        _pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = _subprocess.Popen([cmd, "-H", "127.0.0.1", "-p", str(port)],
                             stdout=_subprocess.DEVNULL, stderr=_subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint + "/moto-api/", proc, "moto_server", timeout=30.0)
        yield {"endpoint_url": endpoint, "region": "us-west-2", "key": "testing",
               "secret": "testing"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except _subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@_pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory):
    """Jobs that a test runs without an MLflow config log to this session's own store, not to
    ``runs/mlflow.db`` of the checkout (the default a user gets)."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        yield
        return
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@_pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_exit():
    """Tests that start a local Ray through the jobs leave it running for the next test (one
    start per session); shut it down at the end so no actor process outlives pytest."""
    yield
    if "ray" in _sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@_pytest.fixture()
def ray_two_cpus():
    """A fresh local Ray with 2 CPUs for one test (jobs that start Ray themselves find it running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


# ----------------------------------------------------------------------------------------------
# The deliberate break of the memory tests: the readout at the wrong cameras.
# ----------------------------------------------------------------------------------------------
@_pytest.fixture
def read_memory_at_previous_chunk(monkeypatch):
    """Call it to break the latent memory's readout on purpose: from then on each chunk reads the
    memory at the previous chunk's cameras (the first chunk and the context's single-camera reads
    stay right). Undone when the test ends."""

    def apply() -> None:
        from mirage_model.memory.latent import LatentMemory

        original, previous = LatentMemory.read_chunk, {}

        def read_chunk(self, K, c2w, image_size):
            if len(K) == 33:  # a chunk's cameras (33 frames)
                cams = previous.get("cams", (K, c2w))
                previous["cams"] = (K, c2w)
                K, c2w = cams
            return original(self, K, c2w, image_size)

        monkeypatch.setattr(LatentMemory, "read_chunk", read_chunk)

    return apply
