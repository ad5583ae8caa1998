"""How much memory a served model's keys and values take per token of context, as `validate`
reports it for models that keep them quantized (`engine.kv_bits`)."""

from __future__ import annotations

import json

from ..footprint import bytes_text, kv_bytes_per_token
from .deployment import Deployment
from .sources import config_file

PER = 1000  # tokens of context a note counts


def kv_cache_notes(deployment: Deployment) -> list[str]:
    """One line per model whose config.json is here, when the spec quantizes the cache: its
    keys and values per 1,000 tokens of context, quantized and not."""
    engine = deployment.spec.engine
    if engine.kv_bits is None:
        return []
    notes = []
    for model in deployment.catalog.models:
        path = config_file(model.source)
        if path is None or path.suffix != ".json" or not path.is_file():
            continue
        config = json.loads(path.read_text())
        try:
            small = kv_bytes_per_token(config, engine.kv_bits, engine.kv_group_size) * PER
            full = kv_bytes_per_token(config, None) * PER
        except (KeyError, TypeError, ValueError):  # not a decoder config this can read
            continue
        notes.append(
            f"{model.id}: keys and values about {bytes_text(small)} per {PER:,} tokens of "
            f"context ({engine.kv_bits}-bit; {bytes_text(full)} unquantized)"
        )
    return notes
