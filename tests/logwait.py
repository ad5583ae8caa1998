"""Wait for a server's log to name something: Hypercorn writes the access line only after the
last byte of the response is sent, so a client can read the log before its line is there."""

from __future__ import annotations

import time

from tests.servers import RunningServer


def wait_for_log(server: RunningServer, *needles: str, timeout: float = 10) -> str:
    """The log once it holds every needle; the log as it is when the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log()
        if all(needle in log for needle in needles) or time.monotonic() > deadline:
            return log
        time.sleep(0.05)
