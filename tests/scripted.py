"""A scripted engine that follows the engine contract (`engine/api.py`), for HTTP tests where
only HTTP matters: it answers every prompt with the same pieces of text, one event each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from mlxdeploy.engine.api import (
    EngineState,
    EngineStats,
    Event,
    Failed,
    Finished,
    FinishReason,
    Prompt,
    PromptRejected,
    RoleOverride,
    SamplingParams,
    Text,
    Tool,
    ToolUse,
    Turn,
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
    _aborted: str | None = None

    def prepare(
        self,
        turns: Sequence[Turn],
        role_override: RoleOverride | None,
        tools: ToolUse | None = None,
    ) -> Prompt:
        self.turns.append(list(turns))
        self.tools.append([] if tools is None else list(tools.tools))
        text = "".join(f"{turn.role}:{turn.content}\n" for turn in turns)
        if not text.strip():
            raise PromptRejected("the prompt is empty after formatting")
        return Prompt([ord(c) for c in text])

    def prepare_text(self, text: str) -> Prompt:
        if not text:
            raise PromptRejected("the prompt is empty")
        return Prompt([ord(c) for c in text])

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Event, None]:
        self.prompts.append(prompt)
        self.params.append(params)
        self.running += 1
        done = False
        try:
            if self._aborted is not None:
                done = True
                yield Failed(self._aborted)
                return
            pieces = self.pieces[: params.max_tokens]
            reason: FinishReason = "length" if len(self.pieces) > params.max_tokens else "stop"
            for piece in pieces:
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self._aborted is not None:
                    done = True
                    yield Failed(self._aborted)
                    return
                yield Text(piece)
            done = True
            yield Finished(reason, len(prompt.tokens), len(pieces), 0)
        finally:
            self.running -= 1
            if not done:
                self.closed += 1

    async def generate_choices(
        self, prompt: Prompt, params: SamplingParams, n: int
    ) -> AsyncGenerator[tuple[int, Event], None]:
        """The script once per choice, the choices' events interleaved."""
        streams = [self.generate(prompt, params) for _ in range(n)]
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

    def stats(self) -> EngineStats:
        return EngineStats(batch_size=self.running)

    def abort(self, message: str) -> None:
        self._aborted = message
