"""Logs of a real server: JSON lines from every logger, the access log and its switch."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlxdeploy.serve.logs import JsonFormatter
from tests.conftest import write_spec
from tests.logwait import wait_for_log
from tests.servers import RunningServer, start_server

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def json_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    spec = write_spec(
        tmp_path_factory.mktemp("logs") / "json.yaml",
        tiny_model_dir,
        name="tiny",
        server={"log_format": "json", "access_log": True},
    )
    with start_server(spec) as server:
        yield server


@pytest.fixture(scope="module")
def quiet_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A text spec without access log, switched to JSON by the command-line flag."""
    spec = write_spec(
        tmp_path_factory.mktemp("logs") / "quiet.yaml",
        tiny_model_dir,
        name="tiny",
        server={"log_format": "text", "access_log": False},
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


def exercise(server: RunningServer) -> list[httpx.Response]:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        responses = [
            http.post(CHAT, json={"messages": USER, "max_tokens": 2}),
            http.get("/v1/nothing", headers={"X-Request-ID": "trace-404"}),
        ]
        body = {"messages": USER, "max_tokens": 2, "stream": True}
        with http.stream("POST", CHAT, json=body) as response:
            response.read()
        return [*responses, response]


def test_json_logs_with_access_fields(json_server: RunningServer) -> None:
    responses = exercise(json_server)
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


def test_flag_beats_the_spec_and_access_log_can_be_off(quiet_server: RunningServer) -> None:
    exercise(quiet_server)
    records = json_lines(quiet_server)
    assert any(r["logger"] == "mlxdeploy.server" for r in records)
    assert not any(r["logger"] == "mlxdeploy.access" for r in records)


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
