"""A request's admission slot and engine job end with the request, however it ends: at the
ASGI level, not in a response body that may never start."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mlxdeploy.api.app import create_app
from mlxdeploy.spec import load_spec
from tests.conftest import write_spec
from tests.inprocess import LoopThread
from tests.scripted import ScriptedEngine

CHAT = "/v1/chat/completions"
STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}
ONE_SLOT = {"max_batch_size": 1, "max_queue": 0}  # admission lets one request in at a time


def _scope(path: str = CHAT) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


async def _request(app: Any, body: dict[str, Any], leave_at: int | None) -> int | None:
    """One request through the ASGI entry point; the client goes away when the server sends
    its `leave_at`-th message (1: `http.response.start`), and that write then blocks, as a
    socket to a gone client can. Returns the status the app sent.

    Garbage collection closes nothing here (a no-op finalizer for async generators), so what
    ends the engine's job is the app's own doing."""
    gone = asyncio.Event()
    received = False
    messages = 0
    status: int | None = None

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, messages
        messages += 1
        if message["type"] == "http.response.start":
            status = message["status"]
        if messages == leave_at:
            gone.set()
            await asyncio.sleep(3600)  # cancelled by the app once it sees the disconnect

    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=lambda agen: None)
    try:
        await app(_scope(), receive, send)
    finally:
        sys.set_asyncgen_hooks(*hooks)
    return status


@pytest.fixture
def one_slot_spec(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return write_spec(tmp_path / "one.yaml", tiny_model_dir, name="tiny", engine=ONE_SLOT)


@pytest.mark.parametrize("leave_at", [1, 2, 4])  # at the headers, the role chunk, mid-text
def test_a_client_gone_before_or_during_the_body_frees_its_slot(
    one_slot_spec: Path, leave_at: int
) -> None:
    engine = ScriptedEngine(delay=0.05)
    app = create_app(load_spec(one_slot_spec), [engine])
    loop = LoopThread()
    try:
        assert loop.run(_request(app, STREAM, leave_at)) == 200
        # With the slot still taken, this would be 429 (the server at capacity).
        assert loop.run(_request(app, STREAM, None)) == 200
    finally:
        loop.close()


def test_a_client_gone_mid_stream_cancels_its_engine_job_at_once(one_slot_spec: Path) -> None:
    """The job ends when the request does, not when garbage collection finds the stream."""
    engine = ScriptedEngine(pieces=("x",) * 100, delay=0.05)
    app = create_app(load_spec(one_slot_spec), [engine])
    loop = LoopThread()
    try:
        loop.run(_request(app, {**STREAM, "max_tokens": 100}, 4))
        assert (engine.closed, engine.running) == (1, 0)
    finally:
        loop.close()


def test_a_cancelled_request_call_keeps_its_slot_until_its_stream_ends(one_slot_spec: Path) -> None:
    """Hypercorn cancels a request's ASGI call at the end of a shutdown's grace period; the
    stream Quart started goes on, and frees the slot (and its engine job) when it ends."""
    engine = ScriptedEngine(pieces=("x",) * 20, delay=0.05)
    app = create_app(load_spec(one_slot_spec), [engine])
    loop = LoopThread()

    async def cancel_mid_stream() -> None:
        call = asyncio.create_task(_request(app, {**STREAM, "max_tokens": 20}, None))
        while not engine.prompts:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    async def status_when_free() -> int | None:
        for _ in range(200):  # bounded: the stream ends after about one second
            if engine.running == 0:
                break
            await asyncio.sleep(0.05)
        return await _request(app, STREAM, None)

    try:
        loop.run(cancel_mid_stream())
        assert loop.run(status_when_free()) == 200
        assert engine.running == 0
    finally:
        loop.close()
