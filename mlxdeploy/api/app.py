"""create_app(deployment, engines) -> the Quart app, with its route table in one place. No MLX here:
the app talks to engines through the contract in `engine/api.py`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from quart import Quart, Response, request

from ..engine.api import Engine
from ..engine.residency import Residents, residents_of
from ..footprint import machine_memory
from ..spec import routes
from ..spec.deployment import Deployment
from .admin import admin_model
from .asgi import RequestScope
from .chat.serving import chat_completions, preset_chat
from .completions.serving import completions
from .embeddings.serving import create_embeddings
from .errors import json_response, register_error_handlers
from .guards.auth import ApiKeys, load_api_keys
from .guards.body import install_body_reader
from .guards.drain import Drain, install_drain
from .guards.gate import install_gate
from .messages.serving import count_tokens, create_message
from .metrics import Metrics, RequestMetrics
from .models import ModelCard, ModelList, current_cards, find_card, health_report, model_cards
from .playground import Page, playground
from .responses.serving import create_response, delete_response, get_response
from .responses.store import ResponseStore
from .routing import Targets
from .serving import Generation
from .status import status
from .unused import install_unused_fields
from .wire import now

View = Callable[..., Awaitable[Response]]


def create_app(
    deployment: Deployment,
    engines: Sequence[Engine],
    api_keys: ApiKeys | None = None,
    residents: Residents | None = None,
) -> Quart:
    """One engine per model of `deployment.catalog`. `api_keys`: the keys `load_api_keys` read
    at startup; None reads them from the spec. `residents`: the models' places in memory
    (None: under a budget of the machine's RAM)."""
    spec, catalog = deployment.spec, deployment.catalog
    if residents is None:
        residents = residents_of(catalog.models, engines, spec.memory, machine_memory())
    app = Quart("mlxdeploy")
    app.config.update(
        RESPONSE_TIMEOUT=None,  # streams last as long as generation does
        BODY_TIMEOUT=60,
        MAX_CONTENT_LENGTH=spec.limits.max_body_bytes,  # 413, also for chunked bodies
        JSON_SORT_KEYS=False,
    )
    metrics = Metrics(engines, residents)
    by_id = {engine.model_id: engine for engine in engines}
    targets = Targets(catalog, by_id, residents)
    generation = Generation(spec.limits, metrics)
    drain = install_drain(app, targets.admissions)
    install_body_reader(app)  # before the gate's hooks: a 401 must not leave a body unread
    cards = model_cards(catalog, created=now())

    stored = ResponseStore(spec.limits.stored_responses)
    views: dict[routes.Route, View] = {
        routes.HEALTH: partial(health, residents, drain),
        routes.METRICS: partial(prometheus_metrics, metrics),
        routes.MODELS: partial(list_models, cards, residents),
        routes.MODEL: partial(show_model, cards, residents),
        routes.STATUS: partial(status, residents, drain),
        routes.ADMIN_MODEL: partial(admin_model, spec, cards, residents),
        routes.CHAT_COMPLETIONS: partial(chat_completions, generation, targets),
        routes.COMPLETIONS: partial(completions, generation, targets),
        routes.RESPONSES: partial(create_response, generation, targets, stored),
        routes.RESPONSE: partial(get_response, stored),
        routes.RESPONSE_DELETE: partial(delete_response, stored),
        routes.MESSAGES: partial(create_message, generation, targets),
        routes.COUNT_TOKENS: partial(count_tokens, targets),
        routes.EMBEDDINGS: partial(create_embeddings, spec.limits, targets),
    }
    table = [(route, views[route]) for route in routes.served_routes(spec.apis)]
    table += [
        (routes.endpoint_route(p.name, p.path), partial(preset_chat, generation, targets, p.name))
        for p in catalog.presets
    ]
    if spec.playground_enabled:
        table.append((routes.PLAYGROUND, partial(playground, Page.load())))
    for route, view in table:
        app.add_url_rule(route.path, route.endpoint, view, methods=[route.method])

    watch_residents(app, residents)
    install_gate(app, spec, api_keys or load_api_keys(spec.auth, deployment.base_dir))
    install_unused_fields(app, spec.limits)
    register_error_handlers(app)
    asgi = RequestScope(app.asgi_app)  # closes each request's runs, however it ends
    app.asgi_app = RequestMetrics(asgi, metrics, app.url_map)  # type: ignore[method-assign]
    return app


def watch_residents(app: Quart, residents: Residents) -> None:
    """Book loads and unload idle models while the app serves."""
    tasks: list[asyncio.Task[None]] = []

    @app.before_serving
    async def start_watching() -> None:
        tasks.append(asyncio.create_task(residents.watch()))

    @app.after_serving
    async def stop_watching() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def health(residents: Residents, drain: Drain) -> Response:
    body = health_report(residents, drain.draining)
    return json_response(body, 200 if body["status"] == "ok" else 503)


async def prometheus_metrics(metrics: Metrics) -> Response:
    payload, content_type = metrics.render(request.headers.get("Accept"))
    return Response(payload, 200, content_type=content_type)


async def list_models(cards: list[ModelCard], residents: Residents) -> Response:
    return json_response(ModelList(data=current_cards(cards, residents)))


async def show_model(cards: list[ModelCard], residents: Residents, model_id: str) -> Response:
    return json_response(find_card(current_cards(cards, residents), model_id))
