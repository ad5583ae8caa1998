"""Logs: JSON lines from every logger and the access log of one real `mlxdeploy up` (Hypercorn
writes the access lines), and the access log's switch under Hypercorn in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypercorn.asyncio import serve as hypercorn_serve

from mlxdeploy.api.app import create_app
from mlxdeploy.serve.logs import ACCESS_LOGGER, JsonFormatter
from mlxdeploy.serve.server import hypercorn_config
from mlxdeploy.spec import load_spec
from tests.conftest import write_spec
from tests.inprocess import LoopThread
from tests.logwait import wait_for_log
from tests.scripted import ScriptedEngine
from tests.servers import RunningServer, start_server

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def json_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A text spec with the access log on, switched to JSON by the command-line flag."""
    spec = write_spec(
        tmp_path_factory.mktemp("logs") / "text.yaml",
        tiny_model_dir,
        name="tiny",
        server={"log_format": "text", "access_log": True},
    )
    with start_server(spec, "--log-format", "json") as server:
        yield server


def json_lines(server: RunningServer, *needles: str) -> list[dict]:
    lines = [line for line in wait_for_log(server, *needles).splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, from every logger, is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    return records


def exercise(base_url: str) -> list[httpx.Response]:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        responses = [
            http.post(CHAT, json={"messages": USER, "max_tokens": 2}),
            http.get("/v1/nothing", headers={"X-Request-ID": "trace-404"}),
        ]
        body = {"messages": USER, "max_tokens": 2, "stream": True}
        with http.stream("POST", CHAT, json=body) as response:
            response.read()
        return [*responses, response]


@pytest.mark.process
def test_json_logs_with_access_fields(json_server: RunningServer) -> None:
    responses = exercise(json_server.base_url)
    ids = [response.headers["x-request-id"] for response in responses]
    records = json_lines(json_server, *(f'"request_id": "{id_}"' for id_ in ids))
    assert any(r["logger"] == "mlxdeploy.engine" for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "mlxdeploy.access"}
    for response in responses:
        record = access[response.headers["x-request-id"]]
        assert record["method"] == response.request.method
        assert record["path"] == response.request.url.path
        assert record["status"] == response.status_code
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
        assert record["level"] == "INFO"
    assert access["trace-404"]["status"] == 404


@pytest.mark.process
def test_the_flag_beats_the_spec(json_server: RunningServer) -> None:
    exercise(json_server.base_url)
    records = json_lines(json_server)  # the spec says text
    assert any(r["logger"] == "mlxdeploy.server" for r in records)


@contextlib.contextmanager
def under_hypercorn(spec_path: Path, *engines: ScriptedEngine) -> Iterator[str]:
    """The spec's app on scripted engines (a default one per model when none are given), under
    Hypercorn in this process; its base URL. Leaving the block stops the server, so every
    access line has been written."""
    deployment = load_spec(spec_path)
    config = hypercorn_config(deployment.spec)
    config.bind = ["127.0.0.1:0"]
    port = config.create_sockets().insecure_sockets[0].getsockname()[1]  # kept for Hypercorn
    chosen = list(engines) or [ScriptedEngine(model_id=m.id) for m in deployment.catalog.models]
    app = create_app(deployment, chosen)
    loop = LoopThread()
    stop = asyncio.Event()
    served = asyncio.run_coroutine_threadsafe(
        hypercorn_serve(app, config, shutdown_trigger=stop.wait),  # type: ignore[arg-type]
        loop.loop,
    )
    try:
        wait_listening(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.loop.call_soon_threadsafe(stop.set)
        served.result(30)
        loop.close()


def wait_listening(base_url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"nothing listening at {base_url}"
        time.sleep(0.05)


@pytest.mark.parametrize("on", [True, False])
def test_the_access_log_can_be_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, on: bool
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    spec = write_spec(
        tmp_path / "spec.yaml", tmp_path / "model", name="tiny", server={"access_log": on}
    )
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER), under_hypercorn(spec) as url:
        responses = exercise(url)
    assert [r.status_code for r in responses] == [200, 404, 200]
    access = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    if on:
        assert {r.path for r in access} >= {CHAT, "/v1/nothing"}  # type: ignore[attr-defined]
    else:
        assert not access


def scripted_spec(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return write_spec(
        tmp_path / "spec.yaml", tmp_path / "model", name="tiny", server={"access_log": True}
    )


@pytest.mark.parametrize("sent", [None, "trace-gone"])
def test_a_client_that_went_away_is_logged_with_its_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sent: str | None
) -> None:
    """The response never completes, so Hypercorn logs it without a response (status -): the
    id comes from the request, the client's own or the one the server chose."""
    slow = ScriptedEngine(model_id="tiny", pieces=("word ",) * 400, delay=0.02)
    body = {"messages": USER, "max_tokens": 400, "stream": True}
    headers = {"X-Request-ID": sent} if sent else {}
    with (
        caplog.at_level(logging.INFO, logger=ACCESS_LOGGER),
        under_hypercorn(scripted_spec(tmp_path), slow) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        with http.stream("POST", CHAT, json=body, headers=headers) as response:
            request_id = response.headers["x-request-id"]
            next(response.iter_lines())  # one line, then the client goes away
        wait_closed(slow)
    assert sent is None or request_id == sent
    access = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    (gone,) = [r for r in access if vars(r)["path"] == CHAT]
    fields = vars(gone)
    assert fields["status"] is None
    assert fields["request_id"] == request_id
    assert gone.getMessage().endswith(f" - {fields['duration_ms']:.1f}ms id={request_id}")


def wait_closed(engine: ScriptedEngine, timeout: float = 10) -> None:
    """Until the app has closed the generation of the client that went away."""
    deadline = time.monotonic() + timeout
    while not engine.closed:
        assert time.monotonic() < deadline, "the app never noticed the client went away"
        time.sleep(0.02)


@pytest.mark.process
def test_a_prompt_past_the_context_leaves_no_tokenizer_warning(json_server: RunningServer) -> None:
    """Past the tokenizer's own maximum (8192) as well as the model's context (2048): the
    server answers 400 itself, and transformers' warning about it stays out of the log."""
    body = {"messages": [{"role": "user", "content": "hello " * 9000}], "max_tokens": 2}
    reply = httpx.post(f"{json_server.api_url}/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    request_id = reply.headers["x-request-id"]
    log = wait_for_log(json_server, f'"request_id": "{request_id}"')
    assert f'"request_id": "{request_id}"' in log
    assert "Token indices sequence length" not in log
    json_lines(json_server)  # every line is still one JSON object


def test_json_formatter_keeps_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed here"
    assert entry["level"] == "ERROR" and entry["logger"] == "x"
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("+00:00")
