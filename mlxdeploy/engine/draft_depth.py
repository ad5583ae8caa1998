"""How many tokens the speculating rows of a step guess: as many as pay for themselves.

A step of a batch of B rows guessing k tokens each costs `price(k, B)` plain steps of those
rows: k passes of the draft and one pass of the model reading k + 1 tokens a row. The engine
times both models' passes at load (`draft_prices.py`, `Measured`: a pass reading several
tokens costs more than one reading a token, the more so the larger the batch, as the model
turns compute-bound; a draft pass never below its weight bytes' share of the model's pass,
`draft_cost`). Each guess of a row stands with probability
`a`, the row's acceptance so far. k guesses give the row (1 - a^(k+1)) / (1 - a) tokens on
average, where a plain step gives 1; and the whole batch waits for the k draft passes, rows
that do not guess included. So the step's depth is the k with the most tokens per unit of time
over every row of the batch,

    (sum over guessing rows of (1 - a^(k+1)) / (1 - a) + rows not guessing) / (B price(k, B)),

within the batch's budget (`speculative.depth`), and 0 (a plain step) unless that beats plain
decoding by `GAIN`. Rows whose own guesses do not pay even alone (`best_depth` 0) do not
guess. While no depth pays, the rows guess one token each now and then, so that their
estimates follow their text: `PROBE` steps after the batch last drafted, then twice as long
after each probe that did not make drafting pay, up to `RAREST_PROBE` (a probe costs the draft
its catch-up on every token since the last, and the step its verification).

What the prices miss, the steps' own times correct (`Learned`): a speculative step waits for
its guesses to be read before the next one is built, where plain steps run a step ahead of
Python, and it does bookkeeping of its own. So each speculative step's time, against a plain
step's time at about the same batch, moves an `extra` cost (in plain steps) added to every
drafting price. Plain steps are timed two in a row (the second's time, from the first's end,
is what a plain step costs running ahead); while the batch keeps drafting, it decodes two
plain steps first (unless a plain time near its size is known), then every `REFRESH` steps.

Acceptance is estimated row by row, since it follows what the row writes (code and quoted
text are guessed far better than prose): a verification of k guesses of which m stand is m
trials that stood and, when m < k, one that did not; old trials fade by `DECAY` per
verification, and a row starts from `PRIOR` trials at the rate its predecessors ended with
(the estimates of rows gone, `LEARN` each; before any, the model's rate so far, and FIRST_RATE
before that). Not the model's rate alone: that counts only the guesses made, and they are made
where they were expected to stand, so it stays high where most rows soon stop guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

GAIN = 1.05  # tokens per unit of time over plain decoding that drafting must promise
PROBE = 16  # steps before a single guess once no depth pays, doubling after each probe
RAREST_PROBE = 256  # steps between probes, at most
DECAY = 0.9  # weight of past trials per verification
PRIOR = 4.0  # trials a new row starts with, at the model's acceptance so far
FIRST_RATE = 0.6  # the rate a row starts from before the model has verified guesses
MIN_COST = 0.05  # a draft pass's cost, at least (launch and sampling overhead)
REFRESH = 64  # drafting steps between two plain ones, timed
TIMING = 8  # plain steps at most, waiting for two in a row to time
LEARN = 0.2  # weight of the newest time in the learned costs
NEAR = 1.5  # a plain time stands for batches up to this factor larger or smaller


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a row gets from a step with k guesses: its kept run plus the model's own."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


class Pricing(Protocol):
    def price(self, k: int, rows: int) -> float:
        """A step of `rows` rows guessing k tokens each, in plain steps of those rows."""
        ...


@dataclass(frozen=True)
class Measured:
    """Pass times measured at batches of `rows` rows (ascending), each in plain passes of
    the model at that batch: a draft pass (`draft`), and a pass of the model reading k + 1
    tokens a row (`verify[k]`, k = 0, 1, ...). Between two batches measured the price is
    interpolated; past the guesses measured, extrapolated from the last two."""

    rows: tuple[int, ...]
    draft: tuple[float, ...]
    verify: tuple[tuple[float, ...], ...]

    def price(self, k: int, rows: int) -> float:
        prices = [_at(v, k) + k * d for v, d in zip(self.verify, self.draft, strict=True)]
        if rows <= self.rows[0]:
            return prices[0]
        for i in range(1, len(self.rows)):
            if rows <= self.rows[i]:
                r0, r1, p0, p1 = self.rows[i - 1], self.rows[i], prices[i - 1], prices[i]
                return p0 + (p1 - p0) * (rows - r0) / (r1 - r0)
        return prices[-1]


@dataclass
class Learned:
    """`base` corrected by the steps' own times (module docstring): a step guessing k > 0
    tokens a row costs `base.price(k, rows) + extra` plain steps, at least one."""

    base: Pricing
    extra: float = 0.0
    plain: dict[int, float] = field(default_factory=dict)  # rows -> seconds of a plain step
    timed: int = 0  # plain steps timed

    def price(self, k: int, rows: int) -> float:
        price = self.base.price(k, rows)
        return price if k == 0 else max(1.0, price + self.extra)

    def plain_step(self, rows: int, seconds: float) -> None:
        self.timed += 1
        old = self.plain.get(rows)
        if old is None:
            self.plain[rows] = seconds
        else:  # a step the worker was slow to call (other work between) moves it little
            self.plain[rows] = old + LEARN * (min(seconds, 2 * old) - old)

    def speculative_step(self, k: int, rows: int, seconds: float) -> None:
        plain = self.plain_near(rows)
        if plain is not None:
            extra = min(seconds / plain - self.base.price(k, rows), self.extra + 1.0)
            self.extra += LEARN * (extra - self.extra)

    def plain_near(self, rows: int) -> float | None:
        """A plain step's seconds at the batch size nearest `rows` (None: none within NEAR)."""
        near = [r for r in self.plain if max(r, rows) <= NEAR * min(r, rows)]
        if not near:
            return None
        return self.plain[min(near, key=lambda r: abs(r - rows))]


def _at(verify: Sequence[float], k: int) -> float:
    if k < len(verify):
        return verify[k]
    step = verify[-1] - verify[-2] if len(verify) > 1 else 0.0
    return verify[-1] + (k - len(verify) + 1) * step


def tokens_per_time(acceptance: float, k: int, price: float) -> float:
    """Tokens a row alone gets per plain step's time with k guesses in a step costing
    `price` plain steps."""
    return expected_tokens(acceptance, k) / price


def best_depth(acceptance: float, pricing: Pricing, limit: int) -> int:
    """The depth up to `limit` with the most tokens per unit of time for a row alone; 0
    (plain decoding) unless that beats plain by GAIN."""
    return batch_depth([acceptance], 0, pricing, limit)


def batch_depth(rates: Sequence[float], plain: int, pricing: Pricing, limit: int) -> int:
    """The depth for rows guessing with acceptances `rates` beside `plain` rows that do not
    (module docstring); 0 unless it beats a plain step by GAIN."""
    rows = len(rates) + plain
    if not rates or limit <= 0:
        return 0

    def speed(k: int) -> float:
        made = sum(expected_tokens(a, k) for a in rates) + plain
        return made / (rows * pricing.price(k, rows))

    best = max(range(limit + 1), key=lambda k: (speed(k), -k))
    return best if speed(best) >= GAIN else 0


@dataclass
class Acceptance:
    """One row's guesses, kept and missed, recent ones weighing more."""

    stood: float
    fell: float

    @classmethod
    def starting(cls, rate: float) -> Acceptance:
        return cls(PRIOR * rate, PRIOR * (1.0 - rate))

    @property
    def rate(self) -> float:
        total = self.stood + self.fell
        return self.stood / total if total else 0.0

    def record(self, guessed: int, kept: int) -> None:
        self.stood = self.stood * DECAY + kept
        self.fell = self.fell * DECAY + (1 if kept < guessed else 0)


@dataclass
class DepthRule:
    """The adaptive depth of one model's drafting: its rows' estimates and the batch's
    probes (module docstring)."""

    pricing: Learned  # what a step guessing k tokens a row costs
    rows: dict[int, Acceptance] = field(default_factory=dict)  # uid -> its guesses
    idle: int = 0  # steps since the rows last guessed
    wait: int = PROBE  # steps from one probe to the next while no depth pays
    drafting: int = 0  # steps that chose to draft
    # While plain steps are being timed: how many the pricing had timed when they began,
    # and the steps since (at most TIMING, should prompt chunks keep interrupting them).
    timing: tuple[int, int] | None = None
    ended: float | None = None  # the estimate rows that are gone ended with, recent ones most

    @classmethod
    def priced(cls, pricing: Pricing) -> DepthRule:
        return cls(Learned(pricing))

    def depths(
        self, limits: Mapping[int, tuple[int, int]], batch: int, prior: float
    ) -> dict[int, int]:
        """slot -> guesses this step for the rows that may guess (slot -> (uid, most
        guesses)) in a batch of `batch` decoding rows; `prior`: a new row's acceptance."""
        if self._timing_plain():
            return {}
        rates = {slot: self._rate(uid, prior) for slot, (uid, _) in limits.items()}
        guessing = {s: limit for s, (_, limit) in limits.items()
                    if best_depth(rates[s], self.pricing, limit) > 0}  # fmt: skip
        most = max(guessing.values(), default=0)
        k = batch_depth([rates[s] for s in guessing], batch - len(guessing), self.pricing, most)
        if k > 0:
            self.drafting += 1
            if self._time_plain(batch):
                self.timing = (self.pricing.timed, 1)
                return {}
            self.idle, self.wait = 0, PROBE
            return {s: min(k, limit) for s, limit in guessing.items()}
        self.idle += 1
        if self.idle < self.wait:
            return {}
        self.idle, self.wait = 0, min(2 * self.wait, RAREST_PROBE)
        return {slot: min(1, limit) for slot, (_, limit) in limits.items()}

    def _time_plain(self, batch: int) -> bool:
        """Whether the batch, about to draft, decodes two plain steps first to time them:
        every REFRESH drafting steps, but at the first only when no plain time is known
        near the batch."""
        if self.drafting % REFRESH != 1:
            return False
        return self.drafting > 1 or self.pricing.plain_near(batch) is None

    def _timing_plain(self) -> bool:
        """Whether this step decodes plainly, the batch's plain steps being timed: until
        one is (two in a row, neither with prompt chunks) or TIMING steps have gone by."""
        if self.timing is None:
            return False
        before, steps = self.timing
        if self.pricing.timed > before or steps >= TIMING:
            self.timing = None
            return False
        self.timing = (before, steps + 1)
        return True

    def restart(self) -> None:
        """A new batch: no rows; what was learned of the pair (prices, how rows end, how
        rarely to probe) stays."""
        self.rows.clear()
        self.idle, self.timing = 0, None

    def record(self, uid: int, guessed: int, kept: int) -> None:
        if uid in self.rows:
            self.rows[uid].record(guessed, kept)

    def forget(self, live: set[int]) -> None:
        """Drop the estimates of rows that are gone; what they ended with is the next rows'
        start."""
        for uid in self.rows.keys() - live:
            rate = self.rows.pop(uid).rate
            old = self.ended
            self.ended = rate if old is None else old + LEARN * (rate - old)

    def _rate(self, uid: int, prior: float) -> float:
        row = self.rows.get(uid)
        if row is None:
            start = prior if self.ended is None else self.ended
            row = self.rows[uid] = Acceptance.starting(start)
        return row.rate


def draft_cost(draft_bytes: int, model_bytes: int) -> float:
    """A draft pass's time in passes of the model: their weights' bytes, with a floor."""
    return max(draft_bytes / max(model_bytes, 1), MIN_COST)
