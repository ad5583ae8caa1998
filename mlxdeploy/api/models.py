"""GET /v1/models and /health: what is served, and whether it is ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from ..engine.api import Engine
from ..spec.catalog import Catalog
from .errors import ModelNotFound


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlxdeploy"
    parent: str | None = None  # an endpoint preset's model, as vLLM names a LoRA's base model
    description: str | None = None


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


def health_report(engines: Sequence[Engine], draining: bool) -> dict[str, Any]:
    """`ok` only when every model is ready; otherwise the state that keeps it from being so."""
    models = [{"id": e.model_id, "status": _status(e.state), "running": e.running} for e in engines]
    states = {e.state for e in engines}
    overall = next((s for s in ("failed", "loading", "stopped") if s in states), "ready")
    return {
        "status": "draining" if draining else _status(overall),
        "running": sum(m["running"] for m in models),
        "models": models,
    }


def _status(state: str) -> str:
    return "ok" if state == "ready" else state
