"""engine/schedule.py: the plan of one step, from counts alone (no model)."""

from __future__ import annotations

from mlxdeploy.engine.schedule import Limits, Plan, Reading, Waiting, plan

LIMITS = Limits(rows=8, group=4, chunk=100, budget=250, wait_steps=3)


def test_an_idle_engine_admits_at_once_and_reads_the_oldest_prompts_first() -> None:
    waiting = [Waiting(1, 120, arrived=0), Waiting(2, 30, arrived=0)]
    assert plan(0, 0, [], waiting, LIMITS) == Plan(
        decode=False, admit=(1, 2), chunks=((1, 100), (2, 30))
    )


def test_while_rows_decode_a_lone_prompt_waits_for_a_group_or_its_time() -> None:
    lone = [Waiting(7, 16, arrived=10)]
    assert plan(11, 5, [], lone, LIMITS) == Plan(decode=True)
    assert plan(13, 5, [], lone, LIMITS) == Plan(decode=True, admit=(7,), chunks=((7, 16),))
    group = [Waiting(u, 16, arrived=10) for u in range(4)]
    assert plan(10, 2, [], group, LIMITS).admit == (0, 1, 2, 3)


def test_the_token_budget_bounds_a_step_and_the_oldest_prompt_always_moves() -> None:
    reading = [Reading(1, 400), Reading(2, 400), Reading(3, 400)]
    assert plan(0, 3, reading, [], LIMITS).chunks == ((1, 100), (2, 100), (3, 50))
    tight = Limits(rows=8, group=4, chunk=100, budget=10, wait_steps=3)
    assert plan(0, 3, reading, [], tight).chunks == ((1, 100),)


def test_admission_never_exceeds_the_rows_or_the_group() -> None:
    waiting = [Waiting(u, 8, arrived=0) for u in range(10)]
    assert plan(0, 6, [], waiting, LIMITS).admit == (0, 1)  # 8 rows, 6 decoding
    assert plan(0, 0, [Reading(99, 8)], waiting, LIMITS).admit == (0, 1, 2)  # a group of 4
    assert plan(0, 8, [], waiting, LIMITS) == Plan(decode=True)


def test_the_same_counts_give_the_same_plan() -> None:
    """Ranks of a distributed model replay the leader's inputs: the plan is a function."""
    waiting = [Waiting(u, 50 + u, arrived=u) for u in range(6)]
    reading = [Reading(40, 300)]
    plans = {plan(9, 3, reading, waiting, LIMITS) for _ in range(3)}
    assert len(plans) == 1


def test_a_request_with_n_choices_needs_n_rows() -> None:
    """The choices of one request share one prompt and take a row each once it is read."""
    three = [Waiting(1, 20, arrived=0, rows=3), Waiting(2, 20, arrived=0)]
    assert plan(0, 6, [], three, LIMITS) == Plan(decode=True)  # 6 + 3 > 8: wait
    assert plan(0, 5, [], three, LIMITS).admit == (1,)  # 5 + 3 = 8: a full engine
    assert plan(0, 0, [Reading(9, 50, rows=5)], three, LIMITS).admit == (1,)
    # More choices than the engine has rows: admitted alone, into an idle engine.
    many = [Waiting(1, 20, arrived=0, rows=12)]
    assert plan(0, 0, [], many, LIMITS).admit == (1,)
    assert plan(0, 1, [], many, LIMITS) == Plan(decode=True)


def test_no_chunk_crosses_the_end_of_a_segment() -> None:
    """The prefix cache keeps the cache where a segment ends (a system prompt's end)."""
    reading = [Reading(1, 300, until=40), Reading(2, 300)]
    assert plan(0, 0, reading, [], LIMITS).chunks == ((1, 40), (2, 100))
    waiting = [Waiting(3, 300, arrived=0, until=7)]
    assert plan(0, 0, [], waiting, LIMITS).chunks == ((3, 7),)
