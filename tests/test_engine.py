"""MLXEngine's contract edges on the tiny model: what a request gets from an engine that
cannot generate."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlxdeploy.engine.api import Failed, SamplingParams, Turn
from mlxdeploy.engine.engine import MLXEngine
from mlxdeploy.spec import load_spec

PARAMS = SamplingParams(
    max_tokens=4, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
    repetition_context_size=20, stop=(),
)  # fmt: skip


def test_a_stopped_engine_fails_a_request_at_once(tiny_spec: Path) -> None:
    """Nothing reads a stopped engine's inbox: a request must fail, not wait for ever with
    keep-alives."""
    spec = load_spec(tiny_spec, engine={"heartbeat_seconds": 0.1})

    async def first_events() -> list[object]:
        engine = MLXEngine(spec.catalog.models[0], spec.engine)
        engine.start(asyncio.get_running_loop())
        assert await asyncio.to_thread(engine.wait_loaded, 300) == "ready"
        prompt = engine.prepare([Turn("user", "hi")], None)
        await asyncio.to_thread(engine.stop)
        assert engine.state == "stopped"
        events = []
        async with asyncio.timeout(10):
            async for event in engine.generate(prompt, PARAMS):
                events.append(event)
        return events

    events = asyncio.run(first_events())
    assert len(events) == 1 and isinstance(events[0], Failed), events
