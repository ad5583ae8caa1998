"""Speculative decoding in the batch: a draft model guesses a few tokens of each speculating
row, and one forward pass of the target model over (last token + guesses) of every row checks
them all.

The draft keeps slot caches of its own (`storage.Slots`), slot for slot with the target's, each
holding a prefix of its row's tokens; before it drafts, a row's draft cache catches up on the
tokens it has not read (its prompt, a plain step's tokens) in the same call. A guess is kept
while it equals the token the target picks at its place (greedy rows), so the output is the
target's own, token for token; the first one that differs is replaced by the target's, and
when every guess is kept the target's next token comes free. A sampled row (temperature,
alone or after top-p, top-k and min-p filters: `sampling.Tempered`, `sampling.Filtered`)
draws its guesses from its sampler's distribution on the draft's logits and verifies them by
rejection sampling against the same filters and temperature on the target's (`verify`), so its
tokens follow the distribution the sampler draws from the target's logits. Rejected positions
are rolled back by setting the slots' lengths back, in both caches: only full-attention caches
(mlx-lm's plain `KVCache` in every layer) can do that, so `Drafter.check` refuses the rest.

On quantized keys and values (`engine.kv_bits`, `quantized_slots.py`) the target's slots roll
back the same way. A pass that verifies k guesses writes k + 1 positions where a plain step
writes one: in a quantized slot each is quantized as it is written (groups run along the head
dimension, so a position's codes do not depend on its neighbours) and query i of the pass
attends to the same quantized keys 0..i as the plain step at its position would, so greedy
rows yield the tokens of plain steps on the same cache. Setting a length back leaves the
rejected positions in the store (full precision below `quantized_kv_start`, quantized past
it): they are finite, past every later query's position (masked: weight 0) until a later call
overwrites them, and a history quantized whole copies its first `length` positions only. The
one place a pass reads differently from plain steps is a slot still below `start`: the pass
reads it in full precision throughout, where plain steps would quantize it at `start`; so a
row there keeps no guess whose logits come from `start` or later
(`SlotGenerator._below_start`), and the step that starts at `start` quantizes it whole, as a
plain step does. (Its pass may still write past `start` when a neighbour's guesses set the
width; those positions are rolled back.) What holds, then: a row's greedy tokens are the plain
steps' on the same quantized cache wherever those do not depend on its neighbours (a row below
`start` sharing a quantized call with rows past it reads its keys quantized early, with or
without a draft: `quantized_slots.py`), which are mlx-lm's single stream on its quantized
cache. A pass reads at most 1 + 16 tokens a row, well under the quantized prompt chunk.

The draft's own slots stay in full precision: a draft is small, so its cache is a fraction of
the target's and quantizing it saves little; its k steps a pass run one after the other, where
fused full-precision attention is faster than the unfused quantized one; and its precision
only changes how often guesses stand, never which tokens the target gives.

The batch turns drafting down as it grows: one verification pass reads at most
`DRAFT_BUDGET` guesses in all, so k = min(num_draft_tokens, DRAFT_BUDGET // rows), and at
more than DRAFT_BUDGET speculating rows the step is a plain decode step. A large batch is
compute-bound already; more guessed positions would cost more than they save.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache

from .draft_depth import FIRST_RATE, DepthRule, Pricing
from .mixed import MixedForward, Part, family, read_part
from .storage import Slots

DRAFT_BUDGET = 32  # most guessed tokens one verification pass reads, over all its rows


class SpeculationError(ValueError):
    """A model pair that cannot speculate; the message says why."""


@dataclass
class DraftStats:
    """Guesses made and kept since start: the acceptance rate is kept / drafted."""

    drafted: int = 0
    accepted: int = 0

    @property
    def rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def rollbackable(model: Any) -> bool:
    """Whether every layer of the model keeps plain keys and values, which a slot rolls back
    by its length alone (a ring or a state array cannot forget a token it read)."""
    caches = make_prompt_cache(model)
    return bool(caches) and all(type(c) is KVCache for c in caches)


def depth(num_draft_tokens: int, rows: int) -> int:
    """Guesses per row for a step with `rows` speculating rows (module docstring)."""
    if rows == 0:
        return 0
    return max(0, min(num_draft_tokens, DRAFT_BUDGET // rows))


@dataclass(frozen=True)
class DraftModel:
    """A loaded draft model and the spec's guesses per step."""

    model: Any
    num_draft_tokens: int
    width: int | None = None  # the model's logits (a draft's may be padded otherwise)
    pricing: Pricing | None = None  # what guessing costs (`draft_depth.py`); None: fixed depth


def logits_width(model: Any) -> int:
    """How many logits the model gives per token (its vocabulary, padded as it is)."""
    return int(model(mx.array([[0]])).shape[-1])


@dataclass
class Drafter:
    """The draft model, its slot caches and which row each slot's cache belongs to."""

    model: Any
    num_draft_tokens: int
    chunk: int
    width: int | None = None  # the target's logits: the draft's are cut or padded to it
    slots: Slots = field(init=False)
    owners: dict[int, int] = field(default_factory=dict)  # slot -> uid its cache holds
    stats: DraftStats = field(default_factory=DraftStats)
    # What a step guessing k tokens a row costs (`draft_depth.py`): each step guesses as
    # deep as pays; None: every row guesses as many as it may.
    pricing: Pricing | None = None
    rule: DepthRule | None = field(init=False)
    caught_up: int = field(init=False, default=0)  # most tokens a row read to draft last
    _mixed: MixedForward | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.slots = Slots.for_model(self.model, self.chunk)
        self._mixed = MixedForward.of(self.model, family(self.model))
        self.rule = None if self.pricing is None else DepthRule.priced(self.pricing)

    def depths(self, limits: Mapping[int, tuple[int, int]], rows: int) -> dict[int, int]:
        """slot -> guesses this step for the rows that may guess (slot -> (uid, most
        guesses)) in a batch of `rows` decoding rows."""
        if self.rule is None:
            return {slot: limit for slot, (_, limit) in limits.items()}
        prior = self.stats.rate if self.stats.drafted else FIRST_RATE
        return self.rule.depths(limits, rows, prior)

    def record(self, uid: int, guessed: int, kept: int) -> None:
        """Row `uid` guessed `guessed` tokens this step, of which its first `kept` stood."""
        self.stats.drafted += guessed
        self.stats.accepted += kept
        if self.rule is not None:
            self.rule.record(uid, guessed, kept)

    def timed(self, k: int, rows: int, seconds: float) -> None:
        """A decode step of `rows` rows guessing k tokens a row (0: a plain step, timed from
        the end of the plain step before it) took `seconds`. A drafting step whose draft
        caught up on more than a drafting step leaves (its last guess and the model's token)
        is not counted: reading what plain steps wrote is paid once, not every step."""
        if self.rule is None:
            return
        if not k:
            self.rule.pricing.plain_step(rows, seconds)
        elif self.caught_up <= 2:
            self.rule.pricing.speculative_step(k, rows, seconds)

    def forget(self, live: set[int]) -> None:
        """Drop what is kept of rows that are gone."""
        if self.rule is not None:
            self.rule.forget(live)

    @staticmethod
    def check(target: Any, draft: Any) -> None:
        """SpeculationError unless both models' caches roll back."""
        for name, model in (("the model", target), ("the draft model", draft)):
            if not rollbackable(model):
                family = str(type(model).__module__).rsplit(".", 1)[-1]
                raise SpeculationError(
                    f"{name} ({family}) keeps caches that cannot roll back rejected tokens "
                    "(a sliding window or state arrays): speculative decoding needs full "
                    "attention in every layer; remove draft_model"
                )

    def reset(self) -> None:
        self.slots = self.slots.empty()
        self.owners.clear()
        if self.rule is not None:
            self.rule.restart()

    def draft(
        self, rows: Sequence[tuple[int, int, list[int]]], k: int, samplers: Sequence[Any]
    ) -> tuple[mx.array, mx.array | None]:
        """(rows, k) guesses, and the distributions they were drawn from (None: every row is
        greedy): each row (slot, uid, its tokens so far, the last one not yet in the target's
        cache) catches up and guesses k tokens, greedy (sampler None) or drawn from its
        sampler's distribution (`Tempered` or `Filtered`) on the draft's logits."""
        feeds = [self._unread(slot, uid, tokens) for slot, uid, tokens in rows]
        slots = [slot for slot, _, _ in rows]
        feeds = self._catch_up(slots, feeds)
        counts = [len(f) for f in feeds]
        self.caught_up = max(counts)
        last = self._read(slots, feeds, last=True)
        assert last is not None
        guesses: list[mx.array] = []
        drawn: list[Any] = []
        for i in range(k):
            if i:
                self.slots.plan(slots, 1)
                last = self.model(guesses[-1][:, None], cache=self.slots.caches)[:, -1]
                self.slots.advance(slots, [1] * len(slots))
            guess, q = _guess(_fit(last, self.width), samplers)
            # Queued at once: the device runs this pass while the next one is built.
            mx.async_eval(guess, *(() if q is None else (q,)))
            guesses.append(guess)
            drawn.append(q)
        if drawn[0] is None:
            return mx.stack(guesses, axis=1), None
        return mx.stack(guesses, axis=1), mx.stack(drawn, axis=1)

    def _catch_up(self, slots: list[int], feeds: list[list[int]]) -> list[list[int]]:
        """Reads all but the last `chunk` unread tokens of each row, `chunk` at a time (a
        long prompt is read as the target reads it); the rest of each feed."""
        chunk = self.chunk
        while any(len(f) > chunk for f in feeds):
            long = [i for i, f in enumerate(feeds) if len(f) > chunk]
            self._read([slots[i] for i in long], [feeds[i][:chunk] for i in long], last=False)
            mx.eval(self.slots.arrays())
            feeds = [f[chunk:] if i in long else f for i, f in enumerate(feeds)]
        return feeds

    def _read(self, slots: list[int], feeds: list[list[int]], last: bool) -> mx.array | None:
        """One pass of the draft over each slot's feed (right-padded to the longest): the
        logits of each feed's last token (`last`), else none (`mixed.read_part`: in a small
        draft of a large vocabulary the vocabulary projection costs as much as its layers)."""
        counts = [len(f) for f in feeds]
        width = max(counts)
        padded = [f + [0] * (width - len(f)) for f in feeds]
        part = Part(self.slots.prepare(slots, width, counts), padded, tuple(counts))
        at = range(len(feeds)) if last else []
        out = read_part(self.model, self._mixed, self.slots, part, at)
        self.slots.advance(slots, counts)
        return out

    def keep(self, slot: int, length: int) -> None:
        """The slot's cache holds its row's first `length` tokens at most: later guesses
        were rejected."""
        self.slots.lengths[slot] = min(self.slots.lengths[slot], length)

    def _unread(self, slot: int, uid: int, tokens: list[int]) -> list[int]:
        """The row's tokens its draft cache has not read; a slot another row held starts
        empty."""
        lengths = self.slots.lengths
        if len(lengths) <= slot:
            lengths.extend([0] * (slot + 1 - len(lengths)))
        if self.owners.get(slot) != uid:
            self.owners[slot] = uid
            lengths[slot] = 0
        return tokens[lengths[slot] :]


def accepted(guesses: list[int], picks: list[int], limit: int) -> int:
    """How many leading guesses equal the target's picks at their places (at most `limit`)."""
    n = 0
    while n < min(limit, len(guesses)) and guesses[n] == picks[n]:
        n += 1
    return n


def _fit(logits: mx.array, width: int | None) -> mx.array:
    """The draft's logits as wide as the target's: ids past the tokenizer's are padding."""
    have = logits.shape[-1]
    if width is None or width == have:
        return logits
    if width < have:
        return logits[:, :width]
    pad = mx.full((logits.shape[0], width - have), -mx.inf, dtype=logits.dtype)
    return mx.concatenate([logits, pad], axis=-1)


def distributions(logits: mx.array, samplers: Sequence[Any]) -> mx.array:
    """What each row's sampler draws from at each of its positions: `logits` (rows, vocab) or
    (rows, positions, vocab), one sampler a row (None: greedy, its row unused), each sampler
    once over all its rows' positions."""
    shape = logits.shape
    flat = logits.reshape(-1, shape[-1])
    per = flat.shape[0] // len(samplers)  # positions a row
    out = mx.softmax(flat, axis=-1)
    for sampler in {s for s in samplers if s is not None}:
        rows = [i for i, s in enumerate(samplers) if s == sampler]
        index = mx.array([r * per + j for r in rows for j in range(per)])
        out[index] = sampler.probabilities(flat[index])
    return out.reshape(shape)


def _guess(logits: mx.array, samplers: Sequence[Any]) -> tuple[mx.array, Any]:
    """Each row's guess: greedy, or drawn from its sampler's distribution (then with the
    distribution q it was drawn from, every row's: greedy rows' are unused)."""
    picked = mx.argmax(logits, axis=-1)
    if all(s is None for s in samplers):
        return picked, None
    q = distributions(logits, samplers)
    drawn = mx.random.categorical(mx.log(q))
    sampled = mx.array([s is not None for s in samplers])
    return mx.where(sampled, drawn, picked), q


def verify(
    logits: mx.array,
    guesses: mx.array,
    drawn: mx.array | None,
    samplers: Sequence[Any],
    limits: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Per row, how many of its guesses stand (at most its limit), and its next token.

    `logits`: the target's (rows, k + 1, vocabulary) over (last token, guesses). A greedy row
    keeps guesses while they equal the target's picks; its next token is the pick after them.
    A sampled row (its sampler's distribution: temperature, and filters for `Filtered`, on the
    draft's logits for q and the target's for p) keeps guess d drawn from q with probability
    min(1, p(d) / q(d)); at the first one rejected, its next token is drawn from max(0, p - q)
    normalized, and past its last guess from p: the tokens are distributed as the sampler
    draws them from the target's logits.
    """
    picks = mx.argmax(logits, axis=-1)
    k = guesses.shape[1]
    if drawn is None:
        mx.eval(picks, guesses)
        target: list[list[int]] = picks.tolist()  # type: ignore[assignment]
        guessed: list[list[int]] = guesses.tolist()  # type: ignore[assignment]
        kept = [accepted(g, t, n) for g, t, n in zip(guessed, target, limits, strict=True)]
        return kept, [t[n] for t, n in zip(target, kept, strict=True)]
    p = distributions(logits, samplers)
    at = guesses[..., None]
    p_guess = mx.take_along_axis(p[:, :k], at, axis=-1)[..., 0]
    q_guess = mx.take_along_axis(drawn, at, axis=-1)[..., 0]
    stands = mx.random.uniform(shape=p_guess.shape) * q_guess < p_guess
    sampled = mx.array([s is not None for s in samplers])
    stands = mx.where(sampled[:, None], stands, guesses == picks[:, :k])
    mx.eval(stands, picks)
    standing: list[list[bool]] = stands.tolist()  # type: ignore[assignment]
    kept = [_leading(row, n) for row, n in zip(standing, limits, strict=True)]
    rejected = mx.array([n < limit for n, limit in zip(kept, limits, strict=True)])
    rows, where = mx.arange(len(kept)), mx.array(kept)
    q = mx.concatenate([drawn, mx.zeros_like(drawn[:, :1])], axis=1)  # none past the guesses
    p_next = p[rows, where]
    rest = mx.maximum(p_next - q[rows, where], 0.0)
    rest = mx.where((rejected & (rest.sum(axis=-1) > 0))[:, None], rest, p_next)
    drawn_next = mx.random.categorical(mx.log(rest))
    greedy_next = picks[rows, where]
    nexts: list[int] = mx.where(sampled, drawn_next, greedy_next).tolist()  # type: ignore[assignment]
    return kept, nexts


def _leading(stands: list[bool], limit: int) -> int:
    n = 0
    while n < limit and stands[n]:
        n += 1
    return n
