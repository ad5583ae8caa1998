"""The app in-process: an httpx transport that calls the Quart app's ASGI entry point on an
event loop thread, with engines started on that same loop. No server process, no port.

Bodies stream as the app sends them (SSE tests read events one by one), and closing a
response early tells the app the client went away (`http.disconnect`), as Hypercorn does.
Both the test's `httpx.Client` and the official `openai` client run on it; `httpx2_client`
gives the same transport to clients built on httpx2 (the official `anthropic` client).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import httpx2

from mlxdeploy.api.app import create_app
from mlxdeploy.api.guards.auth import ApiKeys
from mlxdeploy.engine.api import Engine
from mlxdeploy.spec import Deployment

T = TypeVar("T")
BASE_URL = "http://mlxdeploy.test"
_END = object()


class LoopThread:
    """An asyncio loop running on its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class _Exchange:
    """One request's ASGI conversation, seen from both threads."""

    start: Future[tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=Future)
    chunks: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _Body:
    """The response body as the app sends it; `error` is the client library's own."""

    error: type[Exception] = httpx.RemoteProtocolError

    def __init__(self, exchange: _Exchange, loop: asyncio.AbstractEventLoop) -> None:
        self._exchange = exchange
        self._loop = loop

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self._exchange.chunks.get(timeout=300)
            if chunk is _END:
                return
            if isinstance(chunk, BaseException):
                raise self.error(f"the app failed mid-body: {chunk!r}")
            yield chunk

    def close(self) -> None:  # the client went away, or read to the end
        self._loop.call_soon_threadsafe(self._exchange.gone.set)


class _Transport:
    """Calls the app for each request (`handle_request`); made concrete per client library."""

    http: Any = httpx
    body: type[_Body] = _Body

    def __init__(self, app: Any, loop: LoopThread) -> None:
        self._app = app
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        exchange = self._loop.run(self._open(request, body))
        status, headers = exchange.start.result(timeout=300)
        return self.http.Response(  # type: ignore[no-any-return]
            status, headers=headers, stream=self.body(exchange, self._loop.loop), request=request
        )

    async def _open(self, request: httpx.Request, body: bytes) -> _Exchange:
        exchange = _Exchange()
        exchange.task = asyncio.create_task(self._call(exchange, _scope(request), body))
        return exchange

    async def _call(self, exchange: _Exchange, scope: dict[str, Any], body: bytes) -> None:
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await exchange.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.start.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    exchange.chunks.put(bytes(message["body"]))
                if not message.get("more_body", False):
                    exchange.chunks.put(_END)

        try:
            await self._app(scope, receive, send)
        except BaseException as exc:  # surfaced to the test, never swallowed
            if not exchange.start.done():
                exchange.start.set_exception(exc)
            exchange.chunks.put(exc)
            raise
        finally:
            exchange.chunks.put(_END)


class _HttpxBody(_Body, httpx.SyncByteStream):
    pass


class _Httpx2Body(_Body, httpx2.SyncByteStream):
    error = httpx2.RemoteProtocolError


class ASGITransport(_Transport, httpx.BaseTransport):
    body = _HttpxBody


class ASGITransport2(_Transport, httpx2.BaseTransport):
    http = httpx2
    body = _Httpx2Body


def _scope(request: httpx.Request) -> dict[str, Any]:
    url = request.url
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "client": ("127.0.0.1", 50000),
        "server": ("mlxdeploy.test", 80),
        "extensions": {},
    }


@dataclass
class InProcessApp:
    """A spec's app with its engines, served in-process; `http` is a client for it."""

    deployment: Deployment
    engines: Sequence[Engine]
    app: Any
    loop: LoopThread
    http: httpx.Client

    def client(self, **kwargs: Any) -> httpx.Client:
        """Another client of the same app (other headers, timeouts)."""
        transport = ASGITransport(self.app, self.loop)
        return httpx.Client(transport=transport, base_url=BASE_URL, **kwargs)

    def httpx2_client(self, **kwargs: Any) -> httpx2.Client:
        """A client of the same app for libraries built on httpx2."""
        transport = ASGITransport2(self.app, self.loop)
        return httpx2.Client(transport=transport, base_url=BASE_URL, **kwargs)

    def openai(self, **kwargs: Any) -> Any:
        from openai import OpenAI

        kwargs.setdefault("api_key", "none")
        return OpenAI(base_url=f"{BASE_URL}/v1", http_client=self.client(timeout=120), **kwargs)


@contextlib.contextmanager
def serve_in_process(
    deployment: Deployment,
    make_engines: Callable[[asyncio.AbstractEventLoop], Sequence[Engine]],
    api_keys: ApiKeys | None = None,
) -> Iterator[InProcessApp]:
    """`make_engines(loop)` builds (and starts) the engines on the app's loop."""
    loop = LoopThread()
    try:
        engines = make_engines(loop.loop)
        app = loop.run(_build(deployment, engines, api_keys))
        with httpx.Client(
            transport=ASGITransport(app, loop), base_url=BASE_URL, timeout=120
        ) as http:
            yield InProcessApp(deployment, engines, app, loop, http)
        loop.run(app.shutdown())
    finally:
        for engine in engines if "engines" in locals() else ():
            stop = getattr(engine, "stop", None)
            if stop is not None:
                stop()
        loop.close()


async def _build(
    deployment: Deployment, engines: Sequence[Engine], api_keys: ApiKeys | None
) -> Any:
    app = create_app(deployment, engines, api_keys)
    await app.startup()
    return app
