"""Run a real `mlxdeploy up` process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mlxdeploy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlxdeploy", *args]


def wait_healthy(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlxdeploy up exited early:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"server not healthy after {timeout}s:\n{server.log()}")


@contextlib.contextmanager
def start_server(
    spec: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[RunningServer]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="mlxdeploy-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            mlxdeploy_command("up", str(spec), "--port", str(port), *extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        stop_server(server)


def stop_server(server: RunningServer, timeout: float = 30) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode
