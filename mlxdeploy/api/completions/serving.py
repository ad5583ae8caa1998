"""Serving text completions: the route's handler and its `text_completion` objects."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pydantic import BaseModel
from quart import Response

from ...engine.api import Finished, Prompt, Text, ToolCallArguments, ToolCallStarted
from ..answer import Answer
from ..guards.body import parse_body
from ..routing import Targets
from ..serving import Generation
from ..sse import TextEvents, sse_event
from ..wire import Usage, new_completion_id, now, usage_of
from .wire import CompletionLogprobs, CompletionRequest, TextChoice, TextCompletion


async def completions(generation: Generation, targets: Targets) -> Response:
    body = await parse_body(CompletionRequest)
    target = targets.lookup(body.model)

    def prepare() -> Prompt:  # in a thread, once admitted: presets render templates here
        return target.engine.prepare_text(target.prompt(body.prompt_text()))

    fmt = TextFormat(model=target.id, include_usage=body.include_usage, logprobs=body.logprobs)
    return await generation.serve(target, body, prepare, fmt, prompt_param="prompt")


@dataclass
class TextFormat:
    """/v1/completions: `text_completion` objects, no role chunk."""

    model: str
    include_usage: bool = False
    logprobs: int | None = None  # the request's N: choices carry their tokens' logprobs
    id: str = field(default_factory=lambda: new_completion_id("cmpl"))
    created: int = field(default_factory=now)
    _offset: int = 0  # the length of the text streamed so far (the next token's text_offset)

    def opening_event(self) -> str | None:
        return None

    def content_event(self, event: Text) -> str:
        if self.logprobs is None:
            return self._text_events(event.text)
        logprobs = CompletionLogprobs.of(event.logprobs, self._offset)
        self._offset += len(event.text)
        return sse_event(self._text(TextChoice(text=event.text, logprobs=logprobs)))

    def call_event(self, event: ToolCallStarted | ToolCallArguments) -> str:
        raise AssertionError("text completions offer no tools")

    @functools.cached_property
    def _text_events(self) -> TextEvents:
        return TextEvents(lambda text: self._text(TextChoice(text=text)))

    def finish_event(self, reason: str) -> str:
        return sse_event(self._text(TextChoice(text="", finish_reason=reason)))  # type: ignore[arg-type]

    def usage_event(self, event: Finished) -> str:
        return sse_event(self._text(None, usage=usage_of(event)))

    def whole(self, answer: Answer, event: Finished) -> BaseModel:
        logprobs = None if self.logprobs is None else CompletionLogprobs.of(answer.logprobs)
        choice = TextChoice(text=answer.text, finish_reason=event.reason, logprobs=logprobs)  # type: ignore[arg-type]
        return self._text(choice, usage=usage_of(event))

    def _text(self, choice: TextChoice | None, usage: Usage | None = None) -> TextCompletion:
        choices = [choice] if choice is not None else []
        return TextCompletion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
