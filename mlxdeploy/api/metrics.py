"""Prometheus metrics of one app: HTTP requests, latency, time to first token, and each
engine's tokens, queue, batch and prefix cache (labelled by model).

Every metric lives on a `CollectorRegistry` made per app. An engine's numbers are plain ints
kept by its generation thread; `EngineCollector` reads them when Prometheus scrapes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map

from ..engine.api import Engine, EngineState, EngineStats
from ..engine.residency import Residents, Tenant
from .asgi import ASGIApp

PREFIX = "mlxdeploy"
UNMATCHED = "unmatched"  # the route label of requests no route matched (bounds cardinality)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The app's registry and the metrics the HTTP side records itself."""

    def __init__(self, engines: Sequence[Engine], residents: Residents | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's last byte).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from handing a prompt to the engine to its first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engines))
        if residents is not None:
            self.registry.register(ResidencyCollector(residents))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def first_token_observer(self, model_id: str) -> Callable[[float], None]:
        """What a run calls with the seconds to its first token."""
        return self.ttft.labels(model=model_id).observe

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition a scraper asked for (`Accept`), and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class EngineCollector(Collector):
    """Reads each engine's stats at scrape time, so no generation thread touches metrics.
    Every family has a `model` label: one sample per served model."""

    def __init__(self, engines: Sequence[Engine], residents: Residents | None = None) -> None:
        self._engines = list(engines)

    def collect(self) -> Iterator[Metric]:
        families = [_family(kind, name, help) for kind, name, help in _ENGINE_METRICS]
        for engine in self._engines:
            values = _engine_values(engine.stats(), engine.state)
            for family, value in zip(families, values, strict=True):
                family.add_metric([engine.model_id], value)
        yield from families


_ENGINE_METRICS = (
    ("gauge", "queue_depth", "Requests waiting for a batch slot."),
    ("gauge", "batch_size", "Requests in the running batch (reading their prompt or generating)."),
    ("gauge", "engine_ready", "1 when the model is ready to serve."),
    ("counter", "prompt_tokens", "Prompt tokens of admitted requests, cached ones included."),
    ("counter", "completion_tokens", "Tokens generated."),
    ("counter", "prefix_cache_hits", "Requests that reused cached prompt tokens."),
    ("counter", "prefix_cache_tokens", "Prompt tokens taken from the prefix cache."),
    ("counter", "generation_step_failures", "Generation steps that failed their batch."),
    ("gauge", "prefix_cache_bytes", "Bytes the prefix cache holds (engine.prompt_cache_bytes)."),
    ("gauge", "prefix_cache_entries", "Prompts, answers and snapshots the prefix cache holds."),
    ("counter", "draft_tokens", "Tokens the draft model guessed (speculative decoding)."),
    ("counter", "draft_tokens_accepted", "Guessed tokens the model kept."),
    ("gauge", "draft_acceptance_rate", "Kept guesses over all guesses since start (0: none)."),
)


def _family(kind: str, name: str, documentation: str) -> GaugeMetricFamily | CounterMetricFamily:
    family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
    return family(f"{PREFIX}_{name}", documentation, labels=["model"])


def _engine_values(stats: EngineStats, state: EngineState) -> tuple[float, ...]:
    """In the order of _ENGINE_METRICS."""
    return (
        stats.waiting,
        stats.batch_size,
        state == "ready",
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.prefix_cache_hits,
        stats.cached_tokens,
        stats.step_failures,
        stats.prefix_cache_bytes,
        stats.prefix_cache_entries,
        stats.draft_tokens,
        stats.draft_tokens_accepted,
        stats.draft_tokens_accepted / stats.draft_tokens if stats.draft_tokens else 0.0,
    )


class ResidencyCollector(Collector):
    """Loads, evictions and the memory of each model, read at scrape time."""

    def __init__(self, residents: Residents) -> None:
        self._residents = residents

    def collect(self) -> Iterator[Metric]:
        families = [_family(kind, name, help) for kind, name, help in _RESIDENCY_METRICS]
        for tenant in self._residents:
            for family, value in zip(families, _residency_values(tenant), strict=True):
                family.add_metric([tenant.id], value)
        yield from families
        budget = GaugeMetricFamily(
            f"{PREFIX}_memory_budget_bytes", "What the models' weights may take together."
        )
        budget.add_metric([], self._residents.budget)
        yield budget


_RESIDENCY_METRICS = (
    ("counter", "model_loads", "Loads of the model on demand (after the start)."),
    ("counter", "model_load_seconds", "Seconds spent loading the model on demand, all loads."),
    ("counter", "model_evictions", "Unloads of the model to make room for another one."),
    ("gauge", "model_resident_bytes", "Bytes the model's weights take in memory (0: unloaded)."),
    ("gauge", "model_pinned", "1 when the model is pinned in memory."),
)


def _residency_values(tenant: Tenant) -> tuple[float, ...]:
    """In the order of _RESIDENCY_METRICS."""
    resident = tenant.size if tenant.resident else 0
    return (tenant.loads, tenant.load_seconds, tenant.evictions, resident, tenant.pinned)


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by route and status and times it, streams
    included (the clock stops at the response's last byte)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, url_map: Map) -> None:
        self._app = app
        self._metrics = metrics
        self._url_map = url_map

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before it starts a response

        async def recording_send(message: ASGISendEvent) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, recording_send)
        finally:
            route = route_of(self._url_map, scope["method"], scope["path"])
            self._metrics.observe_request(route, status, time.perf_counter() - started)


def route_of(url_map: Map, method: str, path: str) -> str:
    """The route rule a request matched (`/v1/models/<path:model_id>`), for a bounded label."""
    adapter = url_map.bind("localhost")
    try:
        rule, _ = adapter.match(path, method=method, return_rule=True)
    except MethodNotAllowed as exc:  # the path has a route, only not for this method
        methods = sorted(exc.valid_methods or ())
        if not methods:
            return UNMATCHED
        with contextlib.suppress(HTTPException):
            rule, _ = adapter.match(path, method=methods[0], return_rule=True)
            return str(rule.rule)
        return UNMATCHED
    except HTTPException:  # no route (404) or a redirect to one
        return UNMATCHED
    return str(rule.rule)
