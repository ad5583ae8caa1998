"""Wire models every OpenAI-style API shares: the sampling fields of a request, usage, the
error body. Requests are parsed once into these models at the HTTP edge and convert
themselves into the engine's types."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
)

from ..engine.api import Constraint, Finished, SamplingParams, ToolUse
from ..grammar import problem_of
from ..spec.formats import ResponseFormat
from ..spec.settings import LimitSettings, LogitBiasMap, SamplingDefaults

# Strict numbers: a JSON string is never silently turned into a number, a bool never into an int.
Float = StrictFloat
T = TypeVar("T")
MAX_TOKENS_LIMIT = 1 << 20
ContextSize = Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Penalty = Annotated[Float, Field(ge=-2, le=2)]  # OpenAI's range for presence and frequency
Seed = Annotated[StrictInt, Field(ge=-(1 << 63), le=(1 << 63) - 1)]  # OpenAI's: a signed int64


class WireModel(BaseModel):
    # Fields a model does not declare are judged before validation, by the request's own
    # rules (`api/unsupported.py`: labels and hints are accepted and noted as unused, anything
    # that would change the answer is a 400); nested objects ignore theirs. Fields that are
    # declared are strict.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(WireModel):
    include_usage: StrictBool = False


def constraint_of(response_format: ResponseFormat | None) -> Constraint | None:
    """The engine's constraint for a response format (None: free text)."""
    schema = None if response_format is None else response_format.schema_text()
    return None if schema is None else Constraint(schema)


class SamplingFields(WireModel):
    """The sampling fields shared by chat and text completions; None means 'spec default'."""

    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=100)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0, le=100)] | None = None
    repetition_context_size: ContextSize | None = None
    top_k: Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_LIMIT)] | None = None
    min_p: Annotated[Float, Field(ge=0, le=1)] | None = None
    presence_penalty: Penalty | None = None
    presence_context_size: ContextSize | None = None
    frequency_penalty: Penalty | None = None
    frequency_context_size: ContextSize | None = None
    logit_bias: LogitBiasMap | None = None
    xtc_probability: Annotated[Float, Field(ge=0, le=1)] | None = None
    xtc_threshold: Annotated[Float, Field(ge=0, le=0.5)] | None = None
    seed: Seed | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None  # choices; limits.max_n bounds it
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    model: str | None = None
    # mlx_lm.server's field: one of the model's adapters, by id or by the path the spec gives.
    adapters: str | None = None
    # mlx_lm.server's fields: the model's draft model (the one its spec names) and how many
    # tokens it guesses per step (at most the spec's; 0: none).
    draft_model: str | None = None
    num_draft_tokens: Annotated[StrictInt, Field(ge=0, le=16)] | None = None
    response_format: ResponseFormat | None = None
    # A thinking model's thinking is an answer's own part (False: it stays in the text).
    THINKING_APART: ClassVar[bool] = True

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        words = [value] if isinstance(value, str) else value or []
        if any(word == "" for word in words):
            raise ValueError("stop words must be non-empty strings")
        return value

    @field_validator("response_format")
    @classmethod
    def _enforceable(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        """A schema the grammar compiler refuses is a 400 when the body is parsed, before the
        request takes a batch slot (compiling without a tokenizer is cheap)."""
        schema = None if value is None else value.schema_text()
        problem = None if schema is None else problem_of(schema)
        if problem is not None:
            raise ValueError(f"invalid JSON schema: {problem}")
        return value

    def wire_name(self, field: str) -> str:
        """What the request's own API calls this field (errors name it so)."""
        return field

    def stop_words(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def asked_logprobs(self) -> int | None:
        """How many top alternatives each token reports; None: no log-probabilities (each API
        spells the request its own way)."""
        return None

    def to_sampling_params(
        self,
        d: SamplingDefaults,
        stop: Sequence[str],
        limits: LimitSettings,
        response_format: ResponseFormat | None = None,
        tools: ToolUse | None = None,
    ) -> SamplingParams:
        """The request's own fields win over the defaults of its model or preset; stop words
        add up. max_completion_tokens wins over the deprecated max_tokens (OpenAI's rule). The
        request's or the default max_tokens is capped by limits.max_tokens (a request above it
        was refused already under `max_tokens_exceeded: reject`). The request's own
        response_format (type text included: free text) wins over the preset's
        `response_format`, which applies only when the request sets none."""
        bias = d.logit_bias if self.logit_bias is None else self.logit_bias
        asked = self.max_completion_tokens or self.max_tokens or d.max_tokens
        return SamplingParams(
            max_tokens=min(asked, limits.max_tokens),
            temperature=_pick(self.temperature, d.temperature),
            top_p=_pick(self.top_p, d.top_p),
            repetition_penalty=_pick(self.repetition_penalty, d.repetition_penalty),
            repetition_context_size=_pick(self.repetition_context_size, d.repetition_context_size),
            stop=tuple(dict.fromkeys((*self.stop_words(), *stop))),
            top_k=_pick(self.top_k, d.top_k),
            min_p=_pick(self.min_p, d.min_p),
            presence_penalty=_pick(self.presence_penalty, d.presence_penalty),
            presence_context_size=_pick(self.presence_context_size, d.presence_context_size),
            frequency_penalty=_pick(self.frequency_penalty, d.frequency_penalty),
            frequency_context_size=_pick(self.frequency_context_size, d.frequency_context_size),
            logit_bias=tuple(sorted(bias.items())),
            xtc_probability=_pick(self.xtc_probability, d.xtc_probability),
            xtc_threshold=_pick(self.xtc_threshold, d.xtc_threshold),
            seed=self.seed,
            constraint=constraint_of(_pick(self.response_format, response_format)),
            tools=tools,
            logprobs=self.asked_logprobs(),
            thinking_apart=self.THINKING_APART,
        )


def type_of(value: Any, missing: str | None = None) -> str | None:
    """A tagged union member's `type` (for pydantic's Discriminator): `missing` when an object
    has none; None, a validation error naming the field, for a value that is not an object."""
    if isinstance(value, dict):
        kind = value.get("type", missing)
        return kind if isinstance(kind, str) else None
    kind = getattr(value, "type", None)
    return kind if isinstance(kind, str) else None


def _pick(asked: T | None, default: T) -> T:
    return default if asked is None else asked


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None
    completion_tokens_details: dict[str, int] | None = None


def usage_of(finished: Sequence[Finished]) -> Usage:
    """The usage of a request's choices: their prompt, read once, and all their tokens (of
    which `reasoning_tokens` were thinking)."""
    prompt, cached = finished[0].prompt_tokens, finished[0].cached_tokens
    completion = sum(event.completion_tokens for event in finished)
    reasoning = sum(event.reasoning_tokens for event in finished)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details={"cached_tokens": cached},
        completion_tokens_details={"reasoning_tokens": reasoning},
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


@functools.cache
def system_fingerprint() -> str:
    """The build that answers (OpenAI's `system_fingerprint`): mlxdeploy's, mlx-lm's and mlx's
    versions, read from the installed packages' metadata, never by importing mlx."""
    names = ("mlxdeploy", "mlx-lm", "mlx")
    return "-".join(f"{name}{_version(name)}" for name in names)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def new_completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def new_id(prefix: str) -> str:
    """An object id as the Responses and Messages APIs write them (`resp_…`, `msg_…`)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def enforceable(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON Schema the grammar compiler takes (for a field validator: a bad one is a 400
    when the body is parsed, before the request takes a batch slot)."""
    schema = None if schema is None else _without_string_keys(schema)
    problem = None if schema is None else problem_of(json.dumps(schema))
    if problem is not None:
        raise ValueError(f"invalid JSON schema: {problem}")
    return schema


def _without_string_keys(node: Any) -> Any:
    """The schema without `propertyNames: {type: string}` on its objects: every JSON key is a
    string, so it says nothing, and the grammar compiler does not take the keyword (zod's
    records carry it, e.g. in Claude Code's tools)."""
    if isinstance(node, list):
        return [_without_string_keys(item) for item in node]
    if not isinstance(node, dict):
        return node
    trivial = node.get("type") == "object" and node.get("propertyNames") == {"type": "string"}
    return {
        key: _without_string_keys(value)
        for key, value in node.items()
        if not (trivial and key == "propertyNames")
    }


def now() -> int:
    return int(time.time())
