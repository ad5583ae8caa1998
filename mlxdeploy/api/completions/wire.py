"""Text completion wire models: one prompt in, text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from ...engine.api import TokenLogprob
from .. import unsupported
from ..wire import SamplingFields, Usage, system_fingerprint

MAX_LOGPROBS = 5  # OpenAI's limit for the legacy completions API


class CompletionRequest(SamplingFields):
    """/v1/completions: plain text in, text out (one prompt per request)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    # N: each token's log-probability and the N most likely tokens (0: the token's only)
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    THINKING_APART: ClassVar[bool] = False  # a plain prompt's continuation is all text

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any, info: ValidationInfo) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.TEXT, info)
        return data

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def asked_logprobs(self) -> int | None:
        return self.logprobs


class CompletionLogprobs(BaseModel):
    """The legacy shape: parallel lists, one entry per token. `top_logprobs` maps the text of
    the most likely tokens to their logprobs, the sampled token always among them (so up to
    N + 1 entries); `text_offset` is where each token starts in the completion's text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]

    @classmethod
    def of(cls, tokens: Sequence[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
        """`offset`: where the first token starts (the length of the text before it)."""
        starts = []
        for t in tokens:
            starts.append(offset)
            offset += len(t.token)
        return cls(
            tokens=[t.token for t in tokens],
            token_logprobs=[t.logprob for t in tokens],
            top_logprobs=[_top(t) for t in tokens],
            text_offset=starts,
        )


def _top(t: TokenLogprob) -> dict[str, float]:
    top: dict[str, float] = {}
    for text, _, logprob in t.top:
        top.setdefault(text, logprob)  # two tokens may spell the same text: the likelier wins
    top.setdefault(t.token, t.logprob)
    return top


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class TextCompletion(BaseModel):
    """Both the whole answer and each stream chunk of /v1/completions."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    system_fingerprint: str = Field(default_factory=system_fingerprint)

    @model_serializer(mode="wrap")
    def _usage_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's schema has `usage` as an object, never null: stream chunks leave it out.
        data: dict[str, Any] = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data
