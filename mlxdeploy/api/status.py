"""GET /v1/status: the requests in flight on each model (what `mlxdeploy status` shows).

Each request is named by its request id (the `X-Request-ID` of its response), which the API
gives the engine as the request's label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel
from quart import Response

from ..engine.api import Engine, EngineState, RequestInfo, RequestState
from .errors import json_response
from .guards.drain import Drain


class RequestStatus(BaseModel):
    id: str  # the request id
    state: RequestState  # queued, prefill (reading its prompt) or decoding
    age_seconds: float  # since it reached the model
    prompt_tokens: int
    completion_tokens: int  # so far, all choices together
    choices: int = 1


class ModelStatus(BaseModel):
    id: str
    state: EngineState
    running: int  # reading their prompt or decoding
    queued: int  # waiting for a batch slot
    requests: list[RequestStatus]  # oldest first


class StatusReport(BaseModel):
    object: Literal["status"] = "status"
    draining: bool
    models: list[ModelStatus]


def model_status(engine: Engine) -> ModelStatus:
    requests = [request_status(info) for info in engine.requests()]
    queued = sum(1 for r in requests if r.state == "queued")
    return ModelStatus(
        id=engine.model_id,
        state=engine.state,
        running=len(requests) - queued,
        queued=queued,
        requests=requests,
    )


def request_status(info: RequestInfo) -> RequestStatus:
    return RequestStatus(
        id=info.label,
        state=info.state,
        age_seconds=round(info.age_seconds, 3),
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        choices=info.choices,
    )


async def status(engines: Sequence[Engine], drain: Drain) -> Response:
    report = StatusReport(draining=drain.draining, models=[model_status(e) for e in engines])
    return json_response(report)
