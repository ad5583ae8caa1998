"""Generation failures stay contained, through the app in-process on the real engine.

MLX on a CPU does not enforce `mx.set_memory_limit`, so the failures come from the engine's
fault-injection hook (mlxdeploy/engine/faults.py): a step raises once a request in the batch
has generated FAULT_AFTER tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import real_app, write_spec
from tests.scrape import scrape
from tests.servers import mlxdeploy_command

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Tell me a story."}]
FAULT_AFTER = 3
SHORT = {"messages": USER, "max_tokens": FAULT_AFTER, "temperature": 0}
LONG = {"messages": USER, "max_tokens": 40, "temperature": 0}


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # No stop words and greedy decoding: requests run to max_tokens, past the fault.
    return write_spec(
        tmp_path_factory.mktemp("faults") / "faults.yaml", tiny_model_dir, name="tiny", stop=[]
    )


def set_fault(env: pytest.MonkeyPatch, kind: str) -> None:
    """The engine reads these when its thread starts."""
    env.setenv("MLXDEPLOY_FAULT_AFTER_TOKENS", str(FAULT_AFTER))
    env.setenv("MLXDEPLOY_FAULT_KIND", kind)


@pytest.fixture(scope="module")
def faulty(spec: Path) -> Iterator[httpx.Client]:
    with pytest.MonkeyPatch.context() as env:
        set_fault(env, "error")
        with real_app(spec) as app:
            yield app.http


def assert_server_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert "Traceback" not in error["message"]
    return error


def sse_lines(http: httpx.Client, body: dict) -> list[str]:
    with http.stream("POST", CHAT, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line.startswith("data: ")]


def test_a_failed_step_is_a_500_and_the_next_request_works(faulty: httpx.Client) -> None:
    error = assert_server_error(faulty.post(CHAT, json=LONG), 500)
    assert "injected fault" in error["message"]
    reply = faulty.post(CHAT, json=SHORT)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == FAULT_AFTER


def test_a_failed_step_ends_a_stream_with_one_error_event(faulty: httpx.Client) -> None:
    lines = sse_lines(faulty, LONG)
    *chunks, last = lines
    assert "[DONE]" not in "".join(lines)
    assert set(json.loads(last[6:])) == {"error"}
    assert json.loads(last[6:])["error"]["type"] == "server_error"
    assert all("error" not in json.loads(line[6:]) for line in chunks)
    assert 1 <= len(chunks) <= FAULT_AFTER + 1  # the role chunk, then the tokens before it
    assert sse_lines(faulty, SHORT)[-1] == "data: [DONE]"


def test_failures_are_counted_and_the_server_stays_healthy(faulty: httpx.Client) -> None:
    before = scrape(faulty)
    assert faulty.post(CHAT, json=LONG).status_code == 500
    delta = scrape(faulty) - before
    assert delta.value("mlxdeploy_generation_step_failures_total", model="tiny") == 1
    health = faulty.get("/health")
    assert health.status_code == 200
    assert health.json()["running"] == 0
    assert faulty.post(CHAT, json=SHORT).status_code == 200


def test_a_dead_generation_thread_fails_its_requests_then_health_is_503(
    spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_fault(monkeypatch, "crash")
    with real_app(spec) as app:
        assert_server_error(app.http.post(CHAT, json=LONG), 500)
        health = app.http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failed"
        assert_server_error(app.http.post(CHAT, json=SHORT), 503)
        assert scrape(app.http).value("mlxdeploy_engine_ready", model="tiny") == 0


@pytest.mark.process
def test_a_bad_fault_setting_stops_the_server_with_one_line(spec: Path) -> None:
    """The exit status and stderr of `mlxdeploy up` itself (it fails before loading weights)."""
    result = subprocess.run(
        mlxdeploy_command("up", str(spec), "--port", "0"),
        env={**os.environ, "MLXDEPLOY_FAULT_AFTER_TOKENS": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "MLXDEPLOY_FAULT_AFTER_TOKENS must be a whole number" in result.stderr
