"""MLXEngine's contract edges on the tiny model: what a request gets from an engine that
cannot generate."""

from __future__ import annotations

import asyncio
import collections
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
    loaded = load_spec(tiny_spec, engine={"heartbeat_seconds": 0.1})

    async def first_events() -> list[object]:
        engine = MLXEngine(loaded.catalog.models[0])
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


def test_ready_text_is_joined_for_a_reader_that_fell_behind() -> None:
    """What is queued when the reader comes back goes out as one piece per choice and run of
    text; other events keep their place, and the text joins to the same answer."""
    from mlxdeploy.engine.api import Finished, Text, TokenLogprob
    from mlxdeploy.engine.choices import take_ready

    a, b = TokenLogprob("a", b"a", -0.1, ()), TokenLogprob("b", b"b", -0.2, ())
    queued = [
        (0, Text("a", (a,))), (0, Text("b", (b,))), (1, Text("x")), (0, Text("c")),
        (0, Text("d")), (0, Finished("stop", 3, 4, 0)), (1, Text("y")),
    ]  # fmt: skip

    async def drained() -> list[tuple[int, object]]:
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        for item in queued:
            queue.put_nowait(item)
        ready: collections.deque[tuple[int, object]] = collections.deque()
        take_ready(queue, ready)  # type: ignore[arg-type]
        return list(ready)

    assert asyncio.run(drained()) == [
        (0, Text("ab", (a, b))), (1, Text("x")), (0, Text("cd")),
        (0, Finished("stop", 3, 4, 0)), (1, Text("y")),
    ]  # fmt: skip


def test_a_slow_reader_gets_fewer_pieces_of_the_same_text(tiny_spec: Path) -> None:
    loaded = load_spec(tiny_spec)
    params = SamplingParams(
        max_tokens=24, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
        repetition_context_size=20, stop=(),
    )  # fmt: skip

    async def pieces(delay: float) -> list[str]:
        engine = MLXEngine(loaded.catalog.models[0])
        engine.start(asyncio.get_running_loop())
        assert await asyncio.to_thread(engine.wait_loaded, 300) == "ready"
        prompt = engine.prepare([Turn("user", "Tell me a story")], None)
        out = []
        async for event in engine.generate(prompt, params):
            if isinstance(event, Text):
                out.append(event.text)
                await asyncio.sleep(delay)  # a client that reads slowly
        await asyncio.to_thread(engine.stop)
        return out

    from mlxdeploy.engine.api import Text

    fast, slow = asyncio.run(pieces(0.0)), asyncio.run(pieces(0.5))
    assert "".join(slow) == "".join(fast)
    # 24 tokens take well under a second here: a reader that sleeps 0.5 s per piece finds the
    # rest of the text ready in few pieces, not one per token.
    assert len(slow) <= 6
