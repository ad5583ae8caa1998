"""A request's `adapters` (mlx_lm.server's field): the adapter it asks for, by id or by the
path the spec gives, among those the spec declares on the model the request names. Anything
else is a 400: an adapter is never loaded on request, and never silently left out."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..spec.adapters import ServedAdapter
from .errors import InvalidRequest

if TYPE_CHECKING:
    from .routing import Target

CODE = "adapter_not_found"


class AdapterTargets:
    """The targets of each model's adapters, by every name a request may give them."""

    def __init__(self) -> None:
        self._by_model: dict[str, dict[str, Target]] = {}

    def add(self, adapter: ServedAdapter, target: Target) -> None:
        names = self._by_model.setdefault(adapter.model_id, {})
        for name in (adapter.id, adapter.written, str(adapter.path)):
            names.setdefault(_plain(name), target)

    def apply(self, target: Target, asked: str) -> Target:
        """`target` running the adapter `asked` names: the adapter's own target when the
        request names its model, the same preset on the adapter when it names a preset."""
        model_id = target.engine.model_id
        declared = self._by_model.get(model_id, {})
        found = declared.get(_plain(asked))
        if found is None:
            ids = sorted({t.id for t in declared.values()})
            offer = f"its adapters: {', '.join(ids)}" if ids else "it declares no adapters"
            message = f"model '{model_id}' has no adapter '{asked}' ({offer})"
            raise InvalidRequest(message, param="adapters", code=CODE)
        if found.adapter == target.adapter:
            return target
        if target.adapter is not None:
            message = (
                f"'{target.id}' runs adapter '{target.adapter}'; send its model's id to choose "
                f"another with adapters"
            )
            raise InvalidRequest(message, param="adapters", code=CODE)
        if target.preset is None:
            return found
        return dataclasses.replace(target, adapter=found.adapter)


def _plain(name: str) -> str:
    return name.rstrip("/") or name
