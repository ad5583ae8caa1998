"""ASGI-level pieces of the app: what must happen when a request ends, whether or not Quart
ever started its response."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]
SCOPE_KEY = "mlxdeploy.cleanup"


class RequestScope:
    """ASGI middleware: each HTTP request gets an exit stack in its scope; what a handler puts
    there (its unclaimed slot) is closed when the request's ASGI call returns or is
    cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        async with contextlib.AsyncExitStack() as stack:
            scope[SCOPE_KEY] = stack  # type: ignore[literal-required]
            await self._app(scope, receive, send)


def request_exit_stack(scope: Any) -> contextlib.AsyncExitStack:
    stack = scope[SCOPE_KEY]
    assert isinstance(stack, contextlib.AsyncExitStack)
    return stack
