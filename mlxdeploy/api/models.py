"""GET /v1/models and /health: what is served, and whether it is ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from ..engine.api import EngineState
from ..engine.residency import Residents, Tenant, serving_state
from ..spec.catalog import Catalog
from .errors import ModelNotFound


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlxdeploy"
    parent: str | None = None  # an endpoint preset's model, as vLLM names a LoRA's base model
    description: str | None = None
    # Where the model is (a preset: its model's): unloaded, loading, ready, failed, stopped.
    state: EngineState | None = None
    memory_bytes: int | None = None  # its weights, measured once loaded, else estimated
    context_length: int | None = None
    pinned: bool | None = None
    load: str | None = None  # eager or on_demand


def placed(card: ModelCard, tenant: Tenant) -> ModelCard:
    """The card with where its model is now."""
    return card.model_copy(
        update={
            "state": tenant.engine.state,
            "memory_bytes": tenant.size or None,
            "context_length": tenant.context(),
            "pinned": tenant.pinned,
            "load": tenant.residency.load,
        }
    )


def current_cards(cards: Sequence[ModelCard], residents: Residents) -> list[ModelCard]:
    """Every card with its model's state now (an adapter or a preset shows its model's)."""
    parents = {card.id: card.parent for card in cards}

    def model_of(card_id: str) -> str:  # a preset may run on an adapter of a model
        while (parent := parents.get(card_id)) is not None:
            card_id = parent
        return card_id

    return [placed(card, residents.tenant(model_of(card.id))) for card in cards]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_cards(catalog: Catalog, created: int) -> list[ModelCard]:
    """What /v1/models lists: the models, their adapters and the presets, each of those with
    the model it runs on."""
    cards = [ModelCard(id=model.id, created=created) for model in catalog.models]
    cards += [
        ModelCard(id=a.id, created=created, parent=a.model_id, description=a.description)
        for model in catalog.models
        for a in model.adapters
    ]
    cards += [
        ModelCard(id=p.name, created=created, parent=p.model_id, description=p.description)
        for p in catalog.presets
    ]
    return cards


def find_card(cards: Sequence[ModelCard], model_id: str) -> ModelCard:
    card = next((card for card in cards if card.id == model_id), None)
    if card is None:
        raise ModelNotFound(model_id)
    return card


def health_report(residents: Residents, draining: bool) -> dict[str, Any]:
    """`ok` when every model loaded at start is ready; otherwise the state that keeps it from
    being so. Models loaded on demand (or waiting to be) never do: they are served in turn."""
    models = [
        {"id": t.id, "status": _status(t.engine.state), "running": t.engine.running}
        for t in residents
    ]
    states = {state for t in residents if (state := serving_state(t)) is not None}
    overall = next((s for s in ("failed", "loading", "stopped") if s in states), "ready")
    return {
        "status": "draining" if draining else _status(overall),
        "running": sum(m["running"] for m in models),
        "models": models,
    }


def _status(state: str) -> str:
    return "ok" if state == "ready" else state
