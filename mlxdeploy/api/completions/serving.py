"""Serving text completions: the route's handler and its `text_completion` objects."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel
from quart import Response

from ...engine.api import Prompt, Reasoning, Text, ToolCallArguments, ToolCallStarted
from ..answer import Answer
from ..guards.body import parse_body
from ..routing import Targets
from ..serving import Generation
from ..sse import ChoiceTextEvents, sse_event
from ..wire import Usage, new_completion_id, now
from .wire import CompletionLogprobs, CompletionRequest, TextChoice, TextCompletion


async def completions(generation: Generation, targets: Targets) -> Response:
    body = await parse_body(CompletionRequest)
    target = await targets.resolve(body.model, adapters=body.adapters)

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
    # Per choice: the length of its text streamed so far (its next token's text_offset).
    _offsets: dict[int, int] = field(default_factory=dict, repr=False)

    def opening_event(self, index: int) -> str | None:
        return None

    def content_event(self, event: Text, index: int) -> str:
        if self.logprobs is None:
            return self._text_events(event.text, index)
        offset = self._offsets.get(index, 0)
        logprobs = CompletionLogprobs.of(event.logprobs, offset)
        self._offsets[index] = offset + len(event.text)
        choice = TextChoice(index=index, text=event.text, logprobs=logprobs)
        return sse_event(self._text([choice]))

    def call_event(self, event: ToolCallStarted | ToolCallArguments, index: int) -> str:
        raise AssertionError("text completions offer no tools")

    def reasoning_event(self, event: Reasoning, index: int) -> str:
        raise AssertionError("a text completion's thinking stays in its text")

    @functools.cached_property
    def _text_events(self) -> ChoiceTextEvents:
        return ChoiceTextEvents(
            lambda text, index: self._text([TextChoice(index=index, text=text)])
        )

    def finish_event(self, reason: str, index: int) -> str:
        choice = TextChoice(index=index, text="", finish_reason=reason)  # type: ignore[arg-type]
        return sse_event(self._text([choice]))

    def usage_event(self, usage: Usage) -> str:
        return sse_event(self._text([], usage=usage))

    def whole(self, answers: Sequence[Answer], usage: Usage) -> BaseModel:
        return self._text([self._choice(a, i) for i, a in enumerate(answers)], usage=usage)

    def _choice(self, answer: Answer, index: int) -> TextChoice:
        assert answer.finished is not None
        logprobs = None if self.logprobs is None else CompletionLogprobs.of(answer.logprobs)
        reason = answer.finished.reason
        return TextChoice(index=index, text=answer.text, finish_reason=reason, logprobs=logprobs)  # type: ignore[arg-type]

    def _text(self, choices: list[TextChoice], usage: Usage | None = None) -> TextCompletion:
        return TextCompletion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
