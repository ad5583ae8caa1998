"""Serving chat completions: the route's handler and how its objects are rendered."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel
from quart import Response

from ...engine.api import Prompt, Reasoning, Text, ToolCallArguments, ToolCallStarted
from ..answer import Answer
from ..errors import InvalidRequest
from ..guards.body import parse_body
from ..routing import Target, Targets
from ..serving import Generation
from ..sse import ChoiceTextEvents, sse_event
from ..wire import Usage, new_completion_id, now
from .wire import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    ResponseMessage,
    ResponseToolCall,
)


async def chat_completions(generation: Generation, targets: Targets) -> Response:
    body = await parse_body(ChatCompletionRequest)
    return await serve_chat(
        generation, body, await targets.resolve(body.model, adapters=body.adapters)
    )


async def preset_chat(generation: Generation, targets: Targets, name: str) -> Response:
    """A preset at its own path: a chat completion request whose `model` may be left out."""
    body = await parse_body(ChatCompletionRequest)
    if body.model not in (None, name):
        raise InvalidRequest(
            f"this endpoint serves '{name}'; leave out model or send '{name}'", param="model"
        )
    return await serve_chat(generation, body, await targets.resolve(name, adapters=body.adapters))


async def serve_chat(
    generation: Generation, body: ChatCompletionRequest, target: Target
) -> Response:
    target.check_text_only(body.media())
    override = body.role_override()
    asked = body.turns()
    tools = target.tool_use(body.tool_use(), asked)
    thinking = target.thinking(body.thinking())

    def prepare() -> Prompt:  # in a thread, once admitted: presets render templates here
        turns = target.turns(asked, override)
        return target.engine.prepare(turns, override, tools, thinking.template_args)

    fmt = ChatFormat(
        model=target.id, include_usage=body.include_usage, logprobs=body.logprobs is True
    )
    return await generation.serve(target, body, prepare, fmt, tools=tools, thinking=thinking)


@dataclass
class ChatFormat:
    """One chat completion: its identity, shared by all chunks, and how each is rendered."""

    model: str
    include_usage: bool = False
    logprobs: bool = False  # the request asked: choices carry their tokens' logprobs
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=now)

    def opening_event(self, index: int) -> str | None:
        return sse_event(self.chunk(Delta(role="assistant", content=""), index))

    def content_event(self, event: Text, index: int) -> str:
        if not self.logprobs:
            return self._text_events(event.text, index)
        logprobs = ChoiceLogprobs.of(event.logprobs)
        return sse_event(self.chunk(Delta(content=event.text), index, logprobs=logprobs))

    def reasoning_event(self, event: Reasoning, index: int) -> str:
        delta = Delta(reasoning_content=event.text, reasoning=event.text)
        return sse_event(self.chunk(delta, index))

    def call_event(self, event: ToolCallStarted | ToolCallArguments, index: int) -> str:
        if isinstance(event, ToolCallStarted):
            call = DeltaToolCall(
                index=event.index,
                id=event.id,
                type="function",
                function=DeltaFunction(name=event.name, arguments=""),
            )
        else:
            call = DeltaToolCall(index=event.index, function=DeltaFunction(arguments=event.text))
        return sse_event(self.chunk(Delta(tool_calls=[call]), index))

    def finish_event(self, reason: str, index: int) -> str:
        return sse_event(self.chunk(Delta(), index, finish_reason=reason))

    def usage_event(self, usage: Usage) -> str:
        return sse_event(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            )
        )

    def whole(self, answers: Sequence[Answer], usage: Usage) -> BaseModel:
        choices = [self._choice(answer, index) for index, answer in enumerate(answers)]
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _choice(self, answer: Answer, index: int) -> Choice:
        assert answer.finished is not None
        calls = [ResponseToolCall.of(call) for call in answer.tool_calls] or None
        text = answer.text
        thought = answer.reasoning
        message = ResponseMessage(
            content=text if text or not calls else None,
            tool_calls=calls,
            reasoning_content=thought,
            reasoning=thought,
        )
        logprobs = ChoiceLogprobs.of(answer.logprobs) if self.logprobs else None
        reason = answer.finished.reason
        return Choice(index=index, message=message, finish_reason=reason, logprobs=logprobs)

    def chunk(
        self,
        delta: Delta,
        index: int = 0,
        finish_reason: str | None = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> ChatCompletionChunk:
        choice = ChunkChoice(
            index=index,
            delta=delta,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            logprobs=logprobs,
        )
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )

    @functools.cached_property
    def _text_events(self) -> ChoiceTextEvents:
        return ChoiceTextEvents(lambda text, index: self.chunk(Delta(content=text), index))
