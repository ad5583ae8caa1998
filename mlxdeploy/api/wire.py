"""Wire models every OpenAI-style API shares: the sampling fields of a request, usage, the
error body. Requests are parsed once into these models at the HTTP edge and convert
themselves into the engine's types."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

from ..engine.api import Finished, SamplingParams
from ..spec.settings import LimitSettings, SamplingDefaults

# Strict numbers: a JSON string is never silently turned into a number, a bool never into an int.
Float = StrictFloat
MAX_TOKENS_LIMIT = 1 << 20


class WireModel(BaseModel):
    # OpenAI clients send fields this server does not implement (user, n=1, seed, ...);
    # ignoring them keeps those clients working. Fields it does implement are strict.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(WireModel):
    include_usage: StrictBool = False


class SamplingFields(WireModel):
    """The sampling fields shared by chat and text completions; None means 'spec default'."""

    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=100)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0, le=100)] | None = None
    repetition_context_size: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    model: str | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        words = [value] if isinstance(value, str) else value or []
        if any(word == "" for word in words):
            raise ValueError("stop words must be non-empty strings")
        return value

    def stop_words(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def to_sampling_params(
        self, d: SamplingDefaults, stop: Sequence[str], limits: LimitSettings
    ) -> SamplingParams:
        """The request's own fields win over the defaults of its model or preset; stop words
        add up. A default max_tokens is capped by limits.max_tokens (requests above it are
        400)."""
        return SamplingParams(
            max_tokens=self.max_tokens
            or self.max_completion_tokens
            or min(d.max_tokens, limits.max_tokens),
            temperature=d.temperature if self.temperature is None else self.temperature,
            top_p=d.top_p if self.top_p is None else self.top_p,
            repetition_penalty=(
                d.repetition_penalty if self.repetition_penalty is None else self.repetition_penalty
            ),
            repetition_context_size=self.repetition_context_size or d.repetition_context_size,
            stop=tuple(dict.fromkeys((*self.stop_words(), *stop))),
        )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


def usage_of(event: Finished) -> Usage:
    prompt, completion = event.prompt_tokens, event.completion_tokens
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details={"cached_tokens": event.cached_tokens},
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def new_completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
