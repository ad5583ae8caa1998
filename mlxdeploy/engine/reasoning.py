"""Thinking models: finding the thinking in what the model writes, keeping it out of the
answer, and closing it when its budget is spent.

A thinking model writes `<think>` … `</think>` before its answer (Qwen3, DeepSeek-R1, GLM,
Kimi and others; mlx-lm finds the pair in the vocabulary: `TokenizerWrapper.think_start_tokens`).
Its chat template either opens the thinking in the prompt (the answer starts inside it) or lets
the model open it with its first token. Everything here works on token ids, so the split is
exact: the tokens between the tags are the thinking, the tokens after the closing tag are the
answer, and the tags themselves are neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import mlx.core as mx

from .api import Event, Reasoning
from .text import Decode, Detokenizer

State = Literal["maybe", "inside", "done"]


class Position(Protocol):
    """Where an answer is, one sampled token at a time."""

    @property
    def inside(self) -> bool:
        """Inside the thinking."""
        ...

    @property
    def may_open(self) -> bool:
        """The next token may open the thinking."""
        ...

    @property
    def settled(self) -> bool:
        """No more thinking can come."""
        ...

    def advance(self, token: int) -> bool: ...


class Splitter(Protocol):
    """One request's answer as the worker feeds it: the tokens of the thinking (and of
    anything else that is not the answer's text) become events; the answer's own tokens are
    left to its text stream."""

    tokens: int  # the thinking's tokens (usage's reasoning tokens)
    calls: int  # tool calls announced

    @property
    def thinking(self) -> bool:
        """Tokens may still be something other than the answer's text."""
        ...

    def feed(self, token: int) -> list[Event] | None:
        """The events of a token; None when it is the answer's text."""
        ...

    def finish(self, cut: bool = False) -> list[Event]:
        """The end of the answer (`cut`: by its token limit)."""
        ...

    def answer(self, text: str) -> str:
        """The answer's text as it is shown."""
        ...


class ThinkingFormat(Protocol):
    """How a model writes its thinking: tags, or gpt-oss's channels (engine/harmony.py)."""

    @property
    def name(self) -> str: ...

    @property
    def stops(self) -> tuple[int, ...]:
        """Tokens besides end-of-sequence that end an answer."""
        ...

    def splitter(self, prompt: Sequence[int], decode: Decode) -> Splitter: ...

    def gate(self, prompt: Sequence[int]) -> ThinkState | None:
        """Where a grammar starts to hold; None: a constrained answer is not split at all."""
        ...

    def budget(self, budget: int, prompt: Sequence[int]) -> ThinkingBudget: ...


@dataclass(frozen=True)
class ThinkTags:
    """The one-token tags around a model's thinking."""

    start: int
    end: int
    start_text: str
    end_text: str

    @classmethod
    def of(cls, tokenizer: Any) -> ThinkTags | None:
        """The tokenizer's thinking tags, as mlx-lm infers them; None for a model that does
        not think, or whose tags are more than one token each."""
        if not getattr(tokenizer, "has_thinking", False):
            return None
        starts, ends = tokenizer.think_start_tokens, tokenizer.think_end_tokens
        if len(starts) != 1 or len(ends) != 1:
            return None
        return cls(starts[0], ends[0], tokenizer.think_start, tokenizer.think_end)

    @property
    def name(self) -> str:
        return f"{self.start_text} and {self.end_text}"

    @property
    def stops(self) -> tuple[int, ...]:
        return ()

    def splitter(self, prompt: Sequence[int], decode: Decode) -> ThoughtSplitter:
        return ThoughtSplitter(ThinkState(self, self.opening_state(prompt)), decode)

    def gate(self, prompt: Sequence[int]) -> ThinkState:
        return ThinkState(self, self.opening_state(prompt))

    def budget(self, budget: int, prompt: Sequence[int]) -> ThinkingBudget:
        opening = self.opening_state(prompt)
        return ThinkingBudget(budget, lambda: ThinkState(self, opening), self.end, self.start)

    def opening_state(self, prompt: Sequence[int], window: int = 16) -> State:
        """Where a prompt leaves the answer: inside the thinking when the template opened it
        (its last tag near the end is an open one), else the model may open it itself."""
        tail = list(prompt[-window:])
        opened = _last(tail, self.start)
        return "inside" if opened > _last(tail, self.end) else "maybe"


def _last(tokens: list[int], token: int) -> int:
    return max((i for i, t in enumerate(tokens) if t == token), default=-1)


@dataclass
class ThinkState:
    """Where the answer is, one sampled token at a time: it may still open its thinking (only
    with its first token), is inside it, or is past it."""

    tags: ThinkTags
    state: State

    @property
    def inside(self) -> bool:
        return self.state == "inside"

    @property
    def may_open(self) -> bool:
        return self.state == "maybe"

    @property
    def settled(self) -> bool:
        return self.state == "done"

    def advance(self, token: int) -> bool:
        """Move past `token`; True when it belongs to the thinking (the tags included)."""
        if self.state == "maybe":
            self.state = "inside" if token == self.tags.start else "done"
            return self.state == "inside"
        if self.state == "inside":
            if token == self.tags.end:
                self.state = "done"
            return True
        return False


@dataclass
class _Trimmed:
    """Thinking text without the blank space that opens and closes it (templates write
    `<think>\\n` … `\\n</think>`): leading space is dropped, trailing space is held until
    more text follows it."""

    started: bool = False
    held: str = ""

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if not text:
            return ""
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out, self.held = self.held + body, text[len(body) :]
        return out


@dataclass
class ThoughtSplitter:
    """One request's thinking: the tokens of its thinking in, `Reasoning` events out.
    `tokens` counts the thinking's tokens, tags included (usage's reasoning tokens)."""

    position: ThinkState
    decode: Decode
    tokens: int = 0
    calls: int = 0  # tool calls are not the thinking's: the call splitter reads them
    _detokenizer: Detokenizer | None = None
    _trim: _Trimmed = field(default_factory=_Trimmed)
    _answer_started: bool = False

    @property
    def thinking(self) -> bool:
        return self.position.state != "done"

    def feed(self, token: int) -> list[Event] | None:
        """The events of a thinking token; None when `token` is the answer's."""
        if not self.position.advance(token):
            return None
        self.tokens += 1
        if self._detokenizer is None:
            self._detokenizer = Detokenizer(self.decode)
        if token in (self.position.tags.start, self.position.tags.end):
            return self.finish() if not self.thinking else []
        return self._reasoning(self._detokenizer.add(token))

    def finish(self, cut: bool = False) -> list[Event]:
        """The thinking's last text (its end tag came, or the answer ended inside it)."""
        if self._detokenizer is None:
            return []
        text = self._detokenizer.flush()
        self._detokenizer = None
        return self._reasoning(text)

    def answer(self, text: str) -> str:
        """The answer's text, without the blank space between the end tag and its start."""
        if self._answer_started:
            return text
        text = text.lstrip() if self.tokens else text
        self._answer_started = bool(text)
        return text

    def _reasoning(self, text: str) -> list[Event]:
        piece = self._trim.feed(text)
        return [Reasoning(piece)] if piece else []


@dataclass
class ThinkingBudget:
    """A logits processor that closes the thinking once `budget` tokens were spent: the next
    token is `end`. Until the budget is reached it costs nothing; from then on it reads the
    answer's new tokens each step (one sync) until no more thinking can come. With no budget
    at all, `ban` (the token that would open the thinking) is not allowed."""

    budget: int
    position: Callable[[], Position]  # a fresh position at the answer's start
    end: int
    ban: int | None = None
    calls: int = 0
    done: bool = False
    _seen: int = 0  # answer tokens fed to `_at`
    _at: Position | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        self.calls += 1
        sampled = self.calls - 1  # tokens sampled before this call; `tokens` ends with them
        if self.done or sampled < self.budget:
            return logits
        at = self._advance(tokens, sampled)
        if at.inside:
            return _only(logits, self.end)
        if at.may_open and self.budget == 0 and self.ban is not None:
            return _never(logits, self.ban)
        self.done = at.settled
        return logits

    def _advance(self, tokens: mx.array, sampled: int) -> Position:
        if self._at is None:
            self._at = self.position()
        new = sampled - self._seen
        if new:
            fresh = cast(list[int], tokens[len(tokens) - new :].tolist())
            for token in fresh:
                self._at.advance(token)
        self._seen = sampled
        return self._at


def _only(logits: mx.array, token: int) -> mx.array:
    allowed = mx.arange(logits.shape[-1]) == token
    return mx.where(allowed, logits, -mx.inf)


def _never(logits: mx.array, token: int) -> mx.array:
    banned = mx.arange(logits.shape[-1]) == token
    return mx.where(banned, -mx.inf, logits)
