"""Serve a spec under Hypercorn: bind, load the models in the background, stop on signals.

The listening socket is bound (and listening) before any model loads, so a busy port is
reported at once, and port 0 becomes the port the kernel chose, which the ready line names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Sockets

from ..api.app import create_app
from ..api.guards.auth import ApiKeys
from ..api.guards.drain import drain_of
from ..device import device_memory
from ..engine.residency import residents_of
from ..engine.weights.blas import load_fast_blas
from ..engine.weights.progress import progress_for
from ..spec.deployment import Deployment
from ..spec.settings import Spec
from .gil import hand_back_the_gil_sooner
from .logs import ACCESS_LOGGER, AccessLogger
from .shutdown import (
    STOP_TIMEOUT_SECONDS,
    TrackedConfig,
    drain_and_abort,
    install_signal_handlers,
    stop_engines,
)

if TYPE_CHECKING:
    from ..engine.engine import MLXEngine
    from ..engine.peers import Peers

log = logging.getLogger("mlxdeploy.server")

# Bursts of clients queue in the kernel instead of being reset (mlx_lm.server listens with 5).
LISTEN_BACKLOG = 4096
LOAD_POLL_SECONDS = 0.1
DISTRIBUTED = "the distributed model"  # how the errors of a distributed model begin
LOST_RANK = f"{DISTRIBUTED} stopped: another rank exited"
LOST_STOP_SECONDS = 2.0


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


def cannot_listen(spec: Spec, exc: OSError) -> ServeResult:
    where = address(spec.host, spec.port)
    return ServeResult(1, f"cannot listen on {where}: {exc.strerror or exc}", "port")


def free_port_of(spec: Spec) -> int:
    """The port the spec names (port 0: one the kernel picks), found free now; OSError when it
    is not. For a server that another process binds later (Ray Serve's proxy)."""
    sockets = listen(hypercorn_config(spec))
    try:
        return bound_port(sockets, spec.port)
    finally:
        close_sockets(sockets)


async def serve(
    deployment: Deployment, api_keys: ApiKeys | None = None, peers: Peers | None = None
) -> ServeResult:
    """`peers`: this process is rank 0 of a distributed model (serve/sharded/)."""
    spec = deployment.spec
    config = hypercorn_config(spec)
    try:
        sockets = listen(config)
    except OSError as exc:
        return cannot_listen(spec, exc)
    try:
        port = bound_port(sockets, spec.port)
        return await _serve_on(deployment, api_keys, config, port, peers)
    finally:
        close_sockets(sockets)


async def _serve_on(
    deployment: Deployment,
    api_keys: ApiKeys | None,
    config: TrackedConfig,
    port: int,
    peers: Peers | None,
) -> ServeResult:
    spec, loop = deployment.spec, asyncio.get_running_loop()
    lost: asyncio.Event | None = None
    if peers is None:
        signals = install_signal_handlers(loop)
    else:  # rank 0: `up` asks for a drain with SIGINT; mlx.launch's SIGTERM says a rank ended
        signals = install_signal_handlers(loop, (signal.SIGINT,))
        lost = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, lost.set)
    stop = signals.requested
    engines = start_engines(deployment, loop, peers)
    residents = residents_of(deployment.catalog.models, engines, spec.memory, device_memory())
    ready_line = f"serving {', '.join(deployment.catalog.ids)} on http://{address(spec.host, port)}"
    if peers is not None:
        ready_line += f" ({peers.size} ranks, {peers.strategy} parallel)"
    stall = spec.distributed.stall_timeout_seconds if spec.distributed else None
    watcher = asyncio.create_task(_watch_load(engines, stop, ready_line, lost, stall))
    app = create_app(deployment, engines, api_keys, residents)

    async def drained() -> None:  # Hypercorn stops serving when this returns
        await stop.wait()
        timeout = spec.server.shutdown_timeout_seconds
        await drain_and_abort(drain_of(app), engines, config, timeout, signals.forced)

    try:
        await hypercorn_serve(app, config, shutdown_trigger=drained)  # type: ignore[arg-type]
    finally:
        stalled = watcher.result() if watcher.done() and not watcher.cancelled() else None
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        # A rank lost in a collective may never give its generation thread back.
        gone = stalled is not None or (lost is not None and lost.is_set())
        await stop_engines(
            engines, signals.forced, LOST_STOP_SECONDS if gone else STOP_TIMEOUT_SECONDS
        )
    # A model loaded on demand that failed has answered its requests with the failure.
    eager = [e for m, e in zip(deployment.catalog.models, engines, strict=True)
             if m.residency.load == "eager"]  # fmt: skip
    error = next((engine.error for engine in eager if engine.error), None) or stalled
    if lost is not None and lost.is_set():
        error = error or LOST_RANK
    if error is None:
        return ServeResult(0)
    return ServeResult(1, error, "distributed" if error.startswith(DISTRIBUTED) else "model")


def start_engines(
    deployment: Deployment, loop: asyncio.AbstractEventLoop, peers: Peers | None = None
) -> list[MLXEngine]:
    """One engine per model, loading in the background and delivering on `loop`."""
    if peers is None:  # a rank has chosen its BLAS before it reached for mx.distributed
        log.info(load_fast_blas().describe())  # before MLX is imported
    hand_back_the_gil_sooner()
    from ..engine.engine import MLXEngine  # the only place the server reaches for MLX

    # Each model generates on its own thread; they load one at a time (peak memory is one
    # load's, and models sharing a GGUF file convert it once).
    load_lock = threading.Lock()
    spec = deployment.spec
    progress = progress_for(spec.server.log_format)  # bars on a terminal, else log lines
    engines = [
        MLXEngine(model, load_lock=load_lock, progress=progress, peers=peers)
        for model in deployment.catalog.models
    ]
    for model, engine in zip(deployment.catalog.models, engines, strict=True):
        engine.start(loop, load=model.residency.load == "eager")
    return engines


async def _watch_load(
    engines: list[MLXEngine],
    stop: asyncio.Event,
    ready_line: str,
    lost: asyncio.Event | None,
    stall: float | None = None,
) -> str | None:
    """Stop at the first model that fails to load; say where the server is once all are ready.
    `lost` (rank 0 of a distributed model): a rank that ended, a generation thread that ended,
    or a turn of the ranks longer than `stall` seconds stops the server too; the ranks cannot
    generate again. Returns why it stopped a stalled server.

    It polls, rather than waiting in threads, so that no thread outlives a shutdown."""
    while True:
        states = {engine.state for engine in engines}
        if "failed" in states or (lost is not None and lost.is_set()):
            if lost is not None:
                _end_generation(engines)
            stop.set()
            return None
        if "loading" not in states:
            break
        await asyncio.sleep(LOAD_POLL_SECONDS)
    # Shown at any --log-level: it names the port (`--port 0`) that clients and tools wait for.
    log.log(max(logging.INFO, log.getEffectiveLevel()), ready_line)
    while lost is not None:  # during a drain too: its requests must not wait on a lost rank
        stalled = _stall(engines, stall)
        if stalled or lost.is_set() or any(engine.state == "failed" for engine in engines):
            _end_generation(engines, stalled)
            stop.set()
            return stalled
        await asyncio.sleep(LOAD_POLL_SECONDS)
    return None


def _stall(engines: list[MLXEngine], stall: float | None) -> str | None:
    """Why the ranks are taken as lost when a turn has lasted longer than `stall` seconds."""
    if stall is None or not any(engine.stalled_seconds() > stall for engine in engines):
        return None
    return f"{DISTRIBUTED} stopped: a rank stopped answering (a turn took over {stall:g} s)"


def _end_generation(engines: list[MLXEngine], reason: str | None = None) -> None:
    """A distributed model that lost a rank: every request in flight ends with the reason now
    (its generation thread may be stuck in a collective that never returns)."""
    reason = reason or next((e.error for e in engines if e.error), None) or LOST_RANK
    log.error("stopping: %s", reason)
    for engine in engines:
        engine.abort(reason)
