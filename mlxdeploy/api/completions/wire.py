"""Text completion wire models: one prompt in, text out."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from .. import unsupported
from ..wire import SamplingFields, Usage


class CompletionRequest(SamplingFields):
    """/v1/completions: plain text in, text out (one prompt per request)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.TEXT)
        return data

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

    @model_serializer(mode="wrap")
    def _usage_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's schema has `usage` as an object, never null: stream chunks leave it out.
        data: dict[str, Any] = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data
