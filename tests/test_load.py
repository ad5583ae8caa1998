"""Load behaviour, through the app in-process on the real engine: bursts are queued, never
refused; a full queue answers 429; queued streams get keep-alive comments."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mlxdeploy.serve.server import hypercorn_config
from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Count to ten."}]
BURST = 256


def one_stream(http: httpx.Client, max_tokens: int) -> tuple[int, list[str]]:
    body = {"messages": USER, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    with http.stream("POST", CHAT, json=body) as response:
        lines = [line for line in response.iter_lines() if line]
        return response.status_code, lines


def test_a_burst_of_256_streams_is_served_without_a_reset(tiny_app: InProcessApp) -> None:
    # The listening socket queues the whole burst in the kernel (no connection reset) ...
    assert hypercorn_config(tiny_app.deployment.spec).backlog >= BURST
    # ... and the app admits and finishes every stream of it.
    with ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(lambda _: one_stream(tiny_app.http, 4), range(BURST)))
    assert [status for status, _ in results] == [200] * BURST
    assert all(lines[-1] == "data: [DONE]" for _, lines in results)


@pytest.fixture(scope="module")
def single_slot(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    spec = write_spec(
        tmp_path_factory.mktemp("load") / "one.yaml",
        tiny_model_dir,
        name="tiny",
        stop=[],
        engine={
            "max_batch_size": 1,
            "prefill_batch_size": 1,
            "max_queue": 1,
            "heartbeat_seconds": 0.2,
        },
        limits={"max_tokens": 100000},  # the running stream must outlive the test
    )
    with real_app(spec) as app:
        yield app.http


def test_full_queue_gets_429_and_queued_stream_gets_keep_alives(single_slot: httpx.Client) -> None:
    http = single_slot
    long = {"messages": USER, "max_tokens": 50000, "stream": True, "temperature": 0}
    with http.stream("POST", CHAT, json=long) as running:
        running_lines = running.iter_lines()  # keep a reference: closing it disconnects
        while '"content":"' not in (line := next(running_lines)) or '"content":""' in line:
            pass
        with http.stream("POST", CHAT, json={**long, "max_tokens": 2}) as queued:
            comments: list[str] = []
            lines = queued.iter_lines()
            while len(comments) < 2:
                line = next(lines)
                assert '"role":null' not in line, "the queued request must not generate yet"
                if line.startswith(":"):
                    comments.append(line)
            refused = http.post(CHAT, json={"messages": USER, "max_tokens": 1})
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            running.close()
            rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
    assert http.post(CHAT, json={"messages": USER, "max_tokens": 1}).status_code == 200
