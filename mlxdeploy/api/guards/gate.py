"""The gate every request passes: a request id, CORS preflight, then the API key."""

from __future__ import annotations

from quart import Quart, Response, g, request

from ...spec import routes
from ...spec.settings import Spec
from .auth import ApiKeys
from .cors import CorsPolicy, is_preflight
from .request_ids import HEADER, SCOPE_KEY, choose_request_id, new_request_id

PUBLIC_PATHS = frozenset({routes.HEALTH.path})


def install_gate(app: Quart, spec: Spec, api_keys: ApiKeys | None) -> None:
    """Register the hooks. Preflights never need a key: browsers cannot send one with them."""
    cors = CorsPolicy.from_settings(spec.cors)
    # The playground page holds no secrets; its API calls carry the key the user enters.
    public = PUBLIC_PATHS | ({routes.PLAYGROUND.path} if spec.playground_enabled else set())

    @app.before_request
    async def admit() -> Response | None:
        g.request_id = choose_request_id(request.headers.get(HEADER))
        request.scope[SCOPE_KEY] = g.request_id  # type: ignore[literal-required]
        if is_preflight(request):
            return cors.preflight(request.headers.get("Origin"))
        if api_keys is not None and request.path not in public:
            api_keys.check(request.headers.get("Authorization"), request.headers.get("x-api-key"))
        return None

    @app.after_request
    async def tag(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id") or new_request_id()
        cors.decorate(response, request.headers.get("Origin"))
        return response
