"""create_app(spec, engines) -> the Quart app. No MLX here: the app talks to Engines."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from .guards.admission import Slot
from .guards.auth import ApiKeys, load_api_keys
from .guards.body import decode_json, install_body_reader
from ..spec.catalog import Catalog
from .chat import Completion, TextCompletionFormat, complete, stream
from .guards.drain import install_drain
from .errors import (
    APIError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
)
from .guards.gate import install_gate
from ..engine.api import Engine, Prompt
from .limits import Deadline, check_context, check_max_tokens, ending_on_timeout
from .metrics import Metrics, RequestMetrics, TimedEngine
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationParams,
    ModelCard,
    ModelList,
    SamplingFields,
    error_param,
    now,
)
from ..spec.settings import LimitSettings, SamplingDefaults, Spec
from .routing import Target, Targets

log = logging.getLogger("mlxdeploy.app")

M = TypeVar("M", bound=BaseModel)


def create_app(spec: Spec, engines: Sequence[Engine], api_keys: ApiKeys | None = None) -> Quart:
    """One engine per model of `spec.catalog`. `api_keys`: the keys `load_api_keys` read at
    startup; None reads them from the spec."""
    app = Quart("mlxdeploy")
    app.config.update(
        RESPONSE_TIMEOUT=None,  # streams last as long as generation does
        BODY_TIMEOUT=60,
        MAX_CONTENT_LENGTH=spec.limits.max_body_bytes,  # 413, also for chunked bodies
        JSON_SORT_KEYS=False,
    )
    catalog = spec.catalog
    metrics = Metrics(engines)
    # TimedEngine times every generation's first token.
    timed = {engine.model_id: TimedEngine(engine, metrics) for engine in engines}
    targets = Targets(catalog, timed, spec.engine)
    drain = install_drain(app, targets.admissions)
    install_body_reader(app)  # before the gate's hooks: a 401 must not leave a body unread
    cards = model_cards(catalog, created=now())

    @app.get("/health")
    async def health() -> Response:
        body = health_report(list(timed.values()), drain.draining)
        return _json(body, 200 if body["status"] == "ok" else 503)

    @app.get("/v1/models")
    async def models() -> Response:
        return _json(ModelList(data=cards))

    @app.get("/v1/models/<path:model_id>")
    async def model(model_id: str) -> Response:
        card = next((card for card in cards if card.id == model_id), None)
        if card is None:
            raise ModelNotFound(model_id)
        return _json(card)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        payload, content_type = metrics.render(request.headers.get("Accept"))
        return Response(payload, 200, content_type=content_type)

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        body = await _parse(ChatCompletionRequest)
        return await _chat(body, targets.lookup(body.model))

    async def _chat(body: ChatCompletionRequest, target: Target) -> Response:
        return await _serve(
            body,
            target,
            lambda: target.engine.prepare(
                target.messages(body.messages, body.role_mapping), body.role_mapping
            ),
            Completion(model=target.id, include_usage=body.include_usage),
        )

    @app.post("/v1/completions")
    async def text_completions() -> Response:
        body = await _parse(CompletionRequest)
        target = targets.lookup(body.model)
        return await _serve(
            body,
            target,
            lambda: target.engine.prepare_text(target.prompt(body.prompt_text())),
            TextCompletionFormat(model=target.id, include_usage=body.include_usage),
            prompt_param="prompt",
        )

    def _endpoint_view(name: str) -> Callable[[], Awaitable[Response]]:
        async def endpoint() -> Response:
            """A preset at its own path: a chat completion request whose `model` may be left out."""
            body = await _parse(ChatCompletionRequest)
            if body.model not in (None, name):
                raise InvalidRequest(
                    f"this endpoint serves '{name}'; leave out model or send '{name}'",
                    param="model",
                )
            return await _chat(body, targets.lookup(name))

        return endpoint

    for preset in catalog.presets:
        app.add_url_rule(
            preset.path, f"endpoint:{preset.name}", _endpoint_view(preset.name), methods=["POST"]
        )

    async def _serve(
        body: SamplingFields,
        target: Target,
        prepare: Callable[[], Prompt],
        completion: Completion,
        prompt_param: str = "messages",
    ) -> Response:
        """Checks, admission, then a whole answer or a stream; shared by every route."""
        deadline = Deadline.start(spec.limits.request_timeout_seconds)
        check_max_tokens(body, spec.limits)
        target.check_ready()
        slot = target.admission.enter()
        handed_to_stream = False
        try:
            prompt = await asyncio.to_thread(prepare)
            check_context(prompt, target.engine.context_length, prompt_param)
            params = resolve_params(body, target.defaults, target.stop, spec.limits)
            # RequestTimeout at the deadline: a 504, or one error event in a stream.
            bounded = deadline.bound(target.engine)
            if body.stream:
                events = ending_on_timeout(stream(bounded, prompt, params, completion))
                handed_to_stream = True
                return _event_stream(_releasing(slot, events))
            return _json(await complete(bounded, prompt, params, completion))
        finally:
            if not handed_to_stream:
                slot.release()

    install_gate(app, spec, api_keys or load_api_keys(spec.auth, spec.base_dir))
    register_error_handlers(app)
    app.asgi_app = RequestMetrics(app.asgi_app, metrics, app.url_map)  # type: ignore[method-assign]
    return app


def model_cards(catalog: Catalog, created: int) -> list[ModelCard]:
    """What /v1/models lists: the models, then the presets with the model each runs on."""
    cards = [ModelCard(id=model.id, created=created) for model in catalog.models]
    cards += [
        ModelCard(id=p.name, created=created, parent=p.model_id, description=p.description)
        for p in catalog.presets
    ]
    return cards


def health_report(engines: Sequence[Engine], draining: bool) -> dict[str, Any]:
    """`ok` only when every model is ready; otherwise the state that keeps it from being so."""
    models = [{"id": e.model_id, "status": _status(e.state), "running": e.running} for e in engines]
    states = {e.state for e in engines}
    overall = next((s for s in ("failed", "loading", "stopped") if s in states), "ready")
    return {
        "status": "draining" if draining else _status(overall),
        "running": sum(m["running"] for m in models),
        "models": models,
    }


def _status(state: str) -> str:
    return "ok" if state == "ready" else state


async def _releasing(slot: Slot, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Hold the admission slot for as long as the stream runs."""
    try:
        async for event in events:
            yield event
    finally:
        slot.release()


def resolve_params(
    body: SamplingFields, d: SamplingDefaults, stop: Sequence[str], limits: LimitSettings
) -> GenerationParams:
    """The request's own fields win over the defaults of its model or preset; stop words add up.

    A default max_tokens is capped by limits.max_tokens (requests above it are 400).
    """
    return GenerationParams(
        max_tokens=body.max_tokens
        or body.max_completion_tokens
        or min(d.max_tokens, limits.max_tokens),
        temperature=d.temperature if body.temperature is None else body.temperature,
        top_p=d.top_p if body.top_p is None else body.top_p,
        repetition_penalty=(
            d.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty
        ),
        repetition_context_size=body.repetition_context_size or d.repetition_context_size,
        stop=tuple(dict.fromkeys((*body.stop_words(), *stop))),
    )


async def _parse(model: type[M]) -> M:
    data = decode_json(await request.get_data())
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _describe(exc)
        raise InvalidRequest(message, param=param) from None


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    """One message naming every bad field; union branches are folded into one entry."""
    by_param: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        param = error_param(tuple(error["loc"])) or "body"
        by_param.setdefault(param, []).append(error["msg"])
    message = "; ".join(
        f"{param}: {' or '.join(dict.fromkeys(msgs))}" for param, msgs in by_param.items()
    )
    first = next(iter(by_param))
    return message, None if first == "body" else first


def _json(payload: BaseModel | dict[str, Any], status: int = 200) -> Response:
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    return Response(json.dumps(data, ensure_ascii=False), status, mimetype="application/json")


def _event_stream(events: Any) -> Response:
    response = Response(events, 200, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # type: ignore[assignment]
    return response


def error_response(exc: APIError) -> Response:
    """The one error shape, with the error's own headers (Retry-After, WWW-Authenticate)."""
    response = _json(exc.body(), exc.status)
    response.headers.update(exc.headers)
    return response


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(APIError)
    async def api_error(exc: APIError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        mapped: APIError
        if status == 404:
            mapped = NotFound(f"no route for {request.method} {request.path}")
        elif status == 405:
            mapped = MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
        elif status == 413:
            mapped = PayloadTooLarge(request.max_content_length or 0)
        else:
            mapped = InvalidRequest(exc.description or exc.name)
            mapped.status = status
            mapped.code = exc.name.lower().replace(" ", "_")
        return error_response(mapped)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(APIError("internal server error"))
