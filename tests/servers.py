"""Helpers for tests that start real local servers (moto S3, MLflow, a Ray head) on 127.0.0.1."""

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60.0,
                  diagnostics: Callable[[], str] = lambda: "") -> None:
    """Poll ``url`` until any HTTP answer (an error status counts: the server is up); raise with
    ``diagnostics()`` when ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}\n{diagnostics()}")
        try:
            urllib.request.urlopen(url, timeout=1.0).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no answer at {url} after {timeout:.0f} s\n{diagnostics()}") from None
            time.sleep(0.2)


class LocalRayCluster:
    """A multi-node Ray cluster on 127.0.0.1: a head and worker nodes, each a separate
    ``ray start --block`` process with its own CPUs and a custom resource naming it, so work can be
    pinned to a node and a node can die on its own. Every process is stopped by PID."""

    auth_env = {"RAY_AUTH_MODE": "disabled"}

    def __init__(self, tmp_dir: str):
        import os
        import sys
        from pathlib import Path

        self.ray = str(Path(sys.executable).with_name("ray"))
        self.tmp_dir, self.nodes, self.address = tmp_dir, {}, None
        # Token auth off: the cluster lives on loopback for one test module (the driver must match:
        # auth_env). Worker nodes may join (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 forbids it); every
        # node still binds 127.0.0.1 through --node-ip-address.
        self.env = {**os.environ, **self.auth_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}

    def _start(self, name: str, args: list[str]) -> None:
        import json

        log = open(f"{self.tmp_dir}/{name}.log", "w")
        self.nodes[name] = subprocess.Popen(
            [self.ray, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
             f"--object-store-memory={300 * 2**20}",
             f"--resources={json.dumps({name: 1})}", *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def start_head(self, num_cpus: int) -> str:
        port = free_port()
        self._start("head", ["--head", f"--port={port}", f"--num-cpus={num_cpus}", f"--temp-dir={self.tmp_dir}/ray",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                             f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
                             f"--object-manager-port={free_port()}"])
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_node(self, name: str, num_cpus: int) -> None:
        self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}"])

    def driver(self, *args: str, timeout: float = 900.0) -> dict:
        """Run ``tests/multinode_driver.py`` against this cluster in its own process (Ray's
        connection and auth mode are process-wide: the pytest process keeps its own local Ray)."""
        import json
        import sys
        from pathlib import Path

        env = {**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the driver itself stays on loopback
        script = Path(__file__).with_name("multinode_driver.py")
        out = subprocess.run([sys.executable, str(script), args[0], self.address, *args[1:]], env=env,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"driver {args[0]} failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_for(self, alive: set[str]) -> None:
        """Until exactly the nodes named in ``alive`` are up."""
        for name, proc in self.nodes.items():
            if name in alive and proc.poll() is not None:
                raise RuntimeError(f"ray node {name} exited with {proc.returncode}: {self.log(name)}")
        self.driver("wait", ",".join(sorted(alive)))

    def log(self, name: str) -> str:
        with open(f"{self.tmp_dir}/{name}.log") as f:
            return f.read()[-3000:]

    def kill(self, name: str) -> None:
        """The node dies at once: SIGKILL to its raylet, its workers and its ``ray start``."""
        import psutil

        proc = psutil.Process(self.nodes[name].pid)
        for p in [*proc.children(recursive=True), proc]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.nodes[name].wait(timeout=30)

    def stop(self) -> None:
        """Stop every node: SIGTERM (``ray start --block`` stops its processes), then SIGKILL what is left."""
        import psutil

        for name in reversed(list(self.nodes)):
            popen = self.nodes[name]
            if popen.poll() is not None:
                continue
            try:
                children = psutil.Process(popen.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            popen.terminate()
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            _, left = psutil.wait_procs(children, timeout=10)
            for p in left:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
