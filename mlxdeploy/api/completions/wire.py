"""Text completion wire models: one prompt in, text out."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ..wire import SamplingFields, Usage


class CompletionRequest(SamplingFields):
    """/v1/completions: plain text in, text out (one prompt per request)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class TextCompletion(BaseModel):
    """Both the whole answer and each stream chunk of /v1/completions."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
