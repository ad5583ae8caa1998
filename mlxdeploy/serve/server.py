"""Serve a spec under Hypercorn: bind, load the models in the background, stop on signals.

The listening socket is bound (and listening) before any model loads, so a busy port is
reported at once, and port 0 becomes the port the kernel chose, which the ready line names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Sockets

from ..api.app import create_app
from ..api.guards.auth import ApiKeys
from ..api.guards.drain import drain_of
from ..engine.weights.blas import load_fast_blas
from ..engine.weights.progress import progress_for
from ..spec.settings import Spec
from .gil import hand_back_the_gil_sooner
from .logs import ACCESS_LOGGER, AccessLogger
from .shutdown import TrackedConfig, drain_and_abort, install_signal_handlers, stop_engines

if TYPE_CHECKING:
    from ..engine.engine import MLXEngine
    from ..engine.peers import Peers

log = logging.getLogger("mlxdeploy.server")

# Bursts of clients queue in the kernel instead of being reset (mlx_lm.server listens with 5).
LISTEN_BACKLOG = 4096
LOAD_POLL_SECONDS = 0.1


@dataclass
class ServeResult:
    exit_code: int
    error: str | None = None
    field: str = "model"  # the spec field the error is about


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(spec: Spec) -> TrackedConfig:
    config = TrackedConfig()
    config.bind = [address(spec.host, spec.port)]
    config.backlog = LISTEN_BACKLOG
    # The drain (shutdown.py) has already waited for requests; this bounds closing what is left.
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = 75.0
    config.logger_class = AccessLogger  # access lines without headers; JSON fields
    config.accesslog = logging.getLogger(ACCESS_LOGGER) if spec.server.access_log else None
    config.errorlog = logging.getLogger("mlxdeploy.server")
    return config


def listen(config: TrackedConfig) -> Sockets:
    """Bind and listen now; Hypercorn serves these same sockets (TrackedConfig keeps them)."""
    sockets = config.create_sockets()
    try:
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
    except OSError:
        close_sockets(sockets)
        raise
    return sockets


def close_sockets(sockets: Sockets) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


def bound_port(sockets: Sockets, requested: int) -> int:
    for sock in sockets.insecure_sockets:
        return int(sock.getsockname()[1])
    return requested


async def serve(
    spec: Spec, api_keys: ApiKeys | None = None, peers: Peers | None = None
) -> ServeResult:
    """`peers`: this process is rank 0 of a distributed model (serve/sharded/)."""
    config = hypercorn_config(spec)
    try:
        sockets = listen(config)
    except OSError as exc:
        where = address(spec.host, spec.port)
        return ServeResult(1, f"cannot listen on {where}: {exc.strerror or exc}", "port")
    try:
        return await _serve_on(spec, api_keys, config, bound_port(sockets, spec.port), peers)
    finally:
        close_sockets(sockets)


async def _serve_on(
    spec: Spec, api_keys: ApiKeys | None, config: TrackedConfig, port: int, peers: Peers | None
) -> ServeResult:
    loop = asyncio.get_running_loop()
    signals = install_signal_handlers(loop)
    stop = signals.requested
    engines = start_engines(spec, loop, peers)
    ready_line = f"serving {', '.join(spec.catalog.ids)} on http://{address(spec.host, port)}"
    if peers is not None:
        ready_line += f" ({peers.size} ranks, {peers.strategy} parallel)"
    watcher = asyncio.create_task(_watch_load(engines, stop, ready_line, peers is not None))
    app = create_app(spec, engines, api_keys)

    async def drained() -> None:  # Hypercorn stops serving when this returns
        await stop.wait()
        timeout = spec.server.shutdown_timeout_seconds
        await drain_and_abort(drain_of(app), engines, config, timeout, signals.forced)

    try:
        await hypercorn_serve(app, config, shutdown_trigger=drained)  # type: ignore[arg-type]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await stop_engines(engines, signals.forced)
    error = next((engine.error for engine in engines if engine.error), None)
    return ServeResult(1, error) if error else ServeResult(0)


def start_engines(
    spec: Spec, loop: asyncio.AbstractEventLoop, peers: Peers | None = None
) -> list[MLXEngine]:
    """One engine per model, loading in the background and delivering on `loop`."""
    log.info(load_fast_blas().describe())  # before MLX is imported
    hand_back_the_gil_sooner()
    from ..engine.engine import MLXEngine  # the only place the server reaches for MLX

    # Each model generates on its own thread; they load one at a time (peak memory is one
    # load's, and models sharing a GGUF file convert it once).
    load_lock = threading.Lock()
    progress = progress_for(spec.server.log_format)  # bars on a terminal, else log lines
    engines = [
        MLXEngine(model, spec.engine, load_lock=load_lock, progress=progress, peers=peers)
        for model in spec.catalog.models
    ]
    for engine in engines:
        engine.start(loop)
    return engines


async def _watch_load(
    engines: list[MLXEngine], stop: asyncio.Event, ready_line: str, fatal: bool = False
) -> None:
    """Stop at the first model that fails to load; say where the server is once all are ready.
    `fatal`: a generation thread that ends later stops the server too (a distributed model
    that lost a rank cannot generate again).

    It polls, rather than waiting in threads, so that no thread outlives a shutdown."""
    while True:
        states = {engine.state for engine in engines}
        if "failed" in states:
            stop.set()
            return
        if "loading" not in states:
            break
        await asyncio.sleep(LOAD_POLL_SECONDS)
    # Shown at any --log-level: it names the port (`--port 0`) that clients and tools wait for.
    log.log(max(logging.INFO, log.getEffectiveLevel()), ready_line)
    while fatal and not stop.is_set():
        if any(engine.state == "failed" for engine in engines):
            log.error("stopping: %s", next((e.error for e in engines if e.error), "failed"))
            stop.set()
            return
        await asyncio.sleep(LOAD_POLL_SECONDS)
