"""Run a real `mlxdeploy up` process for end-to-end tests.

The server binds port 0 and its ready line names the port it got (mlxdeploy.bench.servers),
so parallel test runs cannot race for a port."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlxdeploy.bench import BenchError
from mlxdeploy.bench.servers import mlxdeploy_command, running, stop_process

__all__ = ["RunningServer", "mlxdeploy_command", "start_server", "stop_server"]


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


@contextlib.contextmanager
def start_server(
    spec: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[RunningServer]:
    log = Path(tempfile.mkstemp(prefix="mlxdeploy-", suffix=".log")[1])
    command = mlxdeploy_command("up", str(spec), "--port", "0", *extra)
    try:
        with running("mlxdeploy up", command, log, env=env, timeout_s=timeout) as (server, url):
            yield RunningServer(server.process, url, log)
    except BenchError as exc:
        raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')}") from None


def stop_server(server: RunningServer, timeout: float = 30) -> int:
    return stop_process(server.process, timeout)
