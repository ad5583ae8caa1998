"""Server-Sent Events: one event per chunk, keep-alive comments, the streaming response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from pydantic import BaseModel
from quart import Response

KEEP_ALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"


def sse_event(model: BaseModel) -> str:
    """One Server-Sent Event carrying `model` as compact JSON."""
    payload = model.model_dump()
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def event_stream(events: AsyncIterator[str]) -> Response:
    response = Response(events, 200, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # type: ignore[assignment]
    return response
