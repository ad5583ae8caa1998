"""GET /: the playground, one static chat page (inline CSS and JS, no build step, nothing
fetched from elsewhere) that talks to this server's own /v1 routes.

The page holds no secrets, so it is served without an API key; where the spec has keys, the
user pastes one into the page, which sends it as `Authorization: Bearer` with its API calls."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files

from quart import Response

PAGE = "index.html"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class Page:
    html: str
    content_security_policy: str

    @classmethod
    def load(cls) -> Page:
        """The page shipped as package data, with a policy that runs its own script only."""
        html = files(__name__).joinpath(PAGE).read_text(encoding="utf-8")
        hashes = " ".join(_sha256(script) for script in INLINE_SCRIPT.findall(html))
        policy = (
            "default-src 'none'; "
            f"script-src {hashes}; "
            "style-src 'unsafe-inline'; "
            "connect-src 'self'; "
            "img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return cls(html, policy)


def _sha256(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return f"'sha256-{digest}'"


async def playground(page: Page) -> Response:
    response = Response(page.html, 200, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = page.content_security_policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response
