"""Models in memory under a budget (engine/residency.py): loads on demand, least recently
used evictions, pins, requests in flight, bounded waits, failed loads, idle unloads. Scripted
engines stand in for the models here; test_residency_http.py drives the same through HTTP and
real models."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mlxdeploy.engine.residency import (
    FAILED_LOAD_PAUSE_SECONDS,
    NotResident,
    Refused,
    Residents,
    Tenant,
)
from mlxdeploy.spec.memory import Residency
from tests.scripted import ScriptedEngine

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def residents(
    *names: str,
    budget: int = 5 * MIB,
    pin: tuple[str, ...] = (),
    idle: float | None = None,
    timeout: float = 5.0,
    clock: Callable[[], float] | None = None,
    **engine_fields: Any,
) -> Residents:
    """Models of 2 MiB each (their files say so too), none loaded."""
    tenants = [
        Tenant(
            ScriptedEngine(model_id=name, state="unloaded", weight_bytes=2 * MIB, **engine_fields),
            Residency("on_demand", name in pin, idle),
            estimate=2 * MIB,
        )
        for name in names
    ]
    return Residents(tenants, budget, timeout, **({"clock": clock} if clock else {}))


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def loaded(group: Residents) -> list[str]:
    return [t.id for t in group if t.engine.state == "ready"]


async def serve(group: Residents, name: str) -> None:
    """One request's hold on the model, released at once."""
    (await group.use(name)).release()


def test_a_request_loads_its_model_and_the_least_recently_used_makes_room() -> None:
    async def test() -> None:
        group = residents("a", "b", "c")
        await serve(group, "a")
        await serve(group, "b")
        assert loaded(group) == ["a", "b"]
        await serve(group, "c")  # 6 MiB would not fit 5: a, used first, goes
        assert loaded(group) == ["b", "c"]
        await serve(group, "a")
        assert loaded(group) == ["a", "c"]
        assert [t.evictions for t in group] == [1, 1, 0]
        group.settle()
        assert [t.loads for t in group] == [2, 1, 1]
        assert group.used == 4 * MIB

    run(test)


def test_a_model_with_requests_in_flight_is_never_unloaded() -> None:
    async def test() -> None:
        group = residents("a", "b", "c", timeout=0.3)
        held_a, held_b = await group.use("a"), await group.use("b")
        with pytest.raises(NotResident) as refused:
            await group.use("c")
        assert "no room was freed within 0.3 s" in str(refused.value)
        assert loaded(group) == ["a", "b"]
        waiting = asyncio.create_task(group.use("c"))  # waits for room ...
        await asyncio.sleep(0.1)
        assert not waiting.done()
        held_b.release()  # ... which b's end makes
        (await waiting).release()
        assert loaded(group) == ["a", "c"]
        held_a.release()

    run(test)


def test_a_pinned_model_stays() -> None:
    async def test() -> None:
        group = residents("a", "b", "c", pin=("a",))
        for name in ("a", "b", "c"):
            await serve(group, name)
        assert loaded(group) == ["a", "c"]  # b went, though a was used longer ago
        with pytest.raises(Refused, match="pinned; unpin it first"):
            await group.unload_now("a")
        group.pin("a", False)
        await group.unload_now("a")
        assert loaded(group) == ["c"]

    run(test)


def test_pinning_what_cannot_fit_beside_the_pinned_is_refused() -> None:
    group = residents("a", "b", "c", pin=("a", "b"))
    with pytest.raises(Refused, match="do not fit the 5.0 MiB memory budget"):
        group.pin("c", True)


def test_a_model_larger_than_the_budget_beside_the_pinned_is_refused_at_once() -> None:
    async def test() -> None:
        group = residents("a", "b", budget=3 * MIB, pin=("a",))
        await serve(group, "a")
        with pytest.raises(NotResident, match="pinned models hold 2.0 MiB") as refused:
            await group.use("b")
        assert refused.value.retry_after > 0

    run(test)


def test_a_failed_load_is_answered_then_tried_again_later() -> None:
    async def test() -> None:
        clock = Clock()
        group = residents("a", clock=clock, load_error="no weights here")
        with pytest.raises(NotResident, match="failed to load: no weights here"):
            await group.use("a")
        group.settle()
        with pytest.raises(NotResident, match="failed to load"):
            await group.use("a")
        engine = group.tenant("a").engine
        assert isinstance(engine, ScriptedEngine) and engine.loaded == 1  # not tried again
        clock.now += FAILED_LOAD_PAUSE_SECONDS
        engine.load_error = None
        await serve(group, "a")
        assert engine.loaded == 2 and loaded(group) == ["a"]

    run(test)


def test_a_load_that_outlasts_the_timeout_is_a_503_and_goes_on() -> None:
    async def test() -> None:
        group = residents("a", timeout=0.2, load_seconds=0.5)
        with pytest.raises(NotResident, match="still loading after 0.2 s"):
            await group.use("a")
        await asyncio.sleep(0.4)
        await serve(group, "a")  # the load went on: the next request finds it ready
        engine = group.tenant("a").engine
        assert isinstance(engine, ScriptedEngine) and engine.loaded == 1

    run(test)


def test_idle_models_are_unloaded_after_their_idle_time() -> None:
    async def test() -> None:
        clock = Clock()
        group = residents("a", "b", idle=60.0, pin=("b",), clock=clock)
        await serve(group, "a")
        await serve(group, "b")
        held = await group.use("a")
        clock.now += 61
        assert group.idle() == []  # a request holds a
        held.release()
        assert group.idle() == []  # its release counts as a use
        clock.now += 61
        assert [t.id for t in group.idle()] == ["a"]  # b is pinned
        watcher = asyncio.create_task(group.watch())
        await asyncio.sleep(0.2)
        watcher.cancel()
        assert loaded(group) == ["b"]

    run(test)


def test_a_model_larger_than_its_files_said_makes_room_once_loaded() -> None:
    async def test() -> None:
        group = residents("a", "b", budget=5 * MIB)
        await serve(group, "a")
        big = group.tenant("b")
        big.estimate = None  # not measurable before loading (e.g. not downloaded yet)
        assert isinstance(big.engine, ScriptedEngine)
        big.engine.weight_bytes = 4 * MIB
        held = await group.use("b")
        assert loaded(group) == ["a", "b"]
        watcher = asyncio.create_task(group.watch())
        await asyncio.sleep(0.2)
        watcher.cancel()
        assert loaded(group) == ["b"] and group.tenant("a").evictions == 1
        held.release()

    run(test)


def test_the_requests_waiting_for_a_load_are_bounded() -> None:
    async def test() -> None:
        group = residents("a", load_seconds=0.3)
        group.tenant("a").queue = 2
        first = [asyncio.create_task(group.use("a")) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(NotResident, match="2 requests already wait for model 'a'"):
            await group.use("a")
        for lease in await asyncio.gather(*first):
            lease.release()
        held = [await group.use("a") for _ in range(3)]  # once loaded, the bound is admission's
        assert group.tenant("a").uses == 3
        for lease in held:
            lease.release()

    run(test)


def test_a_model_loading_at_the_start_is_not_waited_for() -> None:
    async def test() -> None:
        group = residents("a")
        group.tenant("a").engine.load()  # as `up` loads an eager model
        with pytest.raises(NotResident, match="is loading; retry shortly"):
            await group.use("a")

    run(test)
