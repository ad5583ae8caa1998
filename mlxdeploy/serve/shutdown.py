"""Graceful shutdown on SIGTERM/SIGINT, in this order:

1. the app drains: `/health` answers 503 `draining`, new requests get 503;
2. the listening sockets close: new connections are refused, accepted ones are still served;
3. requests in flight get up to `server.shutdown_timeout_seconds` to finish (a second signal
   cuts the wait short);
4. past it, the engines end what is left: each stream gets one error event and ends;
5. Hypercorn closes the remaining connections, and only then do the engines stop (server.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypercorn.config import Config, Sockets

from ..api.guards.drain import Drain
from ..engine.api import Engine

log = logging.getLogger("mlxdeploy.server")

ABORT_GRACE_SECONDS = 5.0  # for aborted requests to send their error and end
SHUTDOWN_MESSAGE = "the server is shutting down"


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


def install_signal_handlers(loop: asyncio.AbstractEventLoop) -> ShutdownSignals:
    signals = ShutdownSignals()
    for sig in (signal.SIGINT, signal.SIGTERM):
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
    log.info("shutting down: %d requests in flight, waiting up to %gs", drain.in_flight, timeout)
    if await drain.wait_idle(timeout, forced):
        return
    log.warning("shutdown: ending %d requests still in flight", drain.in_flight)
    for engine in engines:
        engine.abort(SHUTDOWN_MESSAGE)
    if not await drain.wait_idle(ABORT_GRACE_SECONDS):
        log.warning("shutdown: %d requests did not end after the abort", drain.in_flight)


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
