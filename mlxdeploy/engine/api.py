"""The contract between the HTTP layer and an engine. Nothing here imports MLX.

An engine turns a prepared prompt into a stream of `Event`s. The app only ever sees these
types, so tests can drive the app with a scripted engine and the real engine never sees HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ..api.protocol import ChatMessage, GenerationParams, RoleMappingOverride

FinishReason = Literal["stop", "length"]
EngineState = Literal["loading", "ready", "failed", "stopped"]


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt, ready for the engine."""

    tokens: list[int]


@dataclass(frozen=True)
class Progress:
    """Prompt processing advanced (sent while a long prompt is being read)."""

    processed: int
    total: int


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new for a while (queued, or a long prompt step); the request is alive."""


@dataclass(frozen=True)
class Text:
    """New text that is final: no later token or stop word can change it."""

    text: str


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Failed:
    """Generation failed for this request; the engine keeps serving others."""

    message: str


Event = Progress | Heartbeat | Text | Finished | Failed


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the generation thread, read at scrape time. Totals count since start."""

    waiting: int = 0  # requests waiting for a batch slot
    batch_size: int = 0  # requests in the running batch (reading their prompt or decoding)
    prompt_tokens: int = 0  # prompt tokens of admitted requests, cached ones included
    completion_tokens: int = 0  # tokens generated
    prefix_cache_hits: int = 0  # requests that reused cached prompt tokens
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    step_failures: int = 0  # generation steps that raised (their requests failed)


class Engine(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def state(self) -> EngineState: ...

    @property
    def running(self) -> int:
        """Requests admitted to the generation thread and not yet finished."""
        ...

    @property
    def context_length(self) -> int | None:
        """Most tokens the model attends to (prompt + completion); None when unknown."""
        ...

    def prepare(
        self, messages: Sequence[ChatMessage], role_mapping: RoleMappingOverride | None
    ) -> Prompt:
        """Apply the chat format and tokenize; raises InvalidRequest for prompts it cannot serve."""
        ...

    def prepare_text(self, text: str) -> Prompt:
        """Tokenize a plain-text prompt (with the tokenizer's own special tokens)."""
        ...

    def generate(self, prompt: Prompt, params: GenerationParams) -> AsyncGenerator[Event, None]:
        """Stream events; closing the iterator early cancels the request within one step."""
        ...

    def stats(self) -> EngineStats:
        """Current numbers of the generation thread (cheap; safe from the event loop)."""
        ...

    def abort(self, message: str) -> None:
        """End every request in flight now with `Failed(message)`; later ones fail the same way.

        For the end of a shutdown's grace period: called on the event loop."""
        ...
