"""The routes a deployment serves: the built-in API paths, written once, and each endpoint
preset's own path (which may not take a built-in one). The API registers its handlers on these
paths; `render` lists them without building the app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

ApiName = Literal["chat", "completions", "responses", "messages", "embeddings"]
API_NAMES: tuple[ApiName, ...] = get_args(ApiName)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint: str  # the handler's name in the app's route table


HEALTH = Route("GET", "/health", "health")
METRICS = Route("GET", "/metrics", "metrics")
MODELS = Route("GET", "/v1/models", "models")
MODEL = Route("GET", "/v1/models/<path:model_id>", "model")
CHAT_COMPLETIONS = Route("POST", "/v1/chat/completions", "chat_completions")
COMPLETIONS = Route("POST", "/v1/completions", "completions")
STATUS = Route("GET", "/v1/status", "status")  # the requests in flight, per model
# An operator's load, unload, pin and unpin of a model (api/admin.py).
ADMIN_MODEL = Route("POST", "/v1/admin/models/<path:model_id>/<action>", "admin_model")
RESPONSES = Route("POST", "/v1/responses", "responses")  # OpenAI's Responses API
RESPONSE = Route("GET", "/v1/responses/<response_id>", "response")
RESPONSE_DELETE = Route("DELETE", "/v1/responses/<response_id>", "response_delete")
MESSAGES = Route("POST", "/v1/messages", "messages")  # Anthropic's Messages API
COUNT_TOKENS = Route("POST", "/v1/messages/count_tokens", "count_tokens")
EMBEDDINGS = Route("POST", "/v1/embeddings", "embeddings")  # models served with task: embed
MESSAGES_PREFIX = "/v1/messages"  # where errors take Anthropic's shape
# The chat page: served only where the spec turns the playground on (Spec.playground_enabled).
PLAYGROUND = Route("GET", "/", "playground")

# The routes of each API the spec's `apis` can turn on or off.
API_ROUTES: dict[ApiName, tuple[Route, ...]] = {
    "chat": (CHAT_COMPLETIONS,),
    "completions": (COMPLETIONS,),
    "responses": (RESPONSES, RESPONSE, RESPONSE_DELETE),
    "messages": (MESSAGES, COUNT_TOKENS),
    "embeddings": (EMBEDDINGS,),
}
ALWAYS = (HEALTH, METRICS, MODELS, MODEL, STATUS, ADMIN_MODEL)  # served whatever the spec's `apis`
BUILTIN_ROUTES = ALWAYS + tuple(route for api in API_NAMES for route in API_ROUTES[api])
# A preset's path may be none of these, nor start with a prefix that a built-in route matches.
# The playground's `/` counts too: the app serves it where the spec turns it on.
BUILTIN_PATHS = frozenset(
    route.path for route in (*BUILTIN_ROUTES, PLAYGROUND) if "<" not in route.path
)
BUILTIN_PREFIXES = tuple(route.path.split("<")[0] for route in BUILTIN_ROUTES if "<" in route.path)


def endpoint_route(name: str, path: str) -> Route:
    """The route of an endpoint preset at its own path."""
    return Route("POST", path, f"endpoint:{name}")


def served_routes(apis: Sequence[ApiName]) -> tuple[Route, ...]:
    """The built-in routes a deployment serving `apis` answers (presets and the playground
    come on top)."""
    return ALWAYS + tuple(route for api in apis for route in API_ROUTES[api])
