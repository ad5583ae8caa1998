"""Server-Sent Events: one event per chunk, keep-alive comments, the streaming response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel
from quart import Response

KEEP_ALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"


def sse_event(model: BaseModel) -> str:
    """One Server-Sent Event carrying `model` as compact JSON."""
    payload = model.model_dump()
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def typed_event(kind: str, payload: dict[str, Any]) -> str:
    """A named Server-Sent Event (`event: kind`) whose JSON data carries `"type": kind` first,
    as the Responses and Messages APIs send them."""
    data = json.dumps({"type": kind, **payload}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n"


def event_stream(events: AsyncIterator[str]) -> Response:
    response = Response(events, 200, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # type: ignore[assignment]
    return response


class TextEvents:
    """The events of one stream's text deltas, all rendered from one template: they are sent
    once per token per stream. Equal to rendering `chunk(text)` for each text."""

    _MARKER = "\u0000MARK\u0000"

    def __init__(self, chunk: Callable[[str], BaseModel]) -> None:
        rendered = sse_event(chunk(self._MARKER))
        self._head, self._tail = rendered.split(json.dumps(self._MARKER, ensure_ascii=False))

    def __call__(self, text: str) -> str:
        return f"{self._head}{json.dumps(text, ensure_ascii=False)}{self._tail}"


class ChoiceTextEvents:
    """TextEvents for each choice of one answer, each template made on its choice's first
    delta: `chunk(text, index)` renders choice `index`'s delta."""

    def __init__(self, chunk: Callable[[str, int], BaseModel]) -> None:
        self._chunk = chunk
        self._by_index: dict[int, TextEvents] = {}

    def __call__(self, text: str, index: int) -> str:
        events = self._by_index.get(index)
        if events is None:
            events = self._by_index[index] = TextEvents(lambda t: self._chunk(t, index))
        return events(text)
