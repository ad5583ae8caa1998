"""GET /v1/status: the requests in flight on each model (what `mlxdeploy status` shows).

Each request is named by its request id (the `X-Request-ID` of its response), which the API
gives the engine as the request's label."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from quart import Response

from ..engine.api import EngineState, RequestInfo, RequestState
from ..engine.residency import Residents, Tenant
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
    memory_bytes: int | None = None  # its weights: measured once loaded, else estimated
    pinned: bool = False
    load: str = "eager"  # eager or on_demand
    loads: int = 0  # loads on demand since start
    evictions: int = 0  # unloads to make room for another model


class StatusReport(BaseModel):
    object: Literal["status"] = "status"
    draining: bool
    models: list[ModelStatus]
    memory_budget_bytes: int | None = None
    memory_used_bytes: int | None = None  # the weights of the models in memory


def model_status(tenant: Tenant) -> ModelStatus:
    engine = tenant.engine
    requests = [request_status(info) for info in engine.requests()]
    queued = sum(1 for r in requests if r.state == "queued")
    return ModelStatus(
        id=engine.model_id,
        state=engine.state,
        running=len(requests) - queued,
        queued=queued,
        requests=requests,
        memory_bytes=tenant.size or None,
        pinned=tenant.pinned,
        load=tenant.residency.load,
        loads=tenant.loads,
        evictions=tenant.evictions,
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


async def status(residents: Residents, drain: Drain) -> Response:
    report = StatusReport(
        draining=drain.draining,
        models=[model_status(tenant) for tenant in residents],
        memory_budget_bytes=residents.budget,
        memory_used_bytes=residents.used,
    )
    return json_response(report)
