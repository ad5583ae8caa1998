"""The routes a deployment serves: the built-in API paths, written once, and each endpoint
preset's own path (which may not take a built-in one). The API registers its handlers on these
paths; `render` lists them without building the app."""

from __future__ import annotations

from dataclasses import dataclass


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
# The chat page: served only where the spec turns the playground on (Spec.playground_enabled).
PLAYGROUND = Route("GET", "/", "playground")

BUILTIN_ROUTES = (HEALTH, METRICS, MODELS, MODEL, CHAT_COMPLETIONS, COMPLETIONS, STATUS)
# A preset's path may be none of these, nor start with a prefix that a built-in route matches.
# The playground's `/` counts too: the app serves it where the spec turns it on.
BUILTIN_PATHS = frozenset(
    route.path for route in (*BUILTIN_ROUTES, PLAYGROUND) if "<" not in route.path
)
BUILTIN_PREFIXES = tuple(route.path.split("<")[0] for route in BUILTIN_ROUTES if "<" in route.path)


def endpoint_route(name: str, path: str) -> Route:
    """The route of an endpoint preset at its own path."""
    return Route("POST", path, f"endpoint:{name}")
