"""How much memory a served model's keys and values take per token of context, as `validate`
reports it for models that keep them quantized (`engine.kv_bits`, the top level's or
the model's own)."""

from __future__ import annotations

import json

from ..footprint import bytes_text, kv_bytes_per_token
from .deployment import Deployment
from .sources import config_file

PER = 1000  # tokens of context a note counts


def kv_cache_notes(deployment: Deployment) -> list[str]:
    """One line per model that quantizes its cache and whose config.json is here: its keys
    and values per 1,000 tokens of context, quantized and not."""
    notes = []
    for model in deployment.catalog.models:
        bits, group = model.engine.kv_bits, model.engine.kv_group_size
        path = config_file(model.source)
        if bits is None or path is None or path.suffix != ".json" or not path.is_file():
            continue
        config = json.loads(path.read_text())
        try:
            small = kv_bytes_per_token(config, bits, group) * PER
            full = kv_bytes_per_token(config, None) * PER
        except (KeyError, TypeError, ValueError):  # not a decoder config this can read
            continue
        notes.append(
            f"{model.id}: keys and values about {bytes_text(small)} per {PER:,} tokens of "
            f"context ({bits}-bit; {bytes_text(full)} unquantized)"
        )
    return notes
