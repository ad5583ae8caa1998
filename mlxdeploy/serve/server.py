"""Serve a spec under Hypercorn: bind, load the models in the background, stop on signals."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypercorn.asyncio import serve as hypercorn_serve

from ..api.app import create_app
from ..api.guards.auth import ApiKeys
from ..api.guards.drain import drain_of
from ..engine.weights.blas import load_fast_blas
from ..spec.settings import Spec
from .logs import ACCESS_LOGGER, AccessLogger
from .shutdown import TrackedConfig, drain_and_abort, install_signal_handlers

if TYPE_CHECKING:
    from ..engine.engine import MLXEngine

log = logging.getLogger("mlxdeploy.server")

# Bursts of clients queue in the kernel instead of being reset (mlx_lm.server listens with 5).
LISTEN_BACKLOG = 4096
LOAD_POLL_SECONDS = 0.1


@dataclass
class ServeResult:
    exit_code: int
    error: str | None = None


def hypercorn_config(spec: Spec) -> TrackedConfig:
    config = TrackedConfig()
    config.bind = [f"[{spec.host}]:{spec.port}" if ":" in spec.host else f"{spec.host}:{spec.port}"]
    config.backlog = LISTEN_BACKLOG
    # The drain (shutdown.py) has already waited for requests; this bounds closing what is left.
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = 75.0
    config.logger_class = AccessLogger  # access lines without headers; JSON fields
    config.accesslog = logging.getLogger(ACCESS_LOGGER) if spec.server.access_log else None
    config.errorlog = logging.getLogger("mlxdeploy.server")
    return config


async def serve(spec: Spec, api_keys: ApiKeys | None = None) -> ServeResult:
    log.info(load_fast_blas().describe())  # before MLX is imported
    from ..engine.engine import MLXEngine  # the only place the server reaches for MLX

    loop = asyncio.get_running_loop()
    signals = install_signal_handlers(loop)
    stop = signals.requested
    # Each model generates on its own thread; they load one at a time (peak memory is one
    # load's, and models sharing a GGUF file convert it once).
    load_lock = threading.Lock()
    engines = [MLXEngine(model, spec.engine, load_lock=load_lock) for model in spec.catalog.models]
    for engine in engines:
        engine.start(loop)
    watcher = asyncio.create_task(_watch_load(spec, engines, stop))
    app = create_app(spec, engines, api_keys)
    config = hypercorn_config(spec)

    async def drained() -> None:  # Hypercorn stops serving when this returns
        await stop.wait()
        timeout = spec.server.shutdown_timeout_seconds
        await drain_and_abort(drain_of(app), engines, config, timeout, signals.forced)

    try:
        await hypercorn_serve(app, config, shutdown_trigger=drained)  # type: ignore[arg-type]
    except OSError as exc:
        return ServeResult(1, f"cannot listen on {spec.host}:{spec.port}: {exc.strerror or exc}")
    finally:
        watcher.cancel()
        await asyncio.gather(*(asyncio.to_thread(engine.stop) for engine in engines))
    error = next((engine.error for engine in engines if engine.error), None)
    return ServeResult(1, error) if error else ServeResult(0)


async def _watch_load(spec: Spec, engines: list[MLXEngine], stop: asyncio.Event) -> None:
    """Stop at the first model that fails to load; say where the server is once all are ready.

    It polls, rather than waiting in threads, so that no thread outlives a shutdown."""
    while True:
        states = {engine.state for engine in engines}
        if "failed" in states:
            stop.set()
            return
        if "loading" not in states:
            break
        await asyncio.sleep(LOAD_POLL_SECONDS)
    ids = ", ".join(spec.catalog.ids)
    log.info("serving %s on http://%s:%d", ids, spec.host, spec.port)
