"""How many tokens to guess for a speculating row: as many as pay for themselves.

A guess costs one pass of the draft, `cost` of a pass of the model (the draft's weight bytes
over the model's, with a floor for a pass's fixed overhead: decode reads the weights), and
each guess stands with probability `a`, the row's acceptance so far. k guesses give
(1 - a^(k+1)) / (1 - a) tokens, on average, for the time of 1 + k * cost passes: the depth
with the most tokens per unit of time is taken, within the batch's budget
(`speculative.depth`), and 0 unless it beats plain decoding by `GAIN`. A row for which no
depth pays guesses one token every `PROBE` steps, so that its estimate follows its text.

Acceptance is estimated row by row, since it follows what the row writes (code and quoted
text are guessed far better than prose): a verification of k guesses of which m stand is m
trials that stood and, when m < k, one that did not; old trials fade by `DECAY` per
verification, and a row starts from `PRIOR` trials at the model's rate so far (FIRST_RATE
before any).
"""

from __future__ import annotations

from dataclasses import dataclass

GAIN = 1.05  # tokens per unit of time over plain decoding that drafting must promise
PROBE = 16  # steps between single guesses of a row no depth pays for
DECAY = 0.9  # weight of past trials per verification
PRIOR = 4.0  # trials a new row starts with, at the model's acceptance so far
FIRST_RATE = 0.6  # the rate a row starts from before the model has verified guesses
MIN_COST = 0.05  # a draft pass's cost, at least (launch and sampling overhead)


def tokens_per_time(acceptance: float, k: int, cost: float) -> float:
    """Tokens a row gets per plain pass's time with k guesses (module docstring)."""
    if acceptance >= 1.0:
        expected = k + 1.0
    else:
        expected = (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)
    return expected / (1.0 + k * cost)


def best_depth(acceptance: float, cost: float, limit: int) -> int:
    """The depth up to `limit` with the most tokens per unit of time; 0 (plain decoding)
    unless that beats plain by GAIN."""
    rates = [tokens_per_time(acceptance, k, cost) for k in range(limit + 1)]
    best = max(range(limit + 1), key=lambda k: (rates[k], -k))
    return best if rates[best] >= GAIN else 0


@dataclass
class Acceptance:
    """One row's guesses, kept and missed, recent ones weighing more."""

    stood: float
    fell: float
    idle: int = 0  # steps since this row last guessed

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
        self.idle = 0

    def depth(self, cost: float, limit: int) -> int:
        """Guesses for this row's next step: the best depth, or a probe now and then."""
        k = best_depth(self.rate, cost, limit)
        if k == 0 and limit > 0:
            self.idle += 1
            if self.idle >= PROBE:
                return 1
        return k


def draft_cost(draft_bytes: int, model_bytes: int) -> float:
    """A draft pass's time in passes of the model: their weights' bytes, with a floor."""
    return max(draft_bytes / max(model_bytes, 1), MIN_COST)
