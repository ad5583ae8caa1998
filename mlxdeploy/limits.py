"""Per-request bounds: requested tokens, prompt length against the context, wall-clock time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from .errors import InvalidRequest, RequestTimeout
from .generation import Prompt
from .protocol import SamplingFields
from .spec import LimitSettings

T = TypeVar("T")
# Python 3.11+: one timer per step instead of wait_for's task per streamed event.
_timeout_at = getattr(asyncio, "timeout_at", None)


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


def check_context(prompt: Prompt, context_length: int | None) -> None:
    """The prompt must leave room for at least one generated token."""
    size = len(prompt.tokens)
    if context_length is not None and size >= context_length:
        raise InvalidRequest(
            f"this model's maximum context length is {context_length} tokens, "
            f"but the messages are {size} tokens",
            param="messages",
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

    def remaining(self) -> float:
        return max(self.at - asyncio.get_running_loop().time(), 0.0)


async def within(work: Awaitable[T], deadline: Deadline) -> T:
    """`work`, cancelled at the deadline (which closes the engine's generator: slot freed)."""
    try:
        return await asyncio.wait_for(work, deadline.remaining())
    except asyncio.TimeoutError:
        raise RequestTimeout(deadline.seconds) from None


async def stream_within(events: AsyncIterator[str], deadline: Deadline) -> AsyncIterator[str]:
    """Pass `events` on until the deadline; then one SSE error event and the end."""
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        while True:
            try:
                event = await _next_before(events, deadline)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                body = RequestTimeout(deadline.seconds).body().model_dump()
                yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
                return
            yield event


async def _next_before(events: AsyncIterator[str], deadline: Deadline) -> str:
    if _timeout_at is None:
        return await asyncio.wait_for(anext(events), deadline.remaining())
    async with _timeout_at(deadline.at):
        return await anext(events)
