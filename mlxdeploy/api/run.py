"""One request's generation, wrapped once: its deadline, its time to first token, and the
release of its admission slot.

A run's stream closes the engine's stream explicitly (so a client that goes away cancels its
job at once, not when garbage collection finds it) and frees the slot when it ends. A request
whose stream never starts, e.g. a client gone before the first byte (Quart is cancelled inside
`send(http.response.start)` and never starts the body), has its slot freed by `RequestScope`
(`asgi.py`) when the request's ASGI call ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from ..engine.api import Engine, Event, Finished, Prompt, SamplingParams, Text
from .errors import RequestTimeout
from .guards.admission import Slot


@dataclass(frozen=True)
class Deadline:
    """When a request must be done, on the event loop's clock; `seconds` is the whole budget."""

    at: float
    seconds: float

    @classmethod
    def start(cls, seconds: float) -> Deadline:
        return cls(asyncio.get_running_loop().time() + seconds, seconds)

    def passed(self) -> bool:
        return asyncio.get_running_loop().time() >= self.at


@dataclass(frozen=True)
class Run:
    """The engine's event stream for one request, ending at the deadline with RequestTimeout.

    An engine that waits with 3.11's wait_for can lose a cancellation that arrives together
    with an event (MLXEngine no longer does). So the deadline is checked between events as
    well as by a timer, and a lost cancellation (a client that went away) is honoured at the
    next event, which the task still counts.
    """

    engine: Engine
    prompt: Prompt
    params: SamplingParams
    deadline: Deadline
    slot: Slot
    on_first_token: Callable[[float], None] = lambda seconds: None
    n: int = 1  # choices
    label: str = ""  # the request id: how the engine's `requests()` names this request

    async def events(self) -> AsyncGenerator[tuple[int, Event], None]:
        """(choice index, event) pairs, until every choice has finished or one failed."""
        self.slot.claim()
        started, waiting = time.perf_counter(), True
        try:
            stream = self.engine.generate_choices(self.prompt, self.params, self.n, self.label)
            async with contextlib.aclosing(stream) as events:
                while True:
                    try:
                        event = await _next_before(events, self.deadline)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        raise RequestTimeout(self.deadline.seconds) from None
                    if waiting and isinstance(event[1], Text | Finished):
                        self.on_first_token(time.perf_counter() - started)
                        waiting = False
                    yield event
        finally:
            self.slot.release()


async def _next_before(
    events: AsyncIterator[tuple[int, Event]], deadline: Deadline
) -> tuple[int, Event]:
    if _lost_cancellation():
        raise asyncio.CancelledError
    if deadline.passed():
        raise TimeoutError
    async with asyncio.timeout_at(deadline.at):
        return await anext(events)


def _lost_cancellation() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())
