"""Which models are in memory, under a byte budget: a request for a model that is not loaded
waits while it loads; the least recently used unpinned models without requests in flight are
unloaded to make room; idle ones are unloaded after their idle time.

MLX-free: it steers engines through the contract (`engine/api.py`) from the event loop, one
placement at a time. A model's size is what its engine measured once loaded, before that the
estimate from its files' headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..footprint import bytes_text, estimate_bytes
from ..gguf_header import GGUFError
from ..sharding import model_config
from ..spec.catalog import ServedModel
from ..spec.memory import MemorySettings, Residency
from ..spec.sources import config_file, weight_files
from .api import Engine, EngineState

log = logging.getLogger("mlxdeploy.residency")

POLL_SECONDS = 0.05  # how often a waiting request looks at its model's state
RETRY_AFTER_SECONDS = 5  # what a 503 asks clients to wait
FAILED_LOAD_PAUSE_SECONDS = 10.0  # a model whose load failed is not tried again sooner


class NotResident(Exception):
    """The model cannot be served now (it cannot be loaded, or not in time); retry later."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """An operator's load, unload or pin that cannot be done (the message says why)."""


@dataclass(eq=False)
class Tenant:
    """One model's place in memory and what happened to it there."""

    engine: Engine
    residency: Residency
    estimate: int | None = None  # bytes, from its files' headers; None when not measured
    context_length: int | None = None  # from its config, until the engine knows
    queue: int = 1 << 30  # most requests waiting for its load
    uses: int = 0  # requests holding it (from their lookup to their response's end)
    waiting: int = 0  # requests waiting for it to be loaded
    last_used: float = 0.0
    pinned: bool = False
    on_demand: bool = False  # its current load was started here (requests wait for it)
    loads: int = 0
    evictions: int = 0
    load_seconds: float = 0.0  # all loads together
    loading_since: float | None = None
    failed_at: float | None = None
    # Chosen to make room for a model that waits: until then (or until it is unloaded), new
    # requests for it wait instead of holding it, so that the wait ends.
    draining_until: float = 0.0

    def __post_init__(self) -> None:
        self.pinned = self.residency.pin

    @property
    def id(self) -> str:
        return self.engine.model_id

    @property
    def size(self) -> int:
        measured = self.engine.resident_bytes
        return measured if measured else self.estimate or 0

    @property
    def resident(self) -> bool:
        return self.engine.state in ("loading", "ready")

    @property
    def evictable(self) -> bool:
        return not self.pinned and self.uses == 0 and self.engine.state == "ready"

    def context(self) -> int | None:
        return self.engine.context_length or self.context_length


@dataclass
class Lease:
    """A request's hold on its model: while held, the model is not unloaded."""

    residents: Residents
    tenant: Tenant
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.residents.release(self.tenant)


@dataclass
class Residents:
    """The models of one server and the memory budget they share."""

    tenants: Sequence[Tenant]
    budget: int  # bytes
    load_timeout: float  # seconds a request waits for its model
    clock: Callable[[], float] = time.monotonic
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.tenants)

    def tenant(self, model_id: str) -> Tenant:
        return next(t for t in self.tenants if t.id == model_id)

    @property
    def used(self) -> int:
        return sum(t.size for t in self.tenants if t.resident)

    # -- requests -----------------------------------------------------------------------
    async def use(self, model_id: str) -> Lease:
        """Hold the model for a request, loading it first if needed (bounded by the load
        timeout). Raises NotResident when it cannot be served in time."""
        tenant = self.tenant(model_id)
        if tenant.engine.state != "ready" and tenant.waiting >= tenant.queue:
            raise NotResident(f"{tenant.waiting} requests already wait for model '{model_id}'")
        tenant.waiting += 1
        try:
            return await self._hold(tenant)
        finally:
            tenant.waiting -= 1

    async def _hold(self, tenant: Tenant) -> Lease:
        deadline = self.clock() + self.load_timeout
        while self.clock() < tenant.draining_until:  # it goes next: wait, then load it again
            if self.clock() >= deadline:
                raise NotResident(
                    f"model '{tenant.id}' is being unloaded to make room for another model "
                    f"and was not loaded again within {self.load_timeout:g} s"
                )
            await asyncio.sleep(POLL_SECONDS)
        tenant.uses += 1
        tenant.last_used = self.clock()
        try:
            await self._ready(tenant, deadline)
        except BaseException:
            self.release(tenant)
            raise
        return Lease(self, tenant)

    def release(self, tenant: Tenant) -> None:
        tenant.uses -= 1
        tenant.last_used = self.clock()

    async def _ready(self, tenant: Tenant, deadline: float) -> None:
        while True:
            self.settle()
            state = tenant.engine.state
            if state == "ready":
                return
            if state == "stopped":
                raise NotResident(f"model '{tenant.id}' has stopped serving")
            if state == "loading" and not tenant.on_demand:  # the server's own start
                raise NotResident(f"model '{tenant.id}' is loading; retry shortly")
            if state == "failed":
                self._check_failure(tenant)
            if state in ("unloaded", "failed"):
                async with self._lock:
                    await self._place(tenant, deadline)
            if self.clock() >= deadline:
                raise NotResident(self._late(tenant))
            await asyncio.sleep(POLL_SECONDS)

    def _check_failure(self, tenant: Tenant) -> None:
        """A model whose load failed answers with the failure for a while, then is tried
        again (its files may have been fixed)."""
        failed_at = tenant.failed_at if tenant.on_demand else None
        if failed_at is None:
            raise NotResident(f"model '{tenant.id}' failed: {tenant.engine.error}")
        if self.clock() - failed_at < FAILED_LOAD_PAUSE_SECONDS:
            raise NotResident(
                f"model '{tenant.id}' failed to load: {tenant.engine.error}",
                int(FAILED_LOAD_PAUSE_SECONDS),
            )

    def _late(self, tenant: Tenant) -> str:
        if tenant.engine.state == "loading":
            return f"model '{tenant.id}' is still loading after {self.load_timeout:g} s"
        busy = ", ".join(t.id for t in self.tenants if t.resident and t is not tenant)
        return (
            f"model '{tenant.id}' needs about {bytes_text(tenant.size)}; no room was freed within "
            f"{self.load_timeout:g} s (the memory budget is {bytes_text(self.budget)}, in use by "
            f"{busy or 'nothing'}; models with requests in flight and pinned models stay)"
        )

    # -- placement (under the lock) ------------------------------------------------------
    async def _place(self, tenant: Tenant, deadline: float) -> bool:
        """Make room for the model and start loading it; False while there is no room (the
        models that will make it are drained until `deadline`)."""
        if tenant.engine.state not in ("unloaded", "failed"):
            return True  # another request placed it meanwhile
        pinned = sum(t.size for t in self.tenants if t.pinned and t.resident and t is not tenant)
        if tenant.size + pinned > self.budget:
            raise NotResident(
                f"model '{tenant.id}' needs about {bytes_text(tenant.size)}; the memory budget is "
                f"{bytes_text(self.budget)} and pinned models hold {bytes_text(pinned)}",
                RETRY_AFTER_SECONDS * 6,
            )
        victims = self._victims(tenant.size)
        if victims is None:
            self._drain(tenant.size, deadline)
            return False
        for victim in victims:
            await self.unload(victim, f"to make room for {tenant.id}")
            victim.evictions += 1
        self._start(tenant)
        return True

    def _victims(self, needed: int) -> list[Tenant] | None:
        """The least recently used models to unload so that `needed` bytes fit; None when
        unloading every model that may go is not enough."""
        free = self.budget - self.used
        victims: list[Tenant] = []
        for candidate in sorted(self.tenants, key=lambda t: t.last_used):
            if free >= needed:
                break
            if candidate.evictable:
                victims.append(candidate)
                free += candidate.size
        return victims if free >= needed else None

    def _drain(self, needed: int, deadline: float) -> None:
        """Mark the least recently used models whose requests hold the room `needed` bytes
        want: they take no new requests until theirs end and they are unloaded."""
        free = self.budget - self.used
        for candidate in sorted(self.tenants, key=lambda t: t.last_used):
            if free >= needed:
                return
            if not candidate.pinned and candidate.engine.state == "ready":
                candidate.draining_until = max(candidate.draining_until, deadline)
                free += candidate.size

    def _start(self, tenant: Tenant) -> None:
        log.info(
            "loading model %s (about %s; %s of the %s budget in use)",
            tenant.id, bytes_text(tenant.size), bytes_text(self.used), bytes_text(self.budget),
        )  # fmt: skip
        for other in self.tenants:  # the room is made: nothing needs draining now
            other.draining_until = 0.0
        tenant.on_demand = True
        tenant.loading_since = self.clock()
        tenant.failed_at = None
        tenant.engine.load()

    async def unload(self, tenant: Tenant, why: str) -> None:
        log.info("unloading model %s (%s; %s)", tenant.id, bytes_text(tenant.size), why)
        await asyncio.to_thread(tenant.engine.unload)
        tenant.draining_until = 0.0

    # -- watching ------------------------------------------------------------------------
    def settle(self) -> None:
        """Book the loads that ended since the last look (called often on the event loop)."""
        for tenant in self.tenants:
            if tenant.loading_since is None or tenant.engine.state == "loading":
                continue
            seconds = self.clock() - tenant.loading_since
            tenant.loading_since = None
            if tenant.engine.state == "ready":
                tenant.loads += 1
                tenant.load_seconds += seconds
                log.info(
                    "model %s loaded in %.1f s (%s)", tenant.id, seconds, bytes_text(tenant.size)
                )
            else:
                tenant.failed_at = self.clock()

    def idle(self) -> list[Tenant]:
        """Loaded unpinned models without requests for longer than their idle time."""
        now = self.clock()
        return [
            t
            for t in self.tenants
            if t.evictable
            and t.residency.idle_unload_seconds is not None
            and now - t.last_used >= t.residency.idle_unload_seconds
        ]

    async def watch(self) -> None:
        """Book loads and unload idle models, until cancelled (the server's lifetime)."""
        while True:
            self.settle()
            if self.used > self.budget:  # a model larger than its files said
                async with self._lock:
                    await self._trim()
            for tenant in self.idle():
                async with self._lock:
                    if tenant in self.idle():
                        await self.unload(tenant, "idle")
            await asyncio.sleep(POLL_SECONDS * 10)

    async def _trim(self) -> None:
        """Unload the least recently used models that may go until the budget holds."""
        for victim in sorted(self.tenants, key=lambda t: t.last_used):
            if self.used <= self.budget:
                return
            if victim.evictable:
                await self.unload(victim, f"over the {bytes_text(self.budget)} memory budget")
                victim.evictions += 1

    # -- operators -----------------------------------------------------------------------
    async def load(self, model_id: str) -> Tenant:
        """Load a model now (an operator's call), waiting for it like a request."""
        lease = await self.use(model_id)
        lease.release()
        return lease.tenant

    async def unload_now(self, model_id: str) -> Tenant:
        tenant = self.tenant(model_id)
        async with self._lock:
            if tenant.pinned:
                raise Refused(f"model '{model_id}' is pinned; unpin it first")
            if tenant.uses:
                raise Refused(f"model '{model_id}' has {tenant.uses} requests in flight")
            if tenant.engine.state == "ready":
                await self.unload(tenant, "asked to")
            elif tenant.engine.state == "loading":
                raise Refused(f"model '{model_id}' is loading; unload it once it is loaded")
        return tenant

    def pin(self, model_id: str, pinned: bool) -> Tenant:
        tenant = self.tenant(model_id)
        if pinned and not tenant.pinned:
            others = sum(t.size for t in self.tenants if t.pinned)
            if tenant.size + others > self.budget:
                budget = bytes_text(self.budget)
                raise Refused(
                    f"model '{model_id}' ({bytes_text(tenant.size)}) and the pinned models "
                    f"({bytes_text(others)}) do not fit the {budget} memory budget together"
                )
        tenant.pinned = pinned
        return tenant


def serving_state(tenant: Tenant) -> EngineState | None:
    """The state that keeps the server from being ready, or None: a model loaded on demand,
    or waiting to be, never does."""
    state = tenant.engine.state
    if state == "unloaded" or tenant.on_demand:
        return None
    return state


def residents_of(
    models: Sequence[ServedModel],
    engines: Sequence[Engine],
    memory: MemorySettings,
    device: int,
) -> Residents:
    """The residents of a server: each model with its engine and its measured files, under
    `memory`'s budget on a device offering `device` bytes; as many requests wait for a
    model's load as its engine admits (max_batch_size + max_queue)."""
    by_id = {engine.model_id: engine for engine in engines}
    tenants = [
        Tenant(by_id[m.id], m.residency, *_measure(m), queue=m.engine.admits) for m in models
    ]
    return Residents(tenants, memory.bytes_of(device), memory.load_timeout_seconds)


def _measure(model: ServedModel) -> tuple[int | None, int | None]:
    """The size of the model's weights and its context length, from its files' headers and
    config (None for what cannot be read here, e.g. a model not downloaded yet)."""
    try:
        files = weight_files(model.source)
        size = None if files is None else estimate_bytes(files)
    except (OSError, ValueError, KeyError, TypeError):
        size = None
    try:
        path = config_file(model.source)
        config = None if path is None else model_config(path)
    except (OSError, ValueError, GGUFError):
        config = None
    context = None if config is None else config.get("max_position_embeddings")
    return size, context if isinstance(context, int) else None
