"""Browser cross-origin access: only the origins a spec lists, none by default."""

from __future__ import annotations

from dataclasses import dataclass

from quart import Request, Response

from ...spec.settings import CorsSettings
from ..errors import Forbidden

ALLOW_METHODS = "GET, POST, OPTIONS"
EXPOSE_HEADERS = "X-Request-ID, Retry-After, X-Unused-Fields"
ANY_ORIGIN = "*"


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]
    allow_headers: str
    max_age: int

    @classmethod
    def from_settings(cls, settings: CorsSettings) -> CorsPolicy:
        return cls(
            origins=frozenset(_normalise(origin) for origin in settings.allow_origins),
            allow_headers=", ".join(settings.allow_headers),
            max_age=settings.max_age_seconds,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        if not origin or not self.origins:
            return False
        return ANY_ORIGIN in self.origins or _normalise(origin) in self.origins

    def preflight(self, origin: str | None) -> Response:
        """204 with the allowed methods and headers; 403 (no CORS headers) for other origins."""
        if not self.allows(origin):
            raise Forbidden(
                f"cross-origin requests from {origin or 'this origin'} are not allowed",
                code="origin_not_allowed",
            )
        response = Response("", 204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = self.allow_headers
        response.headers["Access-Control-Max-Age"] = str(self.max_age)
        return response

    def decorate(self, response: Response, origin: str | None) -> None:
        """Let an allowed origin read this response; caches keep one copy per origin."""
        if not self.enabled:
            return
        response.vary.add("Origin")
        if self.allows(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def is_preflight(request: Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
