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
