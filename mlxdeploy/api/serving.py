"""The way of a generation request once its body is parsed and its target found:
guard -> prompt -> run -> render. Every generation route shares it; an API brings only its
prompt and its `Format` (how its objects and stream chunks look).

Both answers consume the same event stream, so streamed deltas join to exactly the text of
the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel
from quart import Response, g, request

from ..engine.api import (
    Failed,
    Finished,
    Heartbeat,
    Progress,
    Prompt,
    PromptRejected,
    Reasoning,
    Text,
    ToolCallArguments,
    ToolCallStarted,
    ToolUse,
)
from ..spec.settings import LimitSettings
from .answer import Answer
from .asgi import request_exit_stack
from .errors import GenerationFailed, InvalidRequest, RequestTimeout, json_response
from .guards.limits import check_context, check_logit_bias, check_max_tokens, check_n
from .metrics import Metrics
from .reasoning import Thinking
from .routing import Target
from .run import Deadline, Run
from .sse import DONE, KEEP_ALIVE, event_stream, sse_event
from .unused import unused_fields
from .wire import ErrorBody, ErrorDetail, SamplingFields, Usage, usage_of


class Assembler(Protocol):
    """How one API renders a whole answer."""

    def whole(self, answers: Sequence[Answer], usage: Usage) -> BaseModel: ...


class Format(Assembler, Protocol):
    """How one API renders a generation: the whole answer, or its stream's events."""

    include_usage: bool

    def opening_event(self, index: int) -> str | None: ...

    def content_event(self, event: Text, index: int) -> str: ...

    def reasoning_event(self, event: Reasoning, index: int) -> str: ...

    def call_event(self, event: ToolCallStarted | ToolCallArguments, index: int) -> str: ...

    def finish_event(self, reason: str, index: int) -> str: ...

    def usage_event(self, usage: Usage) -> str: ...


@dataclass(frozen=True)
class Generation:
    limits: LimitSettings
    metrics: Metrics

    async def serve(
        self,
        target: Target,
        body: SamplingFields,
        prepare: Callable[[], Prompt],
        fmt: Format,
        prompt_param: str = "messages",
        tools: ToolUse | None = None,
        thinking: Thinking | None = None,
    ) -> Response:
        run = await self.start(target, body, prepare, prompt_param, tools, thinking)
        if body.stream:
            return event_stream(stream(run, fmt))
        return json_response(await complete(run, fmt))

    async def start(
        self,
        target: Target,
        body: SamplingFields,
        prepare: Callable[[], Prompt],
        prompt_param: str,
        tools: ToolUse | None = None,
        thinking: Thinking | None = None,
    ) -> Run:
        """Checks and admission, then the prompt. The slot is the request scope's to free
        until the run's stream claims it. `thinking`: a thinking model's budget."""
        deadline = Deadline.start(self.limits.request_timeout_seconds)
        check_max_tokens(body, self.limits, unused_fields())
        check_n(body, self.limits)
        slot = target.admission.enter()
        request_exit_stack(request.scope).callback(slot.release_unclaimed)
        prompt = await read_prompt(prepare, prompt_param)
        check_context(prompt, target.engine.context_length, prompt_param)
        params = body.to_sampling_params(
            target.defaults, target.stop, self.limits, target.response_format, tools
        )
        if thinking is not None and thinking.budget is not None:
            params = dataclasses.replace(params, thinking_budget=thinking.budget)
        if target.adapter is not None:
            params = dataclasses.replace(params, adapter=target.adapter)
        drafts = target.drafting.asked(body.draft_model, body.num_draft_tokens)
        params = dataclasses.replace(params, num_draft_tokens=drafts)
        check_logit_bias(params, target.engine.vocab_size)
        observe = self.metrics.first_token_observer(target.engine.model_id)
        label = g.get("request_id", "")
        return Run(target.engine, prompt, params, deadline, slot, observe, body.n or 1, label)


async def read_prompt(prepare: Callable[[], Prompt], param: str) -> Prompt:
    """The prompt, formatted and tokenized off the event loop; one the engine rejects is a
    400 naming `param` (or the field the engine names)."""
    try:
        return await asyncio.to_thread(prepare)
    except PromptRejected as exc:
        raise InvalidRequest(str(exc), param=exc.param or param) from None


async def complete(run: Run, fmt: Assembler) -> BaseModel:
    answers = [Answer() for _ in range(run.n)]
    async with contextlib.aclosing(run.events()) as events:
        async for index, event in events:
            if isinstance(event, Text | Reasoning | ToolCallStarted | ToolCallArguments):
                answers[index].add(event)
            elif isinstance(event, Failed):
                raise GenerationFailed(event.message)
            elif isinstance(event, Finished):
                answers[index].finished = event
                ends = [answer.finished for answer in answers if answer.finished is not None]
                if len(ends) == run.n:
                    return fmt.whole(answers, usage_of(ends))
    raise GenerationFailed("the engine ended the request without finishing it")


async def stream(run: Run, fmt: Format) -> AsyncIterator[str]:
    """Server-Sent Events: (role first,) then deltas, a real finish_reason, usage, [DONE].
    A failure or the deadline ends the stream with one error event."""
    for index in range(run.n):
        opening = fmt.opening_event(index)
        if opening is not None:
            yield opening
    finished: dict[int, Finished] = {}
    try:
        async with contextlib.aclosing(run.events()) as events:
            async for index, event in events:
                if isinstance(event, Progress | Heartbeat):
                    yield KEEP_ALIVE
                elif isinstance(event, Text):
                    yield fmt.content_event(event, index)
                elif isinstance(event, Reasoning):
                    yield fmt.reasoning_event(event, index)
                elif isinstance(event, ToolCallStarted | ToolCallArguments):
                    yield fmt.call_event(event, index)
                elif isinstance(event, Failed):
                    yield _error_event(event.message)
                    return
                elif isinstance(event, Finished):
                    finished[index] = event
                    yield fmt.finish_event(event.reason, index)
                    if len(finished) == run.n:
                        if fmt.include_usage:
                            yield fmt.usage_event(usage_of(list(finished.values())))
                        yield DONE
                        return
    except RequestTimeout as exc:
        yield sse_event(exc.body())


class Renderer(Protocol):
    """How an API with one answer per request (Responses, Messages) streams it: each engine
    event becomes zero or more Server-Sent Events, in the API's own vocabulary."""

    def opening(self) -> list[str]: ...

    def keep_alive(self) -> str: ...

    def text(self, event: Text) -> list[str]: ...

    def reasoning(self, event: Reasoning) -> list[str]: ...

    def call(self, event: ToolCallStarted | ToolCallArguments) -> list[str]: ...

    def finished(self, event: Finished) -> list[str]: ...

    def failed(self, message: str) -> list[str]: ...


async def stream_one(run: Run, renderer: Renderer) -> AsyncIterator[str]:
    """One answer's Server-Sent Events through `renderer`; a failure or the deadline ends the
    stream with the renderer's error events."""
    for chunk in renderer.opening():
        yield chunk
    try:
        async with contextlib.aclosing(run.events()) as events:
            async for _, event in events:
                for chunk in _render(renderer, event):
                    yield chunk
                if isinstance(event, Failed | Finished):
                    return
    except RequestTimeout as exc:
        for chunk in renderer.failed(exc.message):
            yield chunk


def _render(renderer: Renderer, event: object) -> list[str]:
    if isinstance(event, Text):
        return renderer.text(event)
    if isinstance(event, Reasoning):
        return renderer.reasoning(event)
    if isinstance(event, ToolCallStarted | ToolCallArguments):
        return renderer.call(event)
    if isinstance(event, Finished):
        return renderer.finished(event)
    if isinstance(event, Failed):
        return renderer.failed(event.message)
    return [renderer.keep_alive()]  # Progress, Heartbeat


def _error_event(message: str) -> str:
    return sse_event(ErrorBody(error=ErrorDetail(message=message, type="server_error")))
