"""Load behaviour of a real server: bursts are queued, never reset; a full queue answers 429;
queued streams get keep-alive comments."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_spec
from tests.servers import RunningServer, start_server

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Count to ten."}]


async def one_stream(client: httpx.AsyncClient, max_tokens: int) -> tuple[int, list[str]]:
    body = {"messages": USER, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    async with client.stream("POST", CHAT, json=body) as response:
        lines = [line async for line in response.aiter_lines() if line]
        return response.status_code, lines


async def burst(base_url: str, clients: int, max_tokens: int) -> list[tuple[int, list[str]]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        return await asyncio.gather(*(one_stream(client, max_tokens) for _ in range(clients)))


def test_a_burst_of_256_streams_is_served_without_a_reset(tiny_server: RunningServer) -> None:
    results = asyncio.run(burst(tiny_server.base_url, 256, 4))
    assert [status for status, _ in results] == [200] * 256
    assert all(lines[-1] == "data: [DONE]" for _, lines in results)


@pytest.fixture(scope="module")
def single_slot_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
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
    with start_server(spec) as server:
        yield server


def test_full_queue_gets_429_and_queued_stream_gets_keep_alives(
    single_slot_server: RunningServer,
) -> None:
    http = httpx.Client(base_url=single_slot_server.base_url, timeout=60)
    long = {"messages": USER, "max_tokens": 50000, "stream": True, "temperature": 0}
    with http.stream("POST", CHAT, json=long) as running:
        running_lines = running.iter_lines()  # keep a reference: closing it disconnects
        while '"content":"' not in (line := next(running_lines)) or '"content":""' in line:
            pass
        with http.stream("POST", CHAT, json={**long, "max_tokens": 2}) as queued:
            comments = []
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
