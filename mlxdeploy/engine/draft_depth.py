"""How many tokens the speculating rows of a step guess: as many as pay for themselves.

A guess costs one pass of the draft, `cost` of a pass of the model (the draft's weight bytes
over the model's, with a floor for a pass's fixed overhead: decode reads the weights), and
each guess of a row stands with probability `a`, the row's acceptance so far. k guesses give
the row (1 - a^(k+1)) / (1 - a) tokens on average, where a plain step gives 1; and the whole
batch waits for the k draft passes, rows that do not guess included. So the step's depth is
the k with the most tokens per unit of time over every row of the batch,

    (sum over guessing rows of (1 - a^(k+1)) / (1 - a) + rows not guessing) / (rows (1 + k cost)),

within the batch's budget (`speculative.depth`), and 0 (a plain step) unless that beats plain
decoding by `GAIN`. Rows whose own guesses do not pay even alone (`best_depth` 0) do not
guess. While no depth pays, every `PROBE` steps the rows guess one token each, so that their
estimates follow their text.

Acceptance is estimated row by row, since it follows what the row writes (code and quoted
text are guessed far better than prose): a verification of k guesses of which m stand is m
trials that stood and, when m < k, one that did not; old trials fade by `DECAY` per
verification, and a row starts from `PRIOR` trials at the model's rate so far (FIRST_RATE
before any).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

GAIN = 1.05  # tokens per unit of time over plain decoding that drafting must promise
PROBE = 16  # steps between single guesses while no depth pays
DECAY = 0.9  # weight of past trials per verification
PRIOR = 4.0  # trials a new row starts with, at the model's acceptance so far
FIRST_RATE = 0.6  # the rate a row starts from before the model has verified guesses
MIN_COST = 0.05  # a draft pass's cost, at least (launch and sampling overhead)


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a row gets from a step with k guesses: its kept run plus the model's own."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def tokens_per_time(acceptance: float, k: int, cost: float) -> float:
    """Tokens a row alone gets per plain pass's time with k guesses."""
    return expected_tokens(acceptance, k) / (1.0 + k * cost)


def best_depth(acceptance: float, cost: float, limit: int) -> int:
    """The depth up to `limit` with the most tokens per unit of time for a row alone; 0
    (plain decoding) unless that beats plain by GAIN."""
    return batch_depth([acceptance], 0, cost, limit)


def batch_depth(rates: Sequence[float], plain: int, cost: float, limit: int) -> int:
    """The depth for rows guessing with acceptances `rates` beside `plain` rows that do not
    (module docstring); 0 unless it beats a plain step by GAIN."""
    rows = len(rates) + plain
    if not rates or limit <= 0:
        return 0

    def speed(k: int) -> float:
        made = sum(expected_tokens(a, k) for a in rates) + plain
        return made / (rows * (1.0 + k * cost))

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

    cost: float  # a draft pass in passes of the model
    rows: dict[int, Acceptance] = field(default_factory=dict)  # uid -> its guesses
    idle: int = 0  # steps since the rows last guessed

    def depths(
        self, limits: Mapping[int, tuple[int, int]], batch: int, prior: float
    ) -> dict[int, int]:
        """slot -> guesses this step for the rows that may guess (slot -> (uid, most
        guesses)) in a batch of `batch` decoding rows; `prior`: a new row's acceptance."""
        rates = {slot: self._rate(uid, prior) for slot, (uid, _) in limits.items()}
        guessing = {s: limit for s, (_, limit) in limits.items()
                    if best_depth(rates[s], self.cost, limit) > 0}  # fmt: skip
        most = max(guessing.values(), default=0)
        k = batch_depth([rates[s] for s in guessing], batch - len(guessing), self.cost, most)
        if k > 0:
            self.idle = 0
            return {s: min(k, limit) for s, limit in guessing.items()}
        self.idle += 1
        if self.idle < PROBE:
            return {}
        self.idle = 0
        return {slot: min(1, limit) for slot, (_, limit) in limits.items()}

    def record(self, uid: int, guessed: int, kept: int) -> None:
        if uid in self.rows:
            self.rows[uid].record(guessed, kept)

    def forget(self, live: set[int]) -> None:
        """Drop the estimates of rows that are gone."""
        for uid in self.rows.keys() - live:
            del self.rows[uid]

    def _rate(self, uid: int, prior: float) -> float:
        row = self.rows.get(uid)
        if row is None:
            row = self.rows[uid] = Acceptance.starting(prior)
        return row.rate


def draft_cost(draft_bytes: int, model_bytes: int) -> float:
    """A draft pass's time in passes of the model: their weights' bytes, with a floor."""
    return max(draft_bytes / max(model_bytes, 1), MIN_COST)
