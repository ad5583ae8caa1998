"""OpenAI wire models: requests, responses, stream chunks and the error body.

Nothing here knows about MLX. Requests are parsed once into these models at the HTTP edge;
the engine receives `GenerationParams` and a list of `ChatMessage`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

# Strict numbers: a JSON string is never silently turned into a number, a bool never into an int.
Float = StrictFloat
MAX_TOKENS_LIMIT = 1 << 20


class WireModel(BaseModel):
    # OpenAI clients send fields this server does not implement (user, n=1, seed, ...);
    # ignoring them keeps those clients working. Fields it does implement are strict.
    model_config = ConfigDict(extra="ignore")


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class RoleMappingOverride(WireModel):
    model_config = ConfigDict(extra="forbid")
    system_prompt: str | None = None
    system: str | None = None
    user: str | None = None
    assistant: str | None = None
    stop: str | None = None


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


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    role_mapping: RoleMappingOverride | None = None


class CompletionRequest(SamplingFields):
    """/v1/completions: plain text in, text out (one prompt per request)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


@dataclass(frozen=True)
class GenerationParams:
    """Resolved sampling for one request: the request's fields over the spec's defaults."""

    max_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    repetition_context_size: int
    stop: tuple[str, ...]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlxdeploy"
    parent: str | None = None  # an endpoint preset's model, as vLLM names a LoRA's base model
    description: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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


def make_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details={"cached_tokens": cached_tokens},
    )


def error_param(loc: tuple[Any, ...]) -> str | None:
    """`('messages', 0, 'content')` -> `messages[0].content`, the way OpenAI names params."""
    out = ""
    for part in loc:
        if isinstance(part, str) and _is_union_tag(part):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _is_union_tag(part: str) -> bool:
    """pydantic names the branch of a union in `loc` (`str`, `list[str]`, `function-after[...]`)."""
    return part in {"str", "int", "float", "bool", "list", "dict", "none"} or any(
        c in part for c in "[-"
    )
