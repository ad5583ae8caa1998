"""`mlxdeploy render`: the resolved spec and the routes it serves, without loading a model.

Every value is the one `up` uses: a model entry's keys that the spec leaves out show what it
inherits from the top level, an endpoint's defaults show its model's under its own keys, and
`sampling` shows, for each id, exactly what a request that sets no sampling field runs with
(worked out by the API's own rule, `SamplingFields.to_sampling_params`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import yaml

from .api.wire import SamplingFields
from .engine.api import SamplingParams
from .spec import routes
from .spec.catalog import Preset, ServedModel
from .spec.deployment import Deployment
from .spec.settings import Spec

MASK = "***"
SECRET_WORDS = {"key", "keys", "token", "secret", "password"}


def is_secret_name(name: str) -> bool:
    """Whether a key or variable name says it holds a secret (`api_keys`, `HF_TOKEN`); names
    ending in _env or _file hold where a secret is, not the secret."""
    words = name.lower().split("_")
    return words[-1] not in ("env", "file") and bool(SECRET_WORDS & set(words))


def masked(value: Any, key: str = "") -> Any:
    """Values under keys that name secrets are shown as ***; names of variables and files stay."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if value is not None and is_secret_name(key):
        return MASK
    return value


def route_table(deployment: Deployment) -> list[tuple[str, str]]:
    """Every route the app serves: the built-in ones, each preset's own path, the playground."""
    spec = deployment.spec
    declared = list(routes.served_routes(spec.apis))
    declared += [routes.endpoint_route(p.name, p.path) for p in deployment.catalog.presets]
    if spec.playground_enabled:
        declared.append(routes.PLAYGROUND)
    return sorted({(route.method, route.path) for route in declared}, key=lambda row: row[1])


def served_table(deployment: Deployment) -> list[dict[str, Any]]:
    """Each id clients may send as `model`: a model and where its weights come from, an
    adapter, its model and its directory, or an endpoint preset, the model it runs on and its
    own path."""
    catalog = deployment.catalog
    rows: list[dict[str, Any]] = [
        {"id": m.id, "source": f"{m.source.kind}: {m.source}"}
        | ({"task": m.task} if m.task != "generate" else {})
        for m in catalog.models
    ]
    rows += [
        {"id": a.id, "adapter_of": a.model_id, "directory": str(a.path), "fused": a.fuse}
        for m in catalog.models
        for a in m.adapters
    ]
    rows += [{"id": p.name, "endpoint_of": p.model_id, "path": p.path} for p in catalog.presets]
    return rows


# Only a request's own fields set these (a preset's response_format is shown as json_schema).
NOT_SHOWN = frozenset(
    {"seed", "constraint", "tools", "logprobs", "thinking_budget", "thinking_apart"}
)


def sampling_row(params: SamplingParams) -> dict[str, Any]:
    """Sampling params as YAML-friendly values: stop words a list, logit_bias a map, the
    schema answers must match (when there is one) as `json_schema`."""
    row = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    row = {key: value for key, value in row.items() if key not in NOT_SHOWN}
    row["stop"] = list(params.stop)
    row["logit_bias"] = dict(params.logit_bias)
    if params.constraint is not None:
        row["json_schema"] = json.loads(params.constraint.schema)
    return row


def sampling_table(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """For each id clients may send as `model`: what a request that sets no sampling field
    runs with (its model's or preset's defaults, max_tokens capped by limits.max_tokens, the
    stop words, a preset's response_format). Embedding models sample nothing."""
    request = SamplingFields()
    spec, catalog = deployment.spec, deployment.catalog
    rows = {
        m.id: request.to_sampling_params(m.defaults, m.stop, spec.limits)
        for m in catalog.models
        if m.task == "generate"
    }
    adapters = {a.id: a for m in catalog.models for a in m.adapters}
    for a in adapters.values():
        rows[a.id] = request.to_sampling_params(a.defaults, a.stop, spec.limits)
    for p in catalog.presets:
        rows[p.name] = request.to_sampling_params(
            p.defaults, p.stop, spec.limits, p.response_format
        )
    for key in rows:  # what runs on an adapter names it (a fused one is in the weights)
        runs_on = adapters.get(key) or adapters.get(_preset_model(catalog.presets, key))
        if runs_on is not None and not runs_on.fuse:
            rows[key] = dataclasses.replace(rows[key], adapter=runs_on.id)
    return {key: sampling_row(params) for key, params in rows.items()}


def _preset_model(presets: Sequence[Preset], name: str) -> str:
    return next((p.model_id for p in presets if p.name == name), "")


def resolved_entry(entry: dict[str, Any], spec: Spec, model: ServedModel) -> dict[str, Any]:
    """A `models:` entry with what it inherits from the top level filled in; its `engine`
    only when it sets keys of its own (the top level's applies otherwise)."""
    own_engine = entry.pop("engine", None) is not None
    return {
        **entry,
        "prompt_format": model.prompt_format,
        "chat_template": entry.get("chat_template") or spec.chat_template,
        "tool_parser": model.tool_parser,
        "role_mapping": model.role_mapping.model_dump(mode="json"),
        "defaults": model.defaults.model_dump(mode="json"),
        "stop": list(model.stop),
        **({"engine": model.engine.model_dump(mode="json")} if own_engine else {}),
    }


def resolved_endpoint(endpoint: dict[str, Any], preset: Preset) -> dict[str, Any]:
    """An endpoint with its model, its path, and its model's defaults under its own keys."""
    return {
        **endpoint,
        "model": preset.model_id,
        "path": preset.path,
        "defaults": preset.defaults.model_dump(mode="json"),
    }


def resolved_settings(deployment: Deployment) -> dict[str, Any]:
    spec = deployment.spec
    settings = spec.model_dump(mode="json", exclude={"extends"})
    if settings.get("models"):
        served = {m.id: m for m in deployment.catalog.models}
        settings["models"] = [
            resolved_entry(entry, spec, served[entry["id"]]) for entry in settings["models"]
        ]
    presets = {p.name: p for p in deployment.catalog.presets}
    settings["endpoints"] = {
        name: resolved_endpoint(endpoint, presets[name])
        for name, endpoint in settings.get("endpoints", {}).items()
    }
    return settings


def render(deployment: Deployment) -> str:
    """YAML: the settings as `up` would use them, what each model id serves, the sampling a
    request without sampling fields gets on each, and the routes."""
    settings = masked(resolved_settings(deployment))
    settings["served"] = served_table(deployment)
    settings["sampling"] = sampling_table(deployment)
    settings["routes"] = [f"{methods} {path}" for methods, path in route_table(deployment)]
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=100)
