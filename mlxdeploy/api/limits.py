"""Per-request bounds: requested tokens, prompt length against the context, wall-clock time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from .chat import sse_event
from .errors import InvalidRequest, RequestTimeout
from ..engine.api import Engine, Event, Prompt
from .protocol import GenerationParams, SamplingFields
from ..spec.settings import LimitSettings


def check_max_tokens(body: SamplingFields, limits: LimitSettings) -> None:
    """A request may not ask for more tokens than the deployment allows."""
    for param in ("max_tokens", "max_completion_tokens"):
        asked = getattr(body, param)
        if asked is not None and asked > limits.max_tokens:
            raise InvalidRequest(
                f"{param} is {asked}, above this deployment's limit of {limits.max_tokens}",
                param=param,
                code="integer_above_max_value",
            )


def check_context(prompt: Prompt, context_length: int | None, param: str = "messages") -> None:
    """The prompt must leave room for at least one generated token."""
    size = len(prompt.tokens)
    if context_length is not None and size >= context_length:
        raise InvalidRequest(
            f"this model's maximum context length is {context_length} tokens, "
            f"but the {param} are {size} tokens",
            param=param,
            code="context_length_exceeded",
        )


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

    def bound(self, engine: Engine) -> Engine:
        """`engine`, whose generations raise RequestTimeout at this deadline."""
        return cast(Engine, _BoundedEngine(engine, self))


class _BoundedEngine:
    """Passes everything through; `generate` ends at the deadline and closes the engine's
    generator, which cancels the request and frees its batch slot.

    An engine that waits with 3.11's wait_for can lose a cancellation that arrives together
    with an event (MLXEngine no longer does). So the deadline is checked between events as
    well as by a timer, and a lost cancellation (a client that went away) is honoured at the
    next event, which the task still counts.
    """

    def __init__(self, engine: Engine, deadline: Deadline) -> None:
        self._engine = engine
        self._deadline = deadline

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(
        self, prompt: Prompt, params: GenerationParams
    ) -> AsyncGenerator[Event, None]:
        async with contextlib.aclosing(self._engine.generate(prompt, params)) as events:
            while True:
                try:
                    event = await _next_before(events, self._deadline)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise RequestTimeout(self._deadline.seconds) from None
                yield event


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


async def ending_on_timeout(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """A stream whose RequestTimeout becomes one SSE error event, the end of the stream."""
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                yield event
        except RequestTimeout as exc:
            yield sse_event(exc.body())
