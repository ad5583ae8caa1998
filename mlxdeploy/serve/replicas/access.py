"""The replica's side of each request: its id in a response header and in the access line.

Ray's proxy, not Hypercorn, talks HTTP to clients here, so the replica writes the access log
itself (the same fields and line as `up` on one process, plus the replica). The proxy sets
the request's `X-Request-ID` (the client's own, or a new one) before the app sees it, so the
app echoes that id; the proxy adds the header to the response again, so the app's copy is
left out rather than sent twice."""

from __future__ import annotations

import logging
import time
from typing import Any

from ...api.guards.request_ids import HEADER as REQUEST_ID_HEADER
from ..logs import ACCESS_LOGGER, access_fields, render_access
from .options import REPLICA_HEADER

Scope = dict[str, Any]
Message = dict[str, Any]
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()


class ReplicaAccess:
    """ASGI middleware: tags each HTTP response with the replica and logs one access line."""

    def __init__(self, app: Any, replica_id: str, access_log: bool = True) -> None:
        self.app = app
        self.replica_id = replica_id
        self._header = (REPLICA_HEADER.lower().encode(), replica_id.encode())
        self._log = logging.getLogger(ACCESS_LOGGER) if access_log else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        summary: dict[str, Any] | None = None

        async def tagged(message: Message) -> None:
            nonlocal summary
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _REQUEST_ID]
                summary = {"status": message["status"], "headers": message.get("headers", [])}
                message = {**message, "headers": [*headers, self._header]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            self._access(scope, summary, time.perf_counter() - started)

    def _access(self, scope: Scope, summary: dict[str, Any] | None, seconds: float) -> None:
        if self._log is None:
            return
        fields = {**access_fields(scope, summary, seconds), "replica": self.replica_id}  # type: ignore[arg-type]
        self._log.info(render_access(scope, fields), extra=fields)  # type: ignore[arg-type]
