"""A scripted engine that follows the engine contract (`engine/api.py`), for HTTP tests where
only HTTP matters: it answers every prompt with the same pieces of text, one event each."""

from __future__ import annotations

import asyncio
import math
import struct
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlxdeploy.engine.api import (
    Embedding,
    Embeddings,
    EngineState,
    EngineStats,
    Event,
    Failed,
    Finished,
    FinishReason,
    Prompt,
    PromptRejected,
    Reasoning,
    RequestInfo,
    RequestState,
    RoleOverride,
    SamplingParams,
    Text,
    Tool,
    ToolUse,
    Turn,
)

PROGRESS: tuple[RequestState, ...] = ("queued", "prefill", "decoding")


@dataclass(eq=False)
class Flight:
    """One request in flight, for `requests()`."""

    label: str
    prompt_tokens: int
    choices: int
    created: float = field(default_factory=time.monotonic)
    state: RequestState = "queued"
    completion_tokens: int = 0

    def advance(self, state: RequestState) -> None:
        """As far along as its furthest choice."""
        if PROGRESS.index(state) > PROGRESS.index(self.state):
            self.state = state

    def info(self, now: float) -> RequestInfo:
        return RequestInfo(
            self.label,
            self.state,
            now - self.created,
            self.prompt_tokens,
            self.completion_tokens,
            self.choices,
        )


@dataclass
class ScriptedEngine:
    model_id: str = "tiny"
    pieces: tuple[str, ...] = ("Hello", ",", " world", ".")
    state: EngineState = "ready"
    context_length: int | None = 2048
    vocab_size: int | None = 256  # its prompts are code points below this
    delay: float = 0.0  # seconds before each piece: for streams that stay open a while
    running: int = 0
    prompts: list[Prompt] = field(default_factory=list)  # every prompt it was asked to generate
    params: list[SamplingParams] = field(default_factory=list)
    turns: list[list[Turn]] = field(default_factory=list)
    tools: list[list[Tool]] = field(default_factory=list)  # the tools each prepare was given
    closed: int = 0  # generations closed before their end (client gone, deadline)
    labels: list[str] = field(default_factory=list)  # the label of every generation
    # When set: at most `slots` requests generate at once; the others wait, queued.
    slots: int | None = None
    # When given: each generation stops after its first piece until the event is set.
    hold: threading.Event | None = None
    flights: list[Flight] = field(default_factory=list)  # the requests in flight
    # A thinking model: these pieces of thinking come first (each counts as a token).
    thoughts: tuple[str, ...] = ()
    template_args: list[dict[str, Any]] = field(default_factory=list)  # each prepare's
    # Loading and unloading (a model served on demand): how long a load takes, the bytes
    # it then holds, and the error a load ends in (state failed) when set.
    load_seconds: float = 0.0
    weight_bytes: int = 1 << 20
    load_error: str | None = None
    resident_bytes: int | None = None
    error: str | None = None
    loaded: int = 0  # loads started
    unloaded: int = 0  # unloads done
    # An embedding model (task: embed) when set: the length of its vectors.
    embedding_size: int | None = None
    embedded: list[list[list[int]]] = field(default_factory=list)  # each embed call's inputs
    _aborted: str | None = None
    _busy: int = 0

    def __post_init__(self) -> None:
        if self.state == "ready":
            self.resident_bytes = self.weight_bytes

    def load(self) -> None:
        self.loaded += 1
        self.state = "loading"
        asyncio.get_running_loop().call_later(self.load_seconds, self._loaded)

    def _loaded(self) -> None:
        self.error = self.load_error
        self.state = "failed" if self.load_error else "ready"
        self.resident_bytes = None if self.load_error else self.weight_bytes

    def unload(self) -> None:
        assert not self.flights, "unloaded with requests in flight"
        self.unloaded += 1
        self.state = "unloaded"
        self.resident_bytes = None

    def prepare(
        self,
        turns: Sequence[Turn],
        role_override: RoleOverride | None,
        tools: ToolUse | None = None,
        template_args: Mapping[str, Any] | None = None,
    ) -> Prompt:
        self.template_args.append(dict(template_args or {}))
        self.turns.append(list(turns))
        self.tools.append([] if tools is None else list(tools.tools))
        text = "".join(f"{turn.role}:{turn.content}\n" for turn in turns)
        if not text.strip():
            raise PromptRejected("the prompt is empty after formatting")
        return Prompt([ord(c) for c in text])

    @property
    def thinks(self) -> bool:
        return bool(self.thoughts)

    def prepare_text(self, text: str) -> Prompt:
        if not text:
            raise PromptRejected("the prompt is empty")
        return Prompt([ord(c) for c in text])

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[ord(c) for c in text] for text in texts]

    async def embed(
        self, inputs: Sequence[Sequence[int]], dimensions: int | None = None, label: str = ""
    ) -> Embeddings:
        """Each input's vector is a fixed function of its tokens: `scripted_vector`."""
        assert self.embedding_size is not None, "a scripted generation model has no embeddings"
        self.embedded.append([list(tokens) for tokens in inputs])
        self.labels.append(label)
        if self.delay:
            await asyncio.sleep(self.delay)
        size = dimensions or self.embedding_size
        vectors = tuple(
            Embedding(pack(scripted_vector(t, self.embedding_size)[:size])) for t in inputs
        )
        return Embeddings(vectors, sum(len(tokens) for tokens in inputs))

    async def generate(
        self, prompt: Prompt, params: SamplingParams, label: str = ""
    ) -> AsyncGenerator[Event, None]:
        flight = self._take_off(prompt, label, 1)
        try:
            async for event in self._script(prompt, params, flight):
                yield event
        finally:
            self.flights.remove(flight)

    def _take_off(self, prompt: Prompt, label: str, choices: int) -> Flight:
        self.labels.append(label)
        flight = Flight(label, len(prompt.tokens), choices)
        self.flights.append(flight)
        return flight

    async def _script(
        self, prompt: Prompt, params: SamplingParams, flight: Flight
    ) -> AsyncGenerator[Event, None]:
        self.prompts.append(prompt)
        self.params.append(params)
        self.running += 1
        done = admitted = False
        try:
            while self.slots is not None and self._busy >= self.slots:
                await asyncio.sleep(0.005)
            self._busy, admitted = self._busy + 1, True
            flight.advance("prefill")
            if self._aborted is not None:
                done = True
                yield Failed(self._aborted)
                return
            for thought in self.thoughts:
                yield Reasoning(thought)
            pieces = self.pieces[: params.max_tokens]
            reason: FinishReason = "length" if len(self.pieces) > params.max_tokens else "stop"
            for index, piece in enumerate(pieces):
                if self.delay:
                    await asyncio.sleep(self.delay)
                while index == 1 and self.hold is not None and not self.hold.is_set():
                    await asyncio.sleep(0.005)
                if self._aborted is not None:
                    done = True
                    yield Failed(self._aborted)
                    return
                flight.advance("decoding")
                flight.completion_tokens += 1
                yield Text(piece)
            done = True
            thought = len(self.thoughts)
            used = len(pieces) + thought
            yield Finished(reason, len(prompt.tokens), used, 0, reasoning_tokens=thought)
        finally:
            self.running -= 1
            if admitted:
                self._busy -= 1
            if not done:
                self.closed += 1

    async def generate_choices(
        self, prompt: Prompt, params: SamplingParams, n: int, label: str = ""
    ) -> AsyncGenerator[tuple[int, Event], None]:
        """The script once per choice, the choices' events interleaved."""
        flight = self._take_off(prompt, label, n)
        streams = [self._script(prompt, params, flight) for _ in range(n)]
        try:
            pending = list(enumerate(streams))
            while pending:
                for entry in list(pending):
                    index, stream = entry
                    try:
                        event = await anext(stream)
                    except StopAsyncIteration:
                        pending.remove(entry)
                        continue
                    yield index, event
                    if isinstance(event, Failed):
                        return
        finally:
            for stream in streams:
                await stream.aclose()
            self.flights.remove(flight)

    def stats(self) -> EngineStats:
        return EngineStats(batch_size=self.running)

    def requests(self) -> list[RequestInfo]:
        now = time.monotonic()
        return [flight.info(now) for flight in self.flights]

    def abort(self, message: str) -> None:
        self._aborted = message


def scripted_vector(tokens: Sequence[int], size: int) -> list[float]:
    """A scripted embedding: distinct for distinct token lists (before normalising)."""
    return [float((sum(tokens) * (j + 1) + len(tokens) * 7 + j) % 101 + 1) for j in range(size)]


def unit(values: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def pack(values: Sequence[float]) -> bytes:
    """Unit length, as little-endian float32."""
    return struct.pack(f"<{len(values)}f", *unit(values))
