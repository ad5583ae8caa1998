"""Request ids: the client's own when it is safe to echo and log, else a fresh one."""

from __future__ import annotations

import re
import uuid

HEADER = "X-Request-ID"
# The request's id in its ASGI scope, for the access log: it names requests whose client went
# away before the response (and its header) was complete.
SCOPE_KEY = "mlxdeploy.request_id"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def choose_request_id(sent: str | None) -> str:
    if sent is not None and _SANE.fullmatch(sent):
        return sent
    return new_request_id()


def new_request_id() -> str:
    return uuid.uuid4().hex
