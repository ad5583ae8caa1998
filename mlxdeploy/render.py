"""`mlxdeploy render`: the resolved spec and the routes it serves, without loading a model."""

from __future__ import annotations

from typing import Any

import yaml

from .spec import routes
from .spec.settings import Spec

MASK = "***"
SECRET_WORDS = {"key", "keys", "token", "secret", "password"}


def masked(value: Any, key: str = "") -> Any:
    """Values under keys that name secrets are shown as ***; names of variables and files stay."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    words = key.lower().split("_")
    is_reference = words[-1] in ("env", "file")  # the name of where a secret is, not the secret
    if value is not None and not is_reference and SECRET_WORDS & set(words):
        return MASK
    return value


def route_table(spec: Spec) -> list[tuple[str, str]]:
    """Every route the app serves: the built-in ones, then each preset's own path."""
    declared = list(routes.BUILTIN_ROUTES)
    declared += [routes.endpoint_route(p.name, p.path) for p in spec.catalog.presets]
    return sorted({(route.method, route.path) for route in declared}, key=lambda row: row[1])


def served_table(spec: Spec) -> list[dict[str, Any]]:
    """Each id clients may send as `model`: a model and where its weights come from, or an
    endpoint preset, the model it runs on and its own path."""
    rows: list[dict[str, Any]] = [
        {"id": m.id, "source": f"{m.source.kind}: {m.source}"} for m in spec.catalog.models
    ]
    rows += [
        {"id": p.name, "endpoint_of": p.model_id, "path": p.path} for p in spec.catalog.presets
    ]
    return rows


def render(spec: Spec) -> str:
    """YAML: the settings as `up` would use them, what each model id serves, and the routes."""
    settings = masked(spec.model_dump(mode="json", exclude={"extends"}))
    settings["served"] = served_table(spec)
    settings["routes"] = [f"{methods} {path}" for methods, path in route_table(spec)]
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=100)
