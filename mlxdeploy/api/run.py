"""One request's generation, wrapped once: its deadline, its time to first token, and the
release of its admission slot.

The release does not rely on the response body: a client that goes away before the first
byte (Quart is cancelled inside `send(http.response.start)`) never starts the body generator.
`RequestScope`, an ASGI middleware, closes every run a request opened when the ASGI call ends,
however it ends; closing a run frees its slot and cancels its engine job explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from ..engine.api import Engine, Event, Finished, Prompt, SamplingParams, Text
from .errors import RequestTimeout
from .guards.admission import Slot

SCOPE_KEY = "mlxdeploy.cleanup"
ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


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


@dataclass
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
    _events: AsyncGenerator[Event, None] | None = field(default=None, init=False)

    async def events(self) -> AsyncGenerator[Event, None]:
        started = time.perf_counter()
        waiting = True
        self._events = self.engine.generate(self.prompt, self.params)
        while True:
            try:
                event = await _next_before(self._events, self.deadline)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestTimeout(self.deadline.seconds) from None
            if waiting and isinstance(event, Text | Finished):
                self.on_first_token(time.perf_counter() - started)
                waiting = False
            yield event

    async def close(self) -> None:
        """Free the slot and end the engine's job (a no-op for a run that already ended)."""
        self.slot.release()
        if self._events is not None:
            await self._events.aclose()


async def _next_before(events: AsyncIterator[Event], deadline: Deadline) -> Event:
    if _lost_cancellation():
        raise asyncio.CancelledError
    if deadline.passed():
        raise TimeoutError
    async with asyncio.timeout_at(deadline.at):
        return await anext(events)


def _lost_cancellation() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


class RequestScope:
    """ASGI middleware: each HTTP request gets an exit stack in its scope; what a handler puts
    there (slots, runs) is closed when the request's ASGI call returns or is cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        async with contextlib.AsyncExitStack() as stack:
            scope[SCOPE_KEY] = stack  # type: ignore[literal-required]
            await self._app(scope, receive, send)


def request_exit_stack(scope: Any) -> contextlib.AsyncExitStack:
    stack = scope[SCOPE_KEY]
    assert isinstance(stack, contextlib.AsyncExitStack)
    return stack
