"""Graceful shutdown on SIGTERM/SIGINT, in this order:

1. the app drains: `/health` answers 503 `draining`, new requests get 503;
2. the listening sockets close: new connections are refused, accepted ones are still served;
3. requests in flight get up to `server.shutdown_timeout_seconds` to finish; the log says so,
   and that a second Ctrl-C (or SIGTERM) cuts the wait short;
4. past it, or at the second signal, the engines end what is left: each stream gets one error
   event and ends;
5. Hypercorn closes the remaining connections, and only then do the engines stop (server.py):
   a model still loading gets up to STOP_TIMEOUT_SECONDS to finish, or until a second signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hypercorn.config import Config, Sockets

from ..api.guards.drain import Drain
from ..engine.api import Engine

if TYPE_CHECKING:
    from ..engine.engine import MLXEngine

log = logging.getLogger("mlxdeploy.server")

ABORT_GRACE_SECONDS = 5.0  # for aborted requests to send their error and end
STOP_TIMEOUT_SECONDS = 30.0  # for a model still loading to finish, so its thread can end
POLL_SECONDS = 0.05
SHUTDOWN_MESSAGE = "the server is shutting down"
AGAIN = "Ctrl-C again (or a second SIGTERM) stops now"


def requests(n: int) -> str:
    return f"{n} request{'' if n == 1 else 's'}"


class TrackedConfig(Config):
    """Hypercorn's Config, keeping the sockets it binds so that a drain can close them early.

    They are bound once: the server binds them before its models load (server.py), and
    Hypercorn, asking again when it starts serving, gets the same sockets."""

    sockets: Sockets | None = None

    def create_sockets(self) -> Sockets:
        if self.sockets is None:
            self.sockets = super().create_sockets()
        return self.sockets


@dataclass
class ShutdownSignals:
    requested: asyncio.Event = field(default_factory=asyncio.Event)
    forced: asyncio.Event = field(default_factory=asyncio.Event)  # a second signal

    def receive(self) -> None:
        (self.forced if self.requested.is_set() else self.requested).set()


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop,
    which: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> ShutdownSignals:
    signals = ShutdownSignals()
    for sig in which:
        loop.add_signal_handler(sig, signals.receive)
    return signals


async def drain_and_abort(
    drain: Drain,
    engines: Sequence[Engine],
    config: TrackedConfig,
    timeout: float,
    forced: asyncio.Event,
) -> None:
    """Steps 1-4 above; returns when no request is in flight (or the abort grace ran out)."""
    drain.start()
    if config.sockets is not None:
        stop_listening(config.sockets)
    if drain.in_flight:
        log.warning(
            "shutting down: waiting up to %g s for %s in flight to finish; %s",
            timeout,
            requests(drain.in_flight),
            AGAIN,
        )
    else:
        log.info("shutting down: no requests in flight")
    if await drain.wait_idle(timeout, forced):
        return
    why = "a second signal" if forced.is_set() else f"{timeout:g} s passed"
    log.warning("shutting down now (%s): ending %s in flight", why, requests(drain.in_flight))
    for engine in engines:
        engine.abort(SHUTDOWN_MESSAGE)
    if not await drain.wait_idle(ABORT_GRACE_SECONDS):
        log.warning("shutdown: %s did not end after the abort", requests(drain.in_flight))


async def stop_engines(
    engines: Sequence[MLXEngine], forced: asyncio.Event, timeout: float = STOP_TIMEOUT_SECONDS
) -> bool:
    """Step 5's end: ask every generation thread to stop and wait for them, up to `timeout`.
    A thread that generates stops after its current step; one that loads a model cannot be
    interrupted, so a second signal stops the wait for it (the process may exit without its
    daemon thread). True when every thread ended."""
    for engine in engines:
        engine.stop(timeout=0)  # only asks; the wait is here, where a signal can cut it
    loading = [engine.model_id for engine in engines if engine.state == "loading"]
    if loading:
        log.warning(
            "waiting up to %g s for %s to finish loading; %s", timeout, ", ".join(loading), AGAIN
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while running := [e.model_id for e in engines if e.state in ("loading", "ready")]:
        still_loading = any(engine.state == "loading" for engine in engines)
        if loop.time() >= deadline or (forced.is_set() and still_loading):
            log.warning("stopping without waiting for %s", ", ".join(running))
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


def stop_listening(sockets: Sockets) -> None:
    """Close the listening sockets now, so that new connections are refused at once.

    The event loop's server still holds each socket object and closes it at Hypercorn's own
    shutdown, so the file descriptor must stay valid: it is pointed at a fresh unbound
    socket, which closes the listening one."""
    loop = asyncio.get_running_loop()
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        fd = sock.fileno()
        if fd < 0:
            continue
        loop.remove_reader(fd)
        with socket.socket(sock.family, socket.SOCK_STREAM) as placeholder:
            os.dup2(placeholder.fileno(), fd)
