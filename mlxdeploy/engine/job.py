"""One answer as the generation thread sees it: a `Job` holds a request's prompt and sampling
params, where its batch and caches stand, and the pipeline each generated token goes through
on its way to events: the thinking split off (`reasoning.py`, `harmony.py`), the answer's text
with its stop words and log-probabilities (`text.py`), tool calls split out (`tool_calls.py`),
and how the answer ended."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .api import Event, Failed, Finished, FinishReason, SamplingParams, Text
from .constraints import Guide
from .logprobs import TokenScores
from .reasoning import Splitter
from .text import TextStream
from .tool_calls import CallSplitter

Sink = Any  # where a job's events go (put_nowait); only the event loop touches it


@dataclass(eq=False)  # a job is itself: hashable by identity, never equal to another
class Job:
    """One answer on its way: its prompt and params, and the pipeline its tokens go through
    (the thinking split off, the text stream with its stop words, tool calls split out)."""

    prompt: list[int]
    params: SamplingParams
    sink: Sink
    text: TextStream
    uid: int = -1
    cached_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False  # set by the event loop when the client went away
    guide: Guide | None = None  # the constrained-decoding processor, when it has one
    calls: CallSplitter | None = None  # splits out tool calls, when the request offers tools
    thought: Splitter | None = None  # splits out the thinking, on a thinking model
    events: list[Event] = field(default_factory=list)
    label: str = ""  # the caller's tag for the request (`Engine.requests`)
    created: float = field(default_factory=time.monotonic)
    reading: bool = False  # it has a batch slot: its prompt is being read
    # Where its system prompt ends (0: none), on a model whose cache cannot be trimmed back.
    boundary: int = 0
    # Where the prefix cache keeps a snapshot of its cache while its prompt is read: the end
    # of its system prompt and of its prompt (but the last token, which the first decode step
    # reads); `keeps_snapshots` says on which models.
    snapshots: list[int] = field(default_factory=list)

    def advance(
        self, token: int, finish: str | None, scores: TokenScores | None = None
    ) -> FinishReason | None:
        """Feed one generated token (and its scores, when its request asked): its events go
        to `events`; the finish reason once the answer is done."""
        self.completion_tokens += 1
        thought = self.thought
        reason: FinishReason | None = None
        events = None
        if thought is not None and thought.thinking and finish != "stop":
            events = thought.feed(token)
        if thought is not None and events is not None:  # a token of the thinking
            self.events.extend(events)
            if finish is None:
                return None
            self.events.extend(thought.finish(cut=True))
            piece, reason = self.text.finish(), "length"  # the limit came inside the thinking
        elif finish == "stop":  # an end-of-sequence token: not part of the text
            if thought is not None:
                self.events.extend(thought.finish())
            piece, reason = self.text.finish(), "stop"
        else:
            piece = self.text.add(token, scores)
            if self.text.stopped:
                reason = "stop"
            elif finish == "length":
                if thought is not None:
                    self.events.extend(thought.finish(cut=True))
                piece, reason = piece + self.text.finish(), "length"
        logprobs = self.text.logprobs(piece)  # the tokens this piece completes, when asked
        if thought is not None:
            piece = thought.answer(piece)
        if piece and self.calls is not None:  # the answer may hold tool calls: split it
            self.events.extend(self.calls.feed(piece))
        elif piece or logprobs:
            self.events.append(Text(piece, logprobs))
        if reason is not None:
            self._end(reason)
        return reason

    def _end(self, reason: FinishReason) -> None:
        if self.calls is not None:
            self.events.extend(self.calls.finish(cut=reason == "length"))
        called = (self.calls.calls if self.calls else 0) + (
            self.thought.calls if self.thought else 0
        )
        if reason == "stop" and called:
            reason = "tool_calls"
        if self.guide is not None and self.guide.error is not None:
            self.events.append(Failed(f"constrained decoding failed: {self.guide.error}"))
            return
        word = self.text.stop_word if reason == "stop" else None
        counts = (len(self.prompt), self.completion_tokens, self.cached_tokens)
        thought = 0 if self.thought is None else self.thought.tokens
        self.events.append(Finished(reason, *counts, stop_word=word, reasoning_tokens=thought))
