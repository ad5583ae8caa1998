"""Logging for `mlxdeploy up`: text for people or one JSON object per line, and the access log.

`configure_logging` is the only place handlers are installed. The access log is written by
`AccessLogger` (Hypercorn's logger class) from the scope and the response summary, and names
only safe fields: Hypercorn's own access atoms carry every request header (Authorization
included) and every environment variable (API keys included).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

from hypercorn.logging import Logger as HypercornLogger
from hypercorn.typing import ResponseSummary, WWWScope

from ..api.guards.request_ids import HEADER
from ..api.guards.request_ids import SCOPE_KEY as REQUEST_ID_KEY
from ..api.unused import logged_unused
from ..spec.settings import ServerSettings

ACCESS_LOGGER = "mlxdeploy.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "unused", "replica")
_REQUEST_ID_HEADER = HEADER.lower().encode()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and access fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ACCESS_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is at each record: while a progress bar is drawn on a
    terminal (engine/weights/progress.py), Rich stands in for stderr and prints log lines
    above the bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def exit_now(code: int) -> NoReturn:
    """End a server process with `code`. The interpreter's own teardown can abort in MLX's
    native threads (`terminate called without an active exception`, exit -6); a server that
    has stopped has nothing left to finalize but its logs."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def configure_logging(settings: ServerSettings, level: str) -> None:
    """Install the one root handler; every logger (app, engine, access, Hypercorn) uses it."""
    handler = StderrHandler()
    json_lines = settings.log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(json_lines)  # warnings.warn() would print plain text otherwise


class AccessLogger(HypercornLogger):
    """Hypercorn's logger with an access line that has structured fields and no secrets."""

    async def access(
        self, request: WWWScope, response: ResponseSummary | None, request_time: float
    ) -> None:
        if self.access_logger is None:
            return
        fields = access_fields(request, response, request_time)
        self.access_logger.info(render_access(request, fields), extra=fields)


def access_fields(
    request: WWWScope, response: ResponseSummary | None, request_time: float
) -> dict[str, Any]:
    """`status` is None when the client went away before the response was complete; the
    request id then comes from the scope, where the app put it. `unused` (the request fields
    accepted but not used, comma-separated) is there only when there are some."""
    headers = dict(response.get("headers", [])) if response is not None else {}
    sent = headers.get(_REQUEST_ID_HEADER, b"").decode("latin-1")
    request_id = sent or request.get(REQUEST_ID_KEY) or None
    fields = {
        "request_id": request_id,
        "method": request.get("method", "GET"),
        "path": request.get("path", ""),
        "status": response["status"] if response is not None else None,
        "duration_ms": round(request_time * 1000, 3),
    }
    unused = logged_unused(request)
    return fields if unused is None else {**fields, "unused": unused}


def render_access(request: WWWScope, fields: dict[str, Any]) -> str:
    client = request.get("client")
    peer = f"{client[0]}:{client[1]}" if client and len(client) == 2 else "-"
    version = request.get("http_version", "1.1")
    status = fields["status"] if fields["status"] is not None else "-"
    line = (
        f'{peer} "{fields["method"]} {fields["path"]} HTTP/{version}" {status} '
        f"{fields['duration_ms']:.1f}ms id={fields['request_id'] or '-'}"
    )
    if fields.get("unused"):
        line = f"{line} unused={fields['unused']}"
    return f"{line} replica={fields['replica']}" if fields.get("replica") else line
