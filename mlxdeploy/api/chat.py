"""Chat and text completions on top of an Engine: one generator contract for streamed and
whole answers; the two APIs differ only in how a `Completion` renders its objects.

Both paths consume the same event stream, so the streamed deltas join to exactly the text of
the non-streamed answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic import BaseModel

from .errors import GenerationFailed
from ..engine.api import Engine, Failed, Finished, Heartbeat, Progress, Prompt, Text
from .protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorDetail,
    GenerationParams,
    ResponseMessage,
    TextChoice,
    TextCompletion,
    Usage,
    make_usage,
    new_completion_id,
    now,
)

KEEP_ALIVE = ": keep-alive\n\n"


@dataclass
class Completion:
    """One chat completion: its identity, shared by all chunks, and how each is rendered."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=now)

    def opening_event(self) -> str | None:
        return sse_event(_chunk(self, Delta(role="assistant", content="")))

    def content_event(self, text: str) -> str:
        """The SSE event of one content delta: rendered from a template, because it is sent
        once per token per stream (equal to rendering the chunk model)."""
        head, tail = self._content_template
        return f"{head}{json.dumps(text, ensure_ascii=False)}{tail}"

    def content_chunk(self, text: str) -> BaseModel:
        return _chunk(self, Delta(content=text))

    def finish_event(self, reason: str) -> str:
        return sse_event(_chunk(self, Delta(), finish_reason=reason))

    def usage_event(self, event: Finished) -> str:
        return sse_event(_usage_chunk(self, event))

    def whole(self, text: str, event: Finished) -> BaseModel:
        choice = Choice(message=ResponseMessage(content=text), finish_reason=event.reason)
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=_usage(event),
        )

    @functools.cached_property
    def _content_template(self) -> tuple[str, str]:
        marker = "\u0000MARK\u0000"
        rendered = sse_event(self.content_chunk(marker))
        head, tail = rendered.split(json.dumps(marker, ensure_ascii=False))
        return head, tail


@dataclass
class TextCompletionFormat(Completion):
    """/v1/completions: `text_completion` objects, no role chunk."""

    id: str = field(default_factory=lambda: new_completion_id("cmpl"))

    def opening_event(self) -> str | None:
        return None

    def content_chunk(self, text: str) -> BaseModel:
        return self._text(TextChoice(text=text))

    def finish_event(self, reason: str) -> str:
        return sse_event(self._text(TextChoice(text="", finish_reason=reason)))  # type: ignore[arg-type]

    def usage_event(self, event: Finished) -> str:
        return sse_event(self._text(None, usage=_usage(event)))

    def whole(self, text: str, event: Finished) -> BaseModel:
        return self._text(TextChoice(text=text, finish_reason=event.reason), usage=_usage(event))

    def _text(self, choice: TextChoice | None, usage: Usage | None = None) -> TextCompletion:
        choices = [choice] if choice is not None else []
        return TextCompletion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )


async def complete(
    engine: Engine, prompt: Prompt, params: GenerationParams, completion: Completion
) -> BaseModel:
    parts: list[str] = []
    async with contextlib.aclosing(engine.generate(prompt, params)) as events:
        async for event in events:
            if isinstance(event, Text):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise GenerationFailed(event.message)
            elif isinstance(event, Finished):
                return completion.whole("".join(parts), event)
    raise GenerationFailed("the engine ended the request without finishing it")


async def stream(
    engine: Engine, prompt: Prompt, params: GenerationParams, completion: Completion
) -> AsyncIterator[str]:
    """Server-Sent Events: (role first,) then deltas, a real finish_reason, usage, [DONE]."""
    opening = completion.opening_event()
    if opening is not None:
        yield opening
    async with contextlib.aclosing(engine.generate(prompt, params)) as events:
        async for event in events:
            if isinstance(event, Progress | Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, Text):
                yield completion.content_event(event.text)
            elif isinstance(event, Failed):
                error = ErrorDetail(message=event.message, type="server_error")
                yield sse_event(ErrorBody(error=error))
                return
            elif isinstance(event, Finished):
                yield completion.finish_event(event.reason)
                if completion.include_usage:
                    yield completion.usage_event(event)
                yield "data: [DONE]\n\n"
                return


def _chunk(
    completion: Completion, delta: Delta, finish_reason: str | None = None
) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=completion.id,
        created=completion.created,
        model=completion.model,
        choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],  # type: ignore[arg-type]
    )


def _usage_chunk(completion: Completion, event: Finished) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=completion.id,
        created=completion.created,
        model=completion.model,
        choices=[],
        usage=_usage(event),
    )


def _usage(event: Finished) -> Usage:
    return make_usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)


def sse_event(model: BaseModel) -> str:
    """One Server-Sent Event carrying `model` as compact JSON."""
    payload = model.model_dump()
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
