"""GET /v1/status and `mlxdeploy status URL`: the requests in flight on each model, named by
their request ids, with their state, age and token counts."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from mlxdeploy.api.guards.drain import EXTENSION
from mlxdeploy.cli import app
from mlxdeploy.engine.api import Turn
from mlxdeploy.status import status_url
from tests.conftest import real_app, scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine
from tests.servers import RunningServer

pytestmark = pytest.mark.usefixtures("clean_env")

STATUS = "/v1/status"
CHAT = "/v1/chat/completions"
KEYS_ENV = "TEST_STATUS_KEYS"
KEY = "sk-status-5d1e0b"
NO_EOS = {"0": -100, "1": -100, "2": -100}  # SmolLM2's special tokens: the answer runs on


def chat(text: str, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream": True, **fields}


def wait_for(read: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 60) -> Any:
    """Poll until a condition holds (a safety net, not a measure of speed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def requests_of(http: httpx.Client, **headers: str) -> dict[str, list[dict[str, Any]]]:
    response = http.get(STATUS, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "status"
    return {model["id"]: model["requests"] for model in body["models"]}


@contextlib.contextmanager
def streaming(http: httpx.Client, request_id: str, body: dict[str, Any]) -> Iterator[Any]:
    """A streamed chat completion, open until the block ends; yields its SSE lines."""
    with http.stream("POST", CHAT, json=body, headers={"X-Request-ID": request_id}) as response:
        assert response.status_code == 200
        yield response.iter_lines()


def first_content(lines: Iterator[str]) -> None:
    """Read the stream up to its first piece of text."""
    for line in lines:
        if line.startswith("data: {"):
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                return
    raise AssertionError("the stream ended before any content")


# -- the route, on scripted engines ---------------------------------------------------------


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "spec.yaml", "owner/model", name="tiny")


def test_status_names_each_request_with_its_state_and_tokens(spec_path: Path) -> None:
    hold = threading.Event()
    engine = ScriptedEngine(model_id="tiny", slots=1, hold=hold)
    with scripted_app(spec_path, engine) as served:
        assert requests_of(served.http) == {"tiny": []}
        with streaming(served.http, "req-a", chat("first")) as a:
            first_content(a)  # A decodes, and holds its slot until `hold` is set
            with streaming(served.http, "req-b", chat("second")) as b:
                seen = wait_for(lambda: requests_of(served.http)["tiny"], lambda r: len(r) == 2)
                assert [(r["id"], r["state"]) for r in seen] == [
                    ("req-a", "decoding"),
                    ("req-b", "queued"),
                ]
                assert [r["prompt_tokens"] for r in seen] == [
                    len("user:first\n"),
                    len("user:second\n"),
                ]
                assert [r["completion_tokens"] for r in seen] == [1, 0]
                assert seen[0]["age_seconds"] >= seen[1]["age_seconds"] >= 0
                hold.set()
                assert [line for line in b if line == "data: [DONE]"] == ["data: [DONE]"]
        assert engine.labels == ["req-a", "req-b"]
        assert wait_for(lambda: requests_of(served.http), lambda r: r == {"tiny": []}) == {
            "tiny": []
        }


def test_status_needs_an_api_key_like_the_other_routes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY)
    path = write_spec(tmp_path / "auth.yaml", "owner/model", auth={"api_keys_env": KEYS_ENV})
    with scripted_app(path) as served:
        refused = served.http.get(STATUS)
        assert refused.status_code == 401
        assert refused.json()["error"]["message"].startswith("Missing API key")
        assert served.http.get(STATUS, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert requests_of(served.http, Authorization=f"Bearer {KEY}") == {"owner/model": []}


def test_status_is_served_while_draining(spec_path: Path) -> None:
    with scripted_app(spec_path) as served:
        served.app.extensions[EXTENSION].start()
        response = served.http.get(STATUS)
        assert response.status_code == 200 and response.json()["draining"] is True
        assert served.http.post(CHAT, json=chat("hi")).status_code == 503


# -- the route, on a real engine -----------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot(tiny_spec: Path, cache_dir: Path) -> Iterator[InProcessApp]:
    """The tiny model with one batch slot: a second request waits for the first."""
    with real_app(tiny_spec, engine={"max_batch_size": 1, "prefill_batch_size": 1}) as served:
        yield served


def test_status_follows_real_requests_from_queued_to_decoding(one_slot: InProcessApp) -> None:
    http, (engine,) = one_slot.http, one_slot.engines
    long = chat("Count to a thousand.", max_tokens=1500, logit_bias=NO_EOS, n=2)
    with streaming(http, "long-a", long) as a:
        first_content(a)
        with streaming(http, "short-b", chat("Hi", max_tokens=4)):
            seen = wait_for(lambda: requests_of(http)["tiny"], lambda r: len(r) == 2)
            a_info, b_info = seen
            assert (a_info["id"], a_info["state"], a_info["choices"]) == ("long-a", "decoding", 2)
            assert (b_info["id"], b_info["state"], b_info["completion_tokens"]) == (
                "short-b",
                "queued",
                0,
            )
            prompt = engine.prepare([Turn(role="user", content="Count to a thousand.")], None)
            assert a_info["prompt_tokens"] == len(prompt.tokens)
            assert a_info["completion_tokens"] >= 1
            tokens = a_info["completion_tokens"]
            later = wait_for(
                lambda: requests_of(http)["tiny"][0], lambda r: r["completion_tokens"] > tokens
            )
            assert later["completion_tokens"] > tokens  # the status is read afresh each time
            assert later["age_seconds"] > a_info["age_seconds"]
            assert requests_of(http)["tiny"][1]["state"] == "queued"  # A still holds the slot
    idle = wait_for(lambda: requests_of(http), lambda r: r == {"tiny": []})
    assert idle == {"tiny": []}


# -- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://h:8080", "http://h:8080/", "http://h:8080/v1", "http://h:8080/v1/", "h:8080"],
)
def test_status_url_takes_the_base_url_with_or_without_v1(url: str) -> None:
    assert status_url(url) == "http://h:8080/v1/status"


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> Callable[[InProcessApp], list[str]]:
    """Send the command's request to an in-process app; returns the URLs it asked for."""
    asked: list[str] = []

    def route(served: InProcessApp) -> list[str]:
        def get(url: str, headers: dict[str, str], timeout: float) -> httpx.Response:
            asked.append(url)
            return served.http.get(httpx.URL(url).path, headers=headers)

        monkeypatch.setattr("mlxdeploy.status.httpx.get", get)
        return asked

    return route


def test_status_command_prints_a_table_of_requests(
    spec_path: Path, routed: Callable[[InProcessApp], list[str]]
) -> None:
    hold = threading.Event()
    engine = ScriptedEngine(model_id="tiny", hold=hold)
    with scripted_app(spec_path, engine) as served:
        asked = routed(served)
        with streaming(served.http, "cli-req-1", chat("hello")) as a:
            first_content(a)
            result = CliRunner().invoke(app, ["status", "http://server:8080/v1"])
            as_json = CliRunner().invoke(app, ["status", "--json", "http://server:8080"])
            hold.set()
    assert result.exit_code == 0, result.output
    assert asked == ["http://server:8080/v1/status"] * 2
    (row,) = [line for line in result.output.splitlines() if "cli-req-1" in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[0:3] == ["tiny (1.0 MiB)", "cli-req-1", "decoding"]
    assert cells[4:] == [str(len("user:hello\n")), "1"]
    assert "1 running, 0 queued" in result.output
    report = json.loads(as_json.output)
    assert [r["id"] for r in report["models"][0]["requests"]] == ["cli-req-1"]


def test_status_command_sends_the_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, routed: Callable[[InProcessApp], list[str]]
) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY)
    path = write_spec(tmp_path / "auth.yaml", "owner/model", auth={"api_keys_env": KEYS_ENV})
    runner = CliRunner()
    with scripted_app(path) as served:
        routed(served)
        refused = runner.invoke(app, ["status", "http://server:8080"])
        wrong = runner.invoke(app, ["status", "--api-key", "nope", "http://server:8080"])
        by_option = runner.invoke(app, ["status", "--api-key", KEY, "http://server:8080"])
        by_env = runner.invoke(
            app, ["status", "http://server:8080"], env={"MLXDEPLOY_API_KEY": KEY}
        )
    assert refused.exit_code == 1
    assert refused.output.splitlines() == [
        "status: http://server:8080/v1/status: HTTP 401: Missing API key: send it as the header "
        "'Authorization: Bearer <key>' or 'x-api-key: <key>' (pass --api-key or set "
        "MLXDEPLOY_API_KEY)"
    ]
    assert wrong.exit_code == 1
    assert wrong.output.splitlines() == [
        "status: http://server:8080/v1/status: HTTP 401: Incorrect API key provided"
    ]
    assert by_option.exit_code == 0 and "owner/model" in by_option.output
    assert by_env.exit_code == 0 and "0 running, 0 queued" in by_env.output


def test_status_command_says_in_one_line_that_nothing_answers() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        result = CliRunner().invoke(app, ["status", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"status: cannot reach http://127.0.0.1:{port}/v1/status: ")


@pytest.mark.process
def test_status_command_against_a_real_server(tiny_server: RunningServer) -> None:
    with httpx.Client(base_url=tiny_server.base_url, timeout=120) as http:
        body = chat("Count to a thousand.", max_tokens=1500, logit_bias=NO_EOS)
        with streaming(http, "real-server-req", body) as lines:
            first_content(lines)
            result = CliRunner().invoke(app, ["status", tiny_server.api_url])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "real-server-req" in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[2] == "decoding" and int(cells[5]) >= 1


def test_status_help_reads_plainly() -> None:
    output = CliRunner().invoke(app, ["status", "--help"], prog_name="mlxdeploy").output
    assert output.splitlines()[0] == "Usage: mlxdeploy status [OPTIONS] URL"
    assert "<bool>" not in output and "MLXDEPLOY_API_KEY" in output
