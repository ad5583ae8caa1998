"""Per-request limits through the app in-process on the real engine: body size, max_tokens
(clamped), context, timeouts; and the run wrapper's deadline against an engine that loses
cancellations."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from mlxdeploy.api.errors import RequestTimeout
from mlxdeploy.api.guards.admission import Admission
from mlxdeploy.api.run import Deadline, Run
from mlxdeploy.engine.api import Engine, Event, Prompt, SamplingParams, Text
from tests.conftest import TINY_CONFIG, real_app, write_spec

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
BODY_LIMIT = 2048
TOKEN_CAP = 8
TIMEOUT = 0.5
# Enough tokens to run far past TIMEOUT at this model's few hundred tokens a second.
LONG = {"messages": USER, "max_tokens": 20000, "temperature": 0, "stop": []}


@pytest.fixture(scope="module")
def capped(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    spec = write_spec(
        tmp_path_factory.mktemp("limits") / "capped.yaml",
        tiny_model_dir,
        name="tiny",
        defaults={"max_tokens": 50},  # above the cap: the cap wins
        limits={"max_body_bytes": BODY_LIMIT, "max_tokens": TOKEN_CAP},
    )
    with real_app(spec) as app:
        yield app.http


@pytest.fixture(scope="module")
def timed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    spec = write_spec(
        tmp_path_factory.mktemp("limits") / "timeout.yaml",
        tiny_model_dir,
        name="tiny",
        limits={"request_timeout_seconds": TIMEOUT, "max_tokens": 100000},
    )
    with real_app(spec) as app:
        yield app.http


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def padded_body(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    message = {"role": "user", "content": ""}
    body = {"messages": [message], "max_tokens": 1}
    pad = size - len(json.dumps(body).encode())
    message["content"] = "x" * pad
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


JSON = {"content-type": "application/json"}


def test_body_at_the_limit_is_served(capped: httpx.Client) -> None:
    assert capped.post(CHAT, content=padded_body(BODY_LIMIT), headers=JSON).status_code == 200


def test_body_over_the_limit_is_413(capped: httpx.Client) -> None:
    response = capped.post(CHAT, content=padded_body(BODY_LIMIT + 1), headers=JSON)
    error = assert_error(response, 413, "request_too_large")
    assert str(BODY_LIMIT) in error["message"]
    assert capped.get("/health").status_code == 200


def test_chunked_body_over_the_limit_is_413(capped: httpx.Client) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    raw = padded_body(64 * 1024)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    response = capped.post(CHAT, content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_above_the_cap_is_clamped(capped: httpx.Client, param: str) -> None:
    """limits.max_tokens_exceeded: clamp, the default (tests/test_unused_fields.py: reject)."""
    body = {"messages": USER, param: TOKEN_CAP + 1, "temperature": 0, "stop": []}
    response = capped.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-unused-fields"] == f"{param} (clamped to {TOKEN_CAP})"
    reply = response.json()
    assert reply["usage"]["completion_tokens"] <= TOKEN_CAP
    if reply["choices"][0]["finish_reason"] == "length":
        assert reply["usage"]["completion_tokens"] == TOKEN_CAP
    ok = capped.post(CHAT, json={"messages": USER, param: TOKEN_CAP})
    assert ok.status_code == 200
    assert "x-unused-fields" not in ok.headers


def test_default_max_tokens_is_capped(capped: httpx.Client) -> None:
    reply = capped.post(CHAT, json={"messages": USER, "temperature": 0, "stop": []}).json()
    assert reply["usage"]["completion_tokens"] <= TOKEN_CAP
    if reply["choices"][0]["finish_reason"] == "length":
        assert reply["usage"]["completion_tokens"] == TOKEN_CAP


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_400(timed: httpx.Client, stream: bool) -> None:
    context = TINY_CONFIG["max_position_embeddings"]
    assert isinstance(context, int)
    messages = [{"role": "user", "content": "hello " * (context + 100)}]
    response = timed.post(CHAT, json={"messages": messages, "max_tokens": 1, "stream": stream})
    error = assert_error(response, 400, "context_length_exceeded")
    assert error["param"] == "messages"
    assert str(context) in error["message"]


def wait_idle(http: httpx.Client, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while http.get("/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/health").json()["running"] == 0


def test_short_request_finishes_within_the_timeout(timed: httpx.Client) -> None:
    assert timed.post(CHAT, json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_timeout_without_streaming_is_504_and_frees_the_slot(timed: httpx.Client) -> None:
    started = time.monotonic()
    response = timed.post(CHAT, json=LONG)
    elapsed = time.monotonic() - started
    error = assert_error(response, 504, "request_timeout")
    assert error["type"] == "timeout"
    assert TIMEOUT <= elapsed < TIMEOUT + 5
    wait_idle(timed)


def test_timeout_while_streaming_sends_one_error_event(timed: httpx.Client) -> None:
    with timed.stream("POST", CHAT, json={**LONG, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] != "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines]
    assert [e for e in events if "error" in e] == [events[-1]]
    assert events[-1]["error"]["type"] == "timeout"
    assert events[-1]["error"]["code"] == "request_timeout"
    assert len(events) > 2  # it was generating when the time ran out
    wait_idle(timed)


class SwallowingEngine:
    """Events always ready, and a cancellation that arrives with one is lost (as in 3.11's
    wait_for): the deadline must still end the generation and close it."""

    def __init__(self) -> None:
        self.closed = False

    async def generate_choices(
        self, prompt: object, params: object, n: int, label: str = ""
    ) -> AsyncIterator[tuple[int, Event]]:
        try:
            while True:
                try:
                    await asyncio.sleep(0.001)
                except asyncio.CancelledError:
                    pass
                yield 0, Text("x")
        finally:
            self.closed = True


PARAMS = SamplingParams(
    max_tokens=10**6,
    temperature=0,
    top_p=1,
    repetition_penalty=1,
    repetition_context_size=20,
    stop=(),
)


def swallowing_run(seconds: float) -> tuple[Run, SwallowingEngine, Admission]:
    engine = SwallowingEngine()
    admission = Admission(limit=1)
    run = Run(cast(Engine, engine), Prompt([1]), PARAMS, Deadline.start(seconds), admission.enter())
    return run, engine, admission


def test_deadline_survives_a_lost_cancellation() -> None:
    async def main() -> tuple[float, SwallowingEngine, Admission]:
        run, engine, admission = swallowing_run(0.2)
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            async for _ in run.events():
                pass
        return time.monotonic() - started, engine, admission

    elapsed, engine, admission = asyncio.run(main())
    assert 0.2 <= elapsed < 5  # the deadline, not the engine's 600 s (a busy machine is slow)
    assert engine.closed
    assert admission.in_flight == 0  # the run's own end freed its slot


def test_a_lost_cancellation_still_ends_the_generation() -> None:
    """A client that goes away cancels the handler's task; the engine may lose that."""

    async def main() -> tuple[float, SwallowingEngine, Admission]:
        run, engine, admission = swallowing_run(600)
        events = 0

        async def consume() -> None:
            nonlocal events
            async for _ in run.events():
                events += 1

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        assert events > 0  # it was generating when the client went away
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        return time.monotonic() - started, engine, admission

    elapsed, engine, admission = asyncio.run(main())
    assert elapsed < 5  # not the engine's 600 s (a busy machine is slow)
    assert engine.closed
    assert admission.in_flight == 0  # the run's own end freed its slot
