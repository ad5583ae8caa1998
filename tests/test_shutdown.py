"""Graceful shutdown of a real `mlxdeploy up` on SIGTERM: streams finish, or past the timeout end
with one error event; the process exits 0 either way."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_spec
from tests.servers import RunningServer, start_server

pytestmark = pytest.mark.process  # every test here drives a real server process

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Count to a thousand."}]
GRACE = 30.0  # generous: the stream below takes a second or two
SHORT_GRACE = 1.0
EXIT_SLACK = 15.0  # abort grace, connection close and engine stop, on a busy CPU


def spec_with(directory: Path, model: Path, grace: float) -> Path:
    return write_spec(
        directory / "shutdown.yaml",
        model,
        name="tiny",
        stop=[],
        limits={"max_tokens": 100000},
        server={"shutdown_timeout_seconds": grace},
    )


@pytest.fixture
def server(
    tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    with start_server(spec_with(tmp_path, tiny_model_dir, request.param)) as running:
        yield running


def read_until_content(lines: Iterator[str]) -> list[str]:
    seen = []
    for line in lines:
        seen.append(line)
        if '"content":"' in line and '"content":""' not in line:
            return seen
    raise AssertionError(f"the stream ended before any content: {seen}")


def wait_draining(http: httpx.Client, timeout: float = 10) -> httpx.Response:
    """Poll /health on one keep-alive connection: 200 keeps it open, 503 means draining."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.get("/health")
        if response.status_code == 503:
            return response
        time.sleep(0.02)
    raise AssertionError("the server never reported draining")


def exit_code(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    code = process.wait(timeout)
    return code, time.monotonic() - started


@pytest.mark.parametrize("server", [GRACE], indirect=True)
def test_sigterm_lets_a_running_stream_finish(server: RunningServer) -> None:
    url = server.base_url
    body = {"messages": USER, "max_tokens": 400, "stream": True, "temperature": 0}
    with (
        httpx.Client(base_url=url, timeout=60) as streaming,
        httpx.Client(base_url=url, timeout=60) as health,
        httpx.Client(base_url=url, timeout=60) as chat,
    ):
        assert health.get("/health").status_code == 200  # open keep-alive connections now
        assert chat.get("/v1/models").status_code == 200
        with streaming.stream("POST", CHAT, json=body) as response:
            lines = response.iter_lines()
            seen = read_until_content(lines)
            server.process.send_signal(signal.SIGTERM)

            draining = wait_draining(health)
            assert draining.json()["status"] == "draining"
            assert draining.headers["connection"] == "close"
            refused = chat.post(CHAT, json={"messages": USER, "max_tokens": 1})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
            with pytest.raises(httpx.ConnectError):  # new connections are refused
                httpx.get(f"{url}/health", timeout=5)

            seen += [line for line in lines if line]
        assert seen[-1] == "data: [DONE]"
        finish = json.loads(seen[-2][6:])["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")
    code, waited = exit_code(server.process, GRACE + EXIT_SLACK)
    assert code == 0, server.log()
    assert waited < GRACE


@pytest.mark.parametrize("server", [SHORT_GRACE], indirect=True)
def test_sigterm_past_the_timeout_ends_the_stream_with_an_error(server: RunningServer) -> None:
    body = {"messages": USER, "max_tokens": 50000, "stream": True, "temperature": 0}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", CHAT, json=body) as response:
            lines = response.iter_lines()
            read_until_content(lines)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
            ended = time.monotonic() - signalled
    assert rest, "the stream must end with an error event"
    error = json.loads(rest[-1][6:])["error"]
    assert error["message"] == "the server is shutting down"
    assert all("error" not in json.loads(line[6:]) for line in rest[:-1])
    assert SHORT_GRACE <= ended < SHORT_GRACE + EXIT_SLACK
    code, _ = exit_code(server.process, EXIT_SLACK)
    assert code == 0, server.log()


@pytest.mark.parametrize("server", [GRACE], indirect=True)
def test_an_idle_server_exits_at_once(server: RunningServer) -> None:
    server.process.send_signal(signal.SIGINT)
    code, waited = exit_code(server.process, EXIT_SLACK)
    assert code == 0, server.log()
    assert waited < 5
