"""Chat completions on top of an Engine: one generator contract for streamed and whole answers.

Both paths consume the same event stream, so the streamed deltas join to exactly the text of
the non-streamed answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .errors import GenerationFailed
from .generation import Engine, Failed, Finished, Heartbeat, Progress, Prompt, Text
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
    Usage,
    make_usage,
    new_completion_id,
    now,
)

KEEP_ALIVE = ": keep-alive\n\n"


@dataclass
class Completion:
    """Identity of one response, shared by all its chunks."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=now)

    def content_event(self, text: str) -> str:
        """The SSE event of one content delta: rendered from a template, because it is sent
        once per token per stream (equal to `_sse(_chunk(self, Delta(content=text)))`)."""
        head, tail = self._content_template
        return f"{head}{json.dumps(text, ensure_ascii=False)}{tail}"

    @functools.cached_property
    def _content_template(self) -> tuple[str, str]:
        marker = "\u0000MARK\u0000"
        rendered = _sse(_chunk(self, Delta(content=marker)))
        head, tail = rendered.split(json.dumps(marker, ensure_ascii=False))
        return head, tail


async def complete(
    engine: Engine, prompt: Prompt, params: GenerationParams, completion: Completion
) -> ChatCompletion:
    parts: list[str] = []
    async with contextlib.aclosing(engine.generate(prompt, params)) as events:
        async for event in events:
            if isinstance(event, Text):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise GenerationFailed(event.message)
            elif isinstance(event, Finished):
                return ChatCompletion(
                    id=completion.id,
                    created=completion.created,
                    model=completion.model,
                    choices=[
                        Choice(
                            message=ResponseMessage(content="".join(parts)),
                            finish_reason=event.reason,
                        )
                    ],
                    usage=_usage(event),
                )
    raise GenerationFailed("the engine ended the request without finishing it")


async def stream(
    engine: Engine, prompt: Prompt, params: GenerationParams, completion: Completion
) -> AsyncIterator[str]:
    """Server-Sent Events: role first, then deltas, a real finish_reason, usage, [DONE]."""
    yield _sse(_chunk(completion, Delta(role="assistant", content="")))
    async with contextlib.aclosing(engine.generate(prompt, params)) as events:
        async for event in events:
            if isinstance(event, Progress | Heartbeat):
                yield KEEP_ALIVE
            elif isinstance(event, Text):
                yield completion.content_event(event.text)
            elif isinstance(event, Failed):
                error = ErrorDetail(message=event.message, type="server_error")
                yield _sse(ErrorBody(error=error))
                return
            elif isinstance(event, Finished):
                yield _sse(_chunk(completion, Delta(), finish_reason=event.reason))
                if completion.include_usage:
                    yield _sse(_usage_chunk(completion, event))
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


def _sse(model: ChatCompletionChunk | ErrorBody) -> str:
    payload = model.model_dump()
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
