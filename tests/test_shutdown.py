"""Graceful shutdown of a real `mlxdeploy up` on SIGTERM: streams finish, or past the timeout end
with one error event; the process exits 0 either way. A second Ctrl-C cuts the wait short, and
the first one says so (the tests marked `process` drive a real server process)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlxdeploy.serve.shutdown import stop_engines
from tests.conftest import write_spec
from tests.logwait import wait_for_log
from tests.servers import RunningServer, start_server

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


@pytest.mark.process
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


@pytest.mark.process
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


@pytest.mark.process
@pytest.mark.parametrize("server", [GRACE], indirect=True)
def test_an_idle_server_exits_at_once(server: RunningServer) -> None:
    server.process.send_signal(signal.SIGINT)
    code, waited = exit_code(server.process, EXIT_SLACK)
    assert code == 0, server.log()
    assert waited < 5


@pytest.mark.process
@pytest.mark.parametrize("server", [GRACE], indirect=True)
def test_a_second_ctrl_c_cuts_the_drain_short(server: RunningServer) -> None:
    """The first Ctrl-C says the server drains, for how long, and that a second one stops it
    now; the second ends the stream with an error and the process exits well before the
    drain's timeout."""
    body = {"messages": USER, "max_tokens": 50000, "stream": True, "temperature": 0}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", CHAT, json=body) as response:
            lines = response.iter_lines()
            read_until_content(lines)
            server.process.send_signal(signal.SIGINT)
            hint = "shutting down: waiting up to 30 s for 1 request in flight to finish; "
            hint += "Ctrl-C again (or a second SIGTERM) stops now"
            assert hint in wait_for_log(server, hint), server.log()
            server.process.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            rest = [line for line in lines if line.startswith("data: ")]
            ended = time.monotonic() - signalled
    error = json.loads(rest[-1][6:])["error"]
    assert error["message"] == "the server is shutting down"
    code, _ = exit_code(server.process, EXIT_SLACK)
    assert code == 0, server.log()
    assert ended < GRACE / 2  # the drain would have waited GRACE
    assert "shutting down now (a second signal): ending 1 request in flight" in server.log()
    assert "1 requests" not in server.log()


class Loading:
    """An engine whose model never finishes loading (a load cannot be interrupted)."""

    model_id = "big"
    state = "loading"
    stopped = False

    def stop(self, timeout: float = 30.0) -> None:
        self.stopped = True


class Stopping(Loading):
    model_id = "small"
    state = "ready"

    def stop(self, timeout: float = 30.0) -> None:
        self.state = "stopped"  # its generation thread ends after the current step


def test_a_second_signal_stops_waiting_for_a_load(caplog: pytest.LogCaptureFixture) -> None:
    async def stop() -> tuple[bool, float]:
        forced = asyncio.Event()
        engines = [Loading(), Stopping()]
        asyncio.get_running_loop().call_later(0.2, forced.set)
        started = time.monotonic()
        done = await stop_engines(engines, forced, timeout=GRACE)  # type: ignore[arg-type]
        assert all(engine.stopped or engine.state == "stopped" for engine in engines)
        return done, time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="mlxdeploy.server"):
        done, waited = asyncio.run(stop())
    assert not done and waited < GRACE / 2
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "waiting up to 30 s for big to finish loading; Ctrl-C again (or a second SIGTERM) "
        "stops now",
        "stopping without waiting for big",
    ]


def test_engines_that_stop_are_waited_for() -> None:
    async def stop() -> bool:
        return await stop_engines([Stopping(), Stopping()], asyncio.Event())  # type: ignore[list-item]

    assert asyncio.run(stop())
