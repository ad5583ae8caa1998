"""Log-probabilities of sampled tokens, computed only for the requests that ask.

The decode step (batch.py) normalizes only the rows of those requests (a logsumexp over the
vocabulary, in float32) and reduces each row to the sampled token's log-probability and the
ids of its k most likely tokens. The arrays are lazy: they are evaluated together with the
next step's tokens, so asking adds no synchronization to the step. The generation thread then
gives the ids their text (`text.py`).

What is reported is the log-softmax of the logits the sampler saw: after the request's
penalties, logit_bias and constraint, before temperature and the top-k/top-p/min-p filters
(as mlx-lm reports them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

NO_PROBABILITY = -9999.0  # OpenAI's value for a token that had no probability at all


@dataclass(frozen=True)
class TokenScores:
    """One sampled token: its log-probability and the top alternatives (ids), best first.
    Alternatives that could not be sampled (a constraint masked them) are left out."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class StepScores:
    """The scores of R rows of one step: lazy until the step's tokens are evaluated."""

    chosen: mx.array  # (R,): each row's sampled token
    ids: mx.array  # (R, K): the K most likely tokens of each row, best first
    values: mx.array  # (R, K)
    _lists: tuple[list[Any], list[Any], list[Any]] | None = None

    @classmethod
    def of(cls, logits: mx.array, tokens: mx.array, k: int) -> StepScores:
        """`logits`: (R, V) rows; `tokens`: (R,)
        the token sampled in each. Only (R, 1) and (R, k) results are normalized: the whole
        rows are read twice (a logsumexp, a partition) and never rewritten."""
        if logits.dtype != mx.float32:
            logits = logits.astype(mx.float32)
        lse = mx.logsumexp(logits, axis=-1, keepdims=True)
        chosen = (mx.take_along_axis(logits, tokens.reshape(-1, 1), axis=-1) - lse)[:, 0]
        width = logits.shape[-1]
        k = min(k, width)
        if k == 0:
            empty = mx.zeros((logits.shape[0], 0))
            return cls(chosen, empty, empty)
        ids = mx.argpartition(logits, kth=width - k, axis=-1)[:, width - k :]
        values = mx.take_along_axis(logits, ids, axis=-1) - lse
        order = mx.argsort(-values, axis=-1)
        ids = mx.take_along_axis(ids, order, axis=-1)
        return cls(chosen, ids, mx.take_along_axis(values, order, axis=-1))

    def arrays(self) -> list[mx.array]:
        return [self.chosen, self.ids, self.values]

    def row(self, index: int, k: int) -> TokenScores:
        """Row `index` with its own k alternatives (call after evaluation)."""
        if self._lists is None:
            self._lists = (_list(self.chosen), _list(self.ids), _list(self.values))
        chosen, ids, values = self._lists
        top = zip(ids[index][:k], values[index][:k], strict=True)
        return TokenScores(
            logprob=_finite(chosen[index]),
            top=tuple((int(t), float(v)) for t, v in top if math.isfinite(v)),
        )


@dataclass(frozen=True)
class RowScores:
    """One row's place in a step's scores, and how many alternatives its request asked."""

    step: StepScores
    index: int
    k: int

    def get(self) -> TokenScores:
        return self.step.row(self.index, self.k)


def arrays_of(rows: list[RowScores | None]) -> list[mx.array]:
    """The distinct arrays behind a step's rows, for one evaluation."""
    steps = {id(r.step): r.step for r in rows if r is not None}
    return [array for step in steps.values() for array in step.arrays()]


def score_rows(
    logits: mx.array,
    tokens: mx.array,
    asked: list[tuple[int, int]],
    size: int,
) -> list[RowScores | None]:
    """Scores for the rows `asked` ((row, k) pairs; `logits` and `tokens` hold those rows
    only, in that order) of a batch of `size` rows; None for the other rows."""
    step = StepScores.of(logits, tokens, max(k for _, k in asked))
    out: list[RowScores | None] = [None] * size
    for i, (row, k) in enumerate(asked):
        out[row] = RowScores(step, i, k)
    return out


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else NO_PROBABILITY


def _list(array: mx.array) -> list[Any]:
    out = array.tolist()
    assert isinstance(out, list)
    return out
