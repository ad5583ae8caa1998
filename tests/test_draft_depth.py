"""How deep each speculating row guesses (`engine/draft_depth.py`): the expected tokens per
unit of time of k guesses, the depth that maximises it, and a row's acceptance estimate."""

from __future__ import annotations

import itertools
import random

import pytest

from mlxdeploy.engine.draft_depth import (
    GAIN,
    PROBE,
    RAREST_PROBE,
    REFRESH,
    TIMING,
    Acceptance,
    DepthRule,
    Learned,
    Measured,
    batch_depth,
    best_depth,
    draft_cost,
    tokens_per_time,
)
from tests.pricing import ByWeights


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
        assert tokens_per_time(a, k, price=1.0) == pytest.approx(sum(runs) / len(runs), rel=0.02)
    assert tokens_per_time(1.0, 4, price=2.0) == 5 / 2
    assert tokens_per_time(0.0, 4, price=1.4) == 1 / 1.4


def test_depth_follows_acceptance_and_cost() -> None:
    assert best_depth(0.0, pricing=ByWeights(0.05), limit=8) == 0  # nothing stands: plain decoding
    assert (
        best_depth(1.0, pricing=ByWeights(1.0), limit=8) == 0
    )  # a draft as costly as the model never pays
    assert (
        best_depth(1.0, pricing=ByWeights(0.1), limit=8) == 8
    )  # everything stands: as deep as allowed
    assert best_depth(0.8, pricing=ByWeights(0.1), limit=3) == 3  # the batch's budget bounds it
    depths = [best_depth(a / 10, pricing=ByWeights(0.1), limit=8) for a in range(11)]
    assert depths == sorted(depths) and depths[0] == 0 and depths[-1] == 8
    costly = [best_depth(0.7, pricing=ByWeights(c), limit=8) for c in (0.05, 0.1, 0.2, 0.5)]
    assert costly == sorted(costly, reverse=True) and costly[-1] < costly[0]
    for a in (0.3, 0.6, 0.9):  # drafting only where it beats plain decoding by GAIN
        k = best_depth(a, pricing=ByWeights(0.2), limit=8)
        assert k == 0 or tokens_per_time(a, k, 1 + k * 0.2) >= GAIN


def test_a_row_estimate_follows_its_guesses() -> None:
    row = Acceptance.starting(0.5)
    assert row.rate == 0.5
    for _ in range(30):
        row.record(guessed=4, kept=4)
    assert row.rate > 0.95 and best_depth(row.rate, pricing=ByWeights(0.1), limit=4) == 4
    for _ in range(30):
        row.record(guessed=4, kept=0)
    assert row.rate < 0.2  # a miss is one trial, however many guesses it ends
    assert draft_cost(1, 10) == 0.1 and draft_cost(1, 1000) > 0  # a floor for tiny drafts


def test_the_whole_batch_waits_for_the_draft() -> None:
    """Rows that do not guess still wait for the draft passes: the more of them, the less
    the guessing rows may guess; a batch of good guessers guesses as one row would."""
    assert (
        batch_depth([0.8] * 8, plain=0, pricing=ByWeights(0.1), limit=4)
        == best_depth(0.8, ByWeights(0.1), 4)
        == 4
    )
    depths = [batch_depth([0.6], plain=n, pricing=ByWeights(0.2), limit=4) for n in (0, 1, 3, 7)]
    assert depths == sorted(depths, reverse=True) and depths[0] > 0 and depths[-1] == 0
    assert batch_depth([0.9, 0.1, 0.1, 0.1], 0, pricing=ByWeights(0.25), limit=4) < best_depth(
        0.9, ByWeights(0.25), 4
    )
    assert batch_depth([], plain=8, pricing=ByWeights(0.1), limit=4) == 0


def test_rows_no_depth_pays_for_guess_one_token_ever_more_rarely() -> None:
    """Probes PROBE steps after the last drafting step, then twice as long after each one
    that does not make drafting pay, up to RAREST_PROBE steps apart."""
    rule = DepthRule.priced(ByWeights(0.1))
    asked = {0: (10, 4), 1: (11, 2)}
    steps = [rule.depths(asked, batch=3, prior=0.0) for _ in range(7 * PROBE + 2000)]
    probes = [i for i, d in enumerate(steps) if d]
    assert probes[:3] == [PROBE - 1, 3 * PROBE - 1, 7 * PROBE - 1]
    assert steps[PROBE - 1] == {0: 1, 1: 1}
    assert max(b - a for a, b in itertools.pairwise(probes)) == RAREST_PROBE
    # A new row, at the prior, drafts: after two plain steps, timed
    assert _steps(rule, {2: (12, 4)}, 1, 1.0, 3) == [{}, {}, {2: 4}]
    rule.record(12, guessed=4, kept=0)
    rule.forget({10, 11, 12})
    assert set(rule.rows) == {10, 11, 12} and rule.rows[12].rate < 1.0
    rule.forget({12})
    assert set(rule.rows) == {12}


# Prices as a GPU gives them: alone, reading 5 tokens costs 1.2 plain passes; at 16 rows the
# model is compute-bound and every token read costs most of a pass.
GPU = Measured(
    rows=(1, 16),
    draft=(0.15, 0.3),
    verify=((1.0, 1.05, 1.1, 1.15, 1.2), (1.0, 1.8, 2.6)),
)


def test_measured_prices_are_interpolated_between_batches_and_extrapolated_past_depths() -> None:
    assert GPU.price(0, 1) == 1.0 and GPU.price(4, 1) == pytest.approx(1.2 + 4 * 0.15)
    assert GPU.price(2, 16) == pytest.approx(2.6 + 2 * 0.3)
    assert GPU.price(4, 16) == pytest.approx(4.2 + 4 * 0.3)  # 0.8 a token past the last two
    assert GPU.price(1, 64) == GPU.price(1, 16)  # past the largest batch: as there
    alone, sixteen = 1.1 + 2 * 0.15, 2.6 + 2 * 0.3
    assert GPU.price(2, 8) == pytest.approx(alone + (sixteen - alone) * (8 - 1) / (16 - 1))


def test_a_compute_bound_batch_guesses_less_than_a_row_alone() -> None:
    """Where verification costs what the tokens it reads cost, guessing pays less: the same
    acceptance that guesses 4 deep alone guesses fewer at 8 rows and none at 16."""
    assert best_depth(0.9, GPU, limit=4) == 4
    depths = [batch_depth([0.9] * n, plain=0, pricing=GPU, limit=4) for n in (1, 8, 16)]
    assert depths[0] == 4 and depths[1] < 4 and depths[2] == 0
    assert batch_depth([0.9] * 16, 0, ByWeights(0.15), 4) == 4  # weights alone would guess


def _steps(rule: DepthRule, asked: dict, batch: int, prior: float, n: int) -> list[dict]:
    """n steps' depths, plain steps timed as the generator times them (the second of two
    plain steps in a row)."""
    out: list[dict] = []
    for _ in range(n):
        out.append(rule.depths(asked, batch=batch, prior=prior))
        if len(out) > 1 and not out[-1] and not out[-2]:
            rule.pricing.plain_step(batch, 0.01)
    return out


def test_drafting_decodes_two_plain_steps_every_refresh_steps() -> None:
    rule = DepthRule.priced(ByWeights(0.1))
    steps = _steps(rule, {0: (1, 4)}, 1, 1.0, 2 * REFRESH + 4)
    plain = [i for i, d in enumerate(steps) if not d]
    period = REFRESH + 1  # two plain steps, then REFRESH - 1 drafting ones
    assert plain == [0, 1, period, period + 1, 2 * period, 2 * period + 1]
    assert all(d == {0: 4} for d in steps if d)
    rule = DepthRule.priced(ByWeights(0.1))
    rule.pricing.plain_step(1, 0.01)  # a plain time near the batch: drafts at once
    steps = _steps(rule, {0: (1, 4)}, 1, 1.0, REFRESH + 3)
    assert [i for i, d in enumerate(steps) if not d] == [REFRESH, REFRESH + 1]


def test_plain_steps_wait_for_a_time_at_most_timing_steps() -> None:
    """Plain steps go on until two in a row are timed (prompt chunks may come between),
    TIMING steps at most."""
    rule = DepthRule.priced(ByWeights(0.1))
    steps = [rule.depths({0: (1, 4)}, batch=1, prior=1.0) for _ in range(TIMING + 2)]
    assert [i for i, d in enumerate(steps) if not d] == list(range(TIMING))


def test_step_times_teach_what_drafting_costs_beyond_its_price() -> None:
    """Speculative steps that take longer than their price says (against plain steps at
    about the same batch) raise every drafting price until drafting stops paying; times
    that match the price leave it be; no plain time near the batch teaches nothing."""
    pricing = Learned(ByWeights(0.1))
    assert pricing.price(4, 1) == pytest.approx(1.4) and pricing.price(0, 1) == 1.0
    pricing.speculative_step(4, 1, seconds=1.0)
    assert pricing.extra == 0.0  # no plain time yet
    pricing.plain_step(1, 0.010)
    for _ in range(30):
        pricing.speculative_step(4, 1, seconds=0.014)
    assert pricing.extra == pytest.approx(0.0, abs=1e-9)
    for _ in range(30):
        pricing.speculative_step(4, 1, seconds=0.030)  # 3 plain steps: 1.6 more than priced
    assert pricing.extra == pytest.approx(1.6, rel=0.01)
    assert pricing.price(0, 1) == 1.0 and pricing.price(4, 1) == pytest.approx(3.0, rel=0.01)
    assert best_depth(0.6, ByWeights(0.1), 4) > 0 and best_depth(0.6, pricing, 4) == 0
    assert pricing.plain_near(8) is None and pricing.plain_near(1) == 0.010
    pricing.plain_step(6, 0.02)
    assert pricing.plain_near(8) == 0.02 and pricing.plain_near(4) == 0.02  # within 1.5x


def test_new_rows_start_from_what_the_rows_before_them_ended_with() -> None:
    """The model's rate counts only guesses made, where they were expected to stand; a new
    row starts from the estimates its predecessors ended with instead, once there are any."""
    rule = DepthRule.priced(ByWeights(0.1))
    rule.pricing.plain_step(1, 0.01)  # (no plain steps to time first)
    rule.depths({0: (1, 4)}, batch=1, prior=0.9)
    assert rule.rows[1].rate == pytest.approx(0.9)  # none ended yet: the model's rate
    for _ in range(20):
        rule.record(1, guessed=1, kept=0)
    low = rule.rows[1].rate
    rule.forget(set())
    assert rule.ended == low < 0.2
    rule.depths({0: (2, 4)}, batch=1, prior=0.9)
    assert rule.rows[2].rate == pytest.approx(low)
