"""The engine contract: what an engine is asked (turns, sampling params) and what it answers
(a stream of events). Nothing here imports MLX, HTTP or wire models.

The API layer converts each wire request into these types and maps `PromptRejected` to its own
error shape, so tests can drive the API with a scripted engine and the real engine never sees
HTTP.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "tool_calls"]
EngineState = Literal["unloaded", "loading", "ready", "failed", "stopped"]
RequestState = Literal["queued", "prefill", "decoding"]
Role = Literal["system", "developer", "user", "assistant", "tool"]
SYSTEM_ROLES = frozenset({"system", "developer"})


class PromptRejected(ValueError):
    """The engine cannot serve this prompt (a chat template rejected it, or it is empty).
    `param` names the request field at fault when it is not the prompt itself."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made: `arguments` is JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as the chat format sees it."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers
    name: str | None = None  # a tool turn: the function that answered
    reasoning: str | None = None  # an assistant turn's thinking, given back by the client


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is its JSON Schema, as JSON text."""

    name: str
    description: str | None = None
    parameters: str = '{"type": "object"}'


@dataclass(frozen=True)
class ToolUse:
    """The tools a request offers and how it lets the model use them.

    `choice`: "auto" (the model decides), "required" (at least one call), or the name of the
    one function it must call. Either way every call's arguments match its tool's schema."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    parallel: bool = True


def has_system_turn(turns: Sequence[Turn]) -> bool:
    """Whether the conversation brings its own system prompt."""
    return any(turn.role in SYSTEM_ROLES for turn in turns)


@dataclass(frozen=True)
class RoleOverride:
    """A request's own role-mapping keys (None: the model's); selects the role-mapping format."""

    system_prompt: str | None = None
    system: str | None = None
    user: str | None = None
    assistant: str | None = None
    stop: str | None = None


@dataclass(frozen=True)
class Constraint:
    """The answer must be JSON that matches `schema` (a JSON Schema, as JSON text);
    `{"type": "object"}` is any JSON object. Enforced token by token while sampling."""

    schema: str


@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling for one request: the request's fields over the spec's defaults."""

    max_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    repetition_context_size: int
    stop: tuple[str, ...]
    top_k: int = 0  # 0 is off
    min_p: float = 0.0  # 0 is off
    presence_penalty: float = 0.0  # 0 is off
    presence_context_size: int = 20
    frequency_penalty: float = 0.0  # 0 is off
    frequency_context_size: int = 20
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), sorted by token id
    xtc_probability: float = 0.0  # 0 is off
    xtc_threshold: float = 0.1
    seed: int | None = None  # None: the shared generator; else the request's own key
    constraint: Constraint | None = None  # None: free text
    tools: ToolUse | None = None  # None: no tool calls (the text is all content)
    logprobs: int | None = None  # None: not asked; k: each token's logprob and k top others
    # A thinking model's most tokens of thinking; past them the thinking is closed and the
    # answer follows. None: no bound but max_tokens.
    thinking_budget: int | None = None
    # False: a thinking model's thinking stays in the text, tags included (a plain prompt).
    thinking_apart: bool = True
    # The id of the model's adapter that answers (None: the model's own weights); rows of
    # different adapters share the model's batches.
    adapter: str | None = None
    # Most tokens a draft model guesses per step for this request (None: the model's number;
    # 0: no guessing). Only a model with a draft model guesses.
    num_draft_tokens: int | None = None


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt, ready for the engine. `boundary`: where its system prompt ends (0:
    none found), a prefix that other requests share whatever their questions."""

    tokens: list[int]
    boundary: int = 0


@dataclass(frozen=True)
class Progress:
    """Prompt processing advanced (sent while a long prompt is being read)."""

    processed: int
    total: int


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new for a while (queued, or a long prompt step); the request is alive."""


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token of the answer, for requests that ask for log-probabilities.

    `logprob` is the log-softmax of the logits the sampler saw (after penalties, logit_bias
    and constraints, before temperature and the top-k/top-p/min-p filters). `token` is the
    text this token adds to the answer, so the tokens join to the text exactly; a token that
    ends inside a UTF-8 character adds "" and the token that completes the character carries
    it. `token_bytes` is `token` as UTF-8. `top` holds the most likely tokens at this position
    as (text, UTF-8 bytes, logprob), best first; tokens no constraint allows are left out."""

    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True)
class Text:
    """New text that is final: no later token or stop word can change it.

    `logprobs` (requests that ask): the tokens whose text this piece completes, in order;
    their `token`s join to `text`. Tokens of a stop word are not reported; a token that runs
    into one is reported with the part of its text before it."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Reasoning:
    """More of the model's thinking (a thinking model, before its answer). Final, as `Text`
    is; never part of the answer's text."""

    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    """The model opened tool call number `index` (0, 1, ... within the answer)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """More of call `index`'s arguments (JSON text; the pieces join to the whole)."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """How a choice ended. `stop_word`: the request's (or the spec's) stop word that ended it,
    when one did; None for an end-of-sequence token, the length limit, or tool calls."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stop_word: str | None = None
    reasoning_tokens: int = 0  # of completion_tokens, those the thinking took


@dataclass(frozen=True)
class Failed:
    """Generation failed for this request; the engine keeps serving others."""

    message: str


Event = (
    Progress
    | Heartbeat
    | Text
    | Reasoning
    | ToolCallStarted
    | ToolCallArguments
    | Finished
    | Failed
)


class EmbeddingFailed(RuntimeError):
    """An embedding model could not read a request's inputs; it keeps serving others."""


@dataclass(frozen=True)
class Embedding:
    """One input's vector, of unit length: its values as little-endian float32 bytes (what
    OpenAI's base64 encoding carries)."""

    float32: bytes

    def values(self) -> list[float]:
        values = array("f", self.float32)
        if sys.byteorder == "big":
            values.byteswap()
        return values.tolist()

    def __len__(self) -> int:
        return len(self.float32) // 4


@dataclass(frozen=True)
class Embeddings:
    """An embedding request's answer: one vector per input, in the inputs' order."""

    vectors: tuple[Embedding, ...]
    prompt_tokens: int  # of every input together


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
    prefix_cache_bytes: int = 0  # bytes the prefix cache holds (bounded by its budget)
    prefix_cache_entries: int = 0  # prompts (and snapshots) it holds
    draft_tokens: int = 0  # tokens a draft model guessed (speculative decoding)
    draft_tokens_accepted: int = 0  # of those, the ones the model kept


@dataclass(frozen=True)
class RequestInfo:
    """One request in flight, as `Engine.requests()` sees it at that moment.

    `label`: what the caller tagged the request with (the API: its request id); "" when it
    gave none. `state`: queued (waiting for a batch slot), prefill (its prompt is being
    read) or decoding (generating). A request with several choices is one entry: its
    completion tokens are theirs together, and it is as far along as its furthest choice."""

    label: str
    state: RequestState
    age_seconds: float  # since the engine was given the request
    prompt_tokens: int
    completion_tokens: int  # generated so far
    choices: int = 1


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
    def error(self) -> str | None:
        """Why the model failed (state `failed`), or None."""
        ...

    @property
    def resident_bytes(self) -> int | None:
        """Bytes its weights take in memory while loaded; None when not loaded."""
        ...

    def load(self) -> None:
        """Start loading the weights (state `unloaded` or `failed` -> `loading`); returns at
        once. Called on the event loop."""
        ...

    def unload(self) -> None:
        """Stop generating and let go of the weights (state -> `unloaded`); blocks until
        done. Only for a model without requests in flight; called off the event loop."""
        ...

    @property
    def context_length(self) -> int | None:
        """Most tokens the model attends to (prompt + completion); None when unknown."""
        ...

    @property
    def vocab_size(self) -> int | None:
        """Width of the model's logits (token ids below it exist); None when unknown."""
        ...

    @property
    def thinks(self) -> bool:
        """Whether the model writes its thinking before its answer (a thinking model)."""
        ...

    def prepare(
        self,
        turns: Sequence[Turn],
        role_override: RoleOverride | None,
        tools: ToolUse | None = None,
        template_args: Mapping[str, Any] | None = None,
    ) -> Prompt:
        """Apply the chat format (with the tools the model may call, and `template_args` as
        the chat template's own variables, e.g. enable_thinking) and tokenize; raises
        PromptRejected for prompts it cannot serve, or tools it cannot offer."""
        ...

    def prepare_text(self, text: str) -> Prompt:
        """Tokenize a plain-text prompt (with the tokenizer's own special tokens)."""
        ...

    @property
    def embedding_size(self) -> int | None:
        """Length of an embedding model's vectors (task: embed); None for a model that
        generates, or before the model has loaded."""
        ...

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, with the tokenizer's own special tokens: how an embedding
        model reads text (Qwen3-Embedding's tokenizer appends the <|endoftext|> its vectors
        are pooled at). Cheap enough for a thread off the event loop."""
        ...

    async def embed(
        self, inputs: Sequence[Sequence[int]], dimensions: int | None = None, label: str = ""
    ) -> Embeddings:
        """One unit vector per input (non-empty token ids that fit the context), each read
        as if alone, whatever else shares its batch. `dimensions`: each vector's first that
        many values, normalised again (Matryoshka). Cancelling the call drops what is not read
        yet; raises EmbeddingFailed when the model cannot read them."""
        ...

    def generate(
        self, prompt: Prompt, params: SamplingParams, label: str = ""
    ) -> AsyncGenerator[Event, None]:
        """Stream events; closing the iterator early cancels the request within one step.
        `label` tags the request in `requests()`; the engine gives it no other meaning."""
        ...

    def generate_choices(
        self, prompt: Prompt, params: SamplingParams, n: int, label: str = ""
    ) -> AsyncGenerator[tuple[int, Event], None]:
        """`n` answers to one prompt, which is read once: (choice index, event) pairs until
        every choice has finished or one has failed; closing it early cancels them all."""
        ...

    def stats(self) -> EngineStats:
        """Current numbers of the generation thread (cheap; safe from the event loop)."""
        ...

    def requests(self) -> list[RequestInfo]:
        """The requests given to the engine and not finished yet, oldest first (cheap; called
        on the event loop)."""
        ...

    def abort(self, message: str) -> None:
        """End every request in flight now with `Failed(message)`; later ones fail the same way.

        For the end of a shutdown's grace period: called on the event loop."""
        ...
