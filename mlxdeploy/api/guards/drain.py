"""The app's side of a graceful shutdown: once draining, new work gets 503 while the requests
already in flight run to their end. `shutdown.py` decides when to start and how long to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from quart import Quart, Response, request

from ...spec import routes
from ..errors import Unavailable
from .admission import Admission

EXTENSION = "mlxdeploy.drain"
# Load balancers keep asking for these while the server drains; status shows what it waits for.
SERVED_WHILE_DRAINING = frozenset({routes.HEALTH.path, routes.METRICS.path, routes.STATUS.path})
POLL_SECONDS = 0.05


class Drain:
    def __init__(self, admissions: Sequence[Admission]) -> None:
        self.draining = False
        self._admissions = list(admissions)

    @property
    def in_flight(self) -> int:
        """Generation requests not finished yet; a stream counts until its last event."""
        return sum(admission.in_flight for admission in self._admissions)

    def start(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float, interrupt: asyncio.Event | None = None) -> bool:
        """Wait until nothing is in flight: True, or False at the timeout or the interrupt."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight > 0:
            if loop.time() >= deadline or (interrupt is not None and interrupt.is_set()):
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True


def install_drain(app: Quart, admissions: Sequence[Admission]) -> Drain:
    """Refuse new requests with 503 while draining, and close their connections after."""
    drain = Drain(admissions)
    app.extensions[EXTENSION] = drain

    @app.before_request
    async def refuse_while_draining() -> None:
        if drain.draining and request.path not in SERVED_WHILE_DRAINING:
            raise Unavailable(
                "the server is shutting down; send the request to another one",
                code="shutting_down",
            )

    @app.after_request
    async def close_while_draining(response: Response) -> Response:
        if drain.draining:  # keep-alive connections would otherwise outlive the drain
            response.headers["Connection"] = "close"
        return response

    return drain


def drain_of(app: Quart) -> Drain:
    drain = app.extensions[EXTENSION]
    assert isinstance(drain, Drain)
    return drain
