"""What a request sent that its answer did not use: labels (`metadata`), hints and offers this
server declines (`prediction`, a hosted tool), and values it adjusted (`max_tokens` clamped to
the deployment's limit). Each request has one record, made before its route runs; the wire
models' checks and later code add to it, the response names its entries in `X-Unused-Fields`
and the access line in `unused=`.

A declined hint is a 400 instead under the spec's `limits.unused_fields: reject`; a field that
would change the answer is a 400 either way (`unsupported.py`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationInfo
from quart import Quart, Response, has_request_context, request

from ..spec.settings import LimitSettings
from .errors import InvalidRequest

HEADER = "X-Unused-Fields"
SCOPE_KEY = "mlxdeploy.unused"  # the request's record in its ASGI scope, for the access log
CONTEXT_KEY = "unused"  # ... and in the validation context of its wire model
CODE = "unsupported_parameter"
SHOWN = 32  # entries the header names; the rest are counted
_UNSAFE = re.compile(r"[^\x21-\x7e ]|,")  # a header value's entries are split at commas


@dataclass
class UnusedFields:
    """One request's unused fields, in the order they were noted, each by the path the client
    wrote (`metadata`, `tools[3]`) with an optional detail (`web_search`, `clamped to 4096`)."""

    strict: bool = False  # limits.unused_fields: reject
    _entries: dict[str, str | None] = field(default_factory=dict)

    def note(self, path: str, detail: str | None = None) -> None:
        """Record that `path` was accepted but not used; the first detail noted stays."""
        self._entries.setdefault(path, None if detail is None else _safe(detail))

    def decline(self, path: str, reason: str, detail: str | None = None) -> None:
        """A hint or an offer this server does not take up: noted, or, under the strict
        policy, a 400 naming `path` that says `reason` (what is not supported)."""
        if self.strict:
            raise InvalidRequest(f"unsupported parameter '{path}': {reason}", param=path, code=CODE)
        self.note(path, detail)

    def paths(self) -> list[str]:
        return list(self._entries)

    def header(self) -> str:
        """The header's value: `metadata, tools[3] (web_search), max_tokens (clamped to 8)`."""
        shown = [
            path if detail is None else f"{path} ({detail})"
            for path, detail in list(self._entries.items())[:SHOWN]
        ]
        if len(self._entries) > SHOWN:
            shown.append(f"and {len(self._entries) - SHOWN} more")
        return ", ".join(shown)

    def __bool__(self) -> bool:
        return bool(self._entries)


def _safe(detail: str) -> str:
    return _UNSAFE.sub("?", detail)[:80]


def unused_fields() -> UnusedFields:
    """This request's record. Outside a request, a detached one that nothing reads."""
    found = request.scope.get(SCOPE_KEY) if has_request_context() else None
    return found if isinstance(found, UnusedFields) else UnusedFields()


def unused_of(info: ValidationInfo | None) -> UnusedFields:
    """The record a wire model's validators add to: the one in its validation context
    (`parse_body` puts the request's there), else a detached one."""
    context: Any = None if info is None else info.context
    found = context.get(CONTEXT_KEY) if isinstance(context, dict) else None
    return found if isinstance(found, UnusedFields) else UnusedFields()


def validation_context() -> dict[str, Any]:
    return {CONTEXT_KEY: unused_fields()}


def install_unused_fields(app: Quart, limits: LimitSettings) -> None:
    """A record for every request; every response whose record has entries names them."""
    strict = limits.unused_fields == "reject"

    @app.before_request
    async def start_record() -> None:
        request.scope[SCOPE_KEY] = UnusedFields(strict=strict)  # type: ignore[literal-required]

    @app.after_request
    async def name_unused(response: Response) -> Response:
        record = request.scope.get(SCOPE_KEY)
        if isinstance(record, UnusedFields) and record:
            response.headers[HEADER] = record.header()
        return response


def logged_unused(scope: Any) -> str | None:
    """The access line's `unused` field: the paths, comma-separated (None: nothing unused)."""
    record = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    if not isinstance(record, UnusedFields) or not record:
        return None
    return ",".join(record.paths())
