"""Start the servers a benchmark (or a test) talks to, wait until they serve, always stop them.

`mlxdeploy up --port 0` binds a free port itself and names it in its ready line, so nothing
can take the port between choosing and binding it. mlx_lm.server cannot say which port it got,
so it gets one from `free_port`, the only place a port is chosen ahead of its server.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from ..spec import Deployment
from ..spec.settings import EngineSettings
from . import BenchError
from .report import LoadSettings

LOAD_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.2
LOCALHOST = "127.0.0.1"
# `mlxdeploy up` logs it once every model is loaded, in text or inside a JSON line.
READY_LINE = re.compile(r"\bserving .+? on (http://[^\s\"]+)")


@dataclass
class ServerProcess:
    """A server started by `launch`, with its stdout and stderr in `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def last_line(self) -> str:
        lines = self.log().strip().splitlines()
        return lines[-1] if lines else "no output"


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free a moment ago, for a server that cannot bind port 0 and report it.

    Another process may take the port before the server binds it."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mlxdeploy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlxdeploy", *args]


def mlx_lm_command(
    model_dir: Path, engine: EngineSettings, load: LoadSettings, port: int
) -> list[str]:
    """mlx_lm.server with the model's batch sizes and prefill step (its defaults are 32, 8,
    2048)."""
    return [
        sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir),
        "--host", LOCALHOST, "--port", str(port),
        "--temp", "0", "--max-tokens", str(load.max_tokens),
        "--decode-concurrency", str(engine.max_batch_size),
        "--prompt-concurrency", str(engine.prefill_batch_size),
        "--prefill-step-size", str(engine.prefill_step_size),
    ]  # fmt: skip


def resolve_model_dir(deployment: Deployment) -> Path:
    """The spec's (first) model as a local dir; GGUF and HF sources are resolved by a child
    process, because resolving them imports mlx."""
    model = deployment.catalog.models[0]  # requests without `model` go to it on both servers
    if model.source.kind == "dir" and model.source.path is not None:
        return model.source.path
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from mlxdeploy.engine.weights.loader import default_cache_root, resolve_model_dir",
        "from mlxdeploy.spec.sources import parse_model_source",
        "source = parse_model_source(sys.argv[1], Path.cwd())",
        "print(resolve_model_dir(source, default_cache_root()))",
    ])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, str(model.source)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"cannot resolve the model dir of {model.model!r}: {done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])


def launch(
    name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `command` with `env` added to this environment, its output going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # Own session: Ctrl-C reaches this process only, which then stops the server itself.
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return ServerProcess(name, process, log_path)


def wait_ready_url(server: ServerProcess, timeout_s: float = LOAD_TIMEOUT_S) -> str:
    """The URL `mlxdeploy up` names in its ready line (with the port it bound)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = READY_LINE.search(server.log())
        if found:
            return found.group(1)
        _check_running(server)
        if time.monotonic() > deadline:
            raise BenchError(
                f"{server.name} not ready after {timeout_s:.0f}s; see {server.log_path}"
            )
        time.sleep(POLL_S)


def wait_healthy(server: ServerProcess, url: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Until `url`/health answers 200; BenchError if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_running(server)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(POLL_S)
    raise BenchError(f"{server.name} not healthy after {timeout_s:.0f}s; see {server.log_path}")


def _check_running(server: ServerProcess) -> None:
    if server.process.poll() is not None:
        raise BenchError(
            f"{server.name} exited with {server.process.returncode} before it was ready "
            f"({server.log_path}): {server.last_line()}"
        )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def running(
    name: str,
    command: list[str],
    log_path: Path,
    url: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = LOAD_TIMEOUT_S,
) -> Iterator[tuple[ServerProcess, str]]:
    """Start a server and yield it with its URL once /health answers; always stop it.

    `url` None: the server is `mlxdeploy up`, and its ready line says where it serves."""
    server = launch(name, command, log_path, env)
    try:
        deadline = time.monotonic() + timeout_s
        url = url or wait_ready_url(server, timeout_s)
        wait_healthy(server, url, max(deadline - time.monotonic(), POLL_S))
        yield server, url
    finally:
        stop_process(server.process)


def fetch_health(url: str) -> object:
    try:
        response = httpx.get(f"{url}/health", timeout=5)
        return response.json()
    except (httpx.HTTPError, ValueError):
        return None


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so `finally` blocks stop the servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
