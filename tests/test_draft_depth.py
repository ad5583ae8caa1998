"""How deep each speculating row guesses (`engine/draft_depth.py`): the expected tokens per
unit of time of k guesses, the depth that maximises it, and a row's acceptance estimate."""

from __future__ import annotations

import random

import pytest

from mlxdeploy.engine.draft_depth import (
    GAIN,
    PROBE,
    Acceptance,
    DepthRule,
    batch_depth,
    best_depth,
    draft_cost,
    tokens_per_time,
)


def test_tokens_per_time_is_the_expected_run_of_kept_guesses() -> None:
    """k guesses kept with probability a each, stopping at the first miss, plus the model's
    own token: checked against a simulation."""
    rng = random.Random(0)
    for a, k in [(0.5, 3), (0.8, 4), (0.3, 1)]:
        runs = []
        for _ in range(20_000):
            kept = 0
            while kept < k and rng.random() < a:
                kept += 1
            runs.append(kept + 1)
        assert tokens_per_time(a, k, cost=0.0) == pytest.approx(sum(runs) / len(runs), rel=0.02)
    assert tokens_per_time(1.0, 4, cost=0.25) == 5 / 2
    assert tokens_per_time(0.0, 4, cost=0.1) == 1 / 1.4


def test_depth_follows_acceptance_and_cost() -> None:
    assert best_depth(0.0, cost=0.05, limit=8) == 0  # nothing stands: plain decoding
    assert best_depth(1.0, cost=1.0, limit=8) == 0  # a draft as costly as the model never pays
    assert best_depth(1.0, cost=0.1, limit=8) == 8  # everything stands: as deep as allowed
    assert best_depth(0.8, cost=0.1, limit=3) == 3  # the batch's budget bounds it
    depths = [best_depth(a / 10, cost=0.1, limit=8) for a in range(11)]
    assert depths == sorted(depths) and depths[0] == 0 and depths[-1] == 8
    costly = [best_depth(0.7, cost=c, limit=8) for c in (0.05, 0.1, 0.2, 0.5)]
    assert costly == sorted(costly, reverse=True) and costly[-1] < costly[0]
    for a in (0.3, 0.6, 0.9):  # drafting only where it beats plain decoding by GAIN
        k = best_depth(a, cost=0.2, limit=8)
        assert k == 0 or tokens_per_time(a, k, 0.2) >= GAIN


def test_a_row_estimate_follows_its_guesses() -> None:
    row = Acceptance.starting(0.5)
    assert row.rate == 0.5
    for _ in range(30):
        row.record(guessed=4, kept=4)
    assert row.rate > 0.95 and best_depth(row.rate, cost=0.1, limit=4) == 4
    for _ in range(30):
        row.record(guessed=4, kept=0)
    assert row.rate < 0.2  # a miss is one trial, however many guesses it ends
    assert draft_cost(1, 10) == 0.1 and draft_cost(1, 1000) > 0  # a floor for tiny drafts


def test_the_whole_batch_waits_for_the_draft() -> None:
    """Rows that do not guess still wait for the draft passes: the more of them, the less
    the guessing rows may guess; a batch of good guessers guesses as one row would."""
    assert batch_depth([0.8] * 8, plain=0, cost=0.1, limit=4) == best_depth(0.8, 0.1, 4) == 4
    depths = [batch_depth([0.6], plain=n, cost=0.2, limit=4) for n in (0, 1, 3, 7)]
    assert depths == sorted(depths, reverse=True) and depths[0] > 0 and depths[-1] == 0
    assert batch_depth([0.9, 0.1, 0.1, 0.1], 0, cost=0.25, limit=4) < best_depth(0.9, 0.25, 4)
    assert batch_depth([], plain=8, cost=0.1, limit=4) == 0


def test_rows_no_depth_pays_for_guess_one_token_every_probe_steps() -> None:
    rule = DepthRule(cost=0.1)
    asked = {0: (10, 4), 1: (11, 2)}
    steps = [rule.depths(asked, batch=3, prior=0.0) for _ in range(2 * PROBE)]
    assert [i for i, d in enumerate(steps) if d] == [PROBE - 1, 2 * PROBE - 1]
    assert steps[PROBE - 1] == {0: 1, 1: 1}
    assert rule.depths({2: (12, 4)}, batch=1, prior=1.0) == {2: 4}  # a new row, at the prior
    rule.record(12, guessed=4, kept=0)
    rule.forget({10, 11, 12})
    assert set(rule.rows) == {10, 11, 12} and rule.rows[12].rate < 1.0
    rule.forget({12})
    assert set(rule.rows) == {12}
