"""The state of the requests in the generation loop (`generator.py`): each request's `Row`, the
tokens the next decode step reads (`Pending`), and what a step hands back (`Read`, `Token`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import StopSequences
from mlx_lm.models.cache import TokenBuffer

from .logprobs import RowScores


@dataclass
class Read:
    """A chunk of a prompt was read: (tokens read, tokens in all)."""

    uid: int
    progress: tuple[int, int]
    end_of_segment: bool
    end_of_prompt: bool


@dataclass
class Token:
    """A row's token; `prompt_cache` and `all_tokens` when its request ended by itself."""

    uid: int
    token: int
    logprobs: Any  # TokenScores, or None: not asked
    finish_reason: str | None
    prompt_cache: list[Any] | None
    all_tokens: list[int] | None


@dataclass
class Row:
    """One request: its prompt still to read, then its decoding state."""

    uid: int
    prompt: list[int]  # tokens still to read
    history: list[int]  # tokens in its slot (or about to be)
    total: int  # prompt tokens in all
    arrived: int  # decode steps run when it came
    sampler: Any
    processors: list[Any]
    matcher: StopSequences.Matcher
    max_tokens: int
    logprobs: int | None
    prefix: list[Any] | None = None  # a prefix cache's caches, written at admission
    context: TokenBuffer | None = None  # the processors' view of the tokens so far
    slot: int = -1
    generated: int = 0
    adapter: int = 0  # the adapter its forward passes apply (0: none; `adapters.py`)
    drafts: int | None = None  # most guessed tokens per step (None: the model's; 0: none)
    # Where segments of the prompt end (tokens in the slot then), besides the prompt's end: a
    # chunk stops there, so that the cache at that point can be kept (the prefix cache's
    # snapshots).
    cuts: list[int] = field(default_factory=list)
    # Other choices of the same request: they start from this row's cache once its prompt
    # is read (each with a copy of its slot), sampling their first tokens from the same logits.
    followers: list[Row] = field(default_factory=list)

    @property
    def until(self) -> int | None:
        """Tokens to read before the next cut; None: none."""
        return self.cuts[0] - len(self.history) if self.cuts else None

    @property
    def starting(self) -> list[Row]:
        """The rows that start decoding when this row's prompt is read."""
        return [self, *self.followers]


@dataclass
class Pending:
    """The tokens the next decode step reads, by slot, and their scores (lazy)."""

    tokens: mx.array | None = None
    scores: list[RowScores | None] = field(default_factory=list)

    def take(self, slots: Sequence[int]) -> tuple[mx.array, list[RowScores | None]]:
        assert self.tokens is not None
        a = slots[0]
        if list(slots) == list(range(a, a + len(slots))):
            tokens = self.tokens[a : a + len(slots)]
        else:
            tokens = self.tokens[mx.array(list(slots))]
        return tokens, [self.scores[s] for s in slots]

    def set(
        self,
        slots: Sequence[int],
        tokens: mx.array,
        scores: list[RowScores | None],
        whole: bool = False,
    ) -> None:
        """`tokens` for `slots`; `whole`: they are every slot a row reads from (a decode
        step's, from slot 0 up)."""
        if whole and list(slots) == list(range(len(slots))):
            self.tokens, self.scores = tokens.astype(mx.uint32), list(scores)
            return
        top = max(slots) + 1
        have = 0 if self.tokens is None else self.tokens.shape[0]
        if top > have:
            more = mx.zeros((top - have,), dtype=mx.uint32)
            self.tokens = more if self.tokens is None else mx.concatenate([self.tokens, more])
            self.scores.extend([None] * (top - have))
        assert self.tokens is not None
        self.tokens[mx.array(list(slots))] = tokens.astype(mx.uint32)
        for slot, score in zip(slots, scores, strict=True):
            self.scores[slot] = score
