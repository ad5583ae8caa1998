"""Whether a draft model can guess tokens for its model: the same vocabulary, read from their
tokenizer files without loading weights (GGUF files and models not on this machine are not
checked here; the engine compares the loaded tokenizers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .sources import ModelSource, config_file


def vocabulary_problem(model: ModelSource, draft: ModelSource) -> str | None:
    """Why the draft's tokens are not the model's (None: they are, or this cannot tell)."""
    mine, theirs = _vocabulary(model), _vocabulary(draft)
    if mine is None or theirs is None or mine == theirs:
        return None
    only = sorted(set(theirs.items()) ^ set(mine.items()), key=lambda item: item[1])[:3]
    shown = ", ".join(f"{token!r}: {index}" for token, index in only)
    return (
        f"the draft model's vocabulary ({len(theirs)} tokens) is not the model's "
        f"({len(mine)} tokens; they differ at {shown}): a draft needs the same tokenizer"
    )


def _vocabulary(source: ModelSource) -> dict[str, int] | None:
    """token -> id of the model's tokenizer.json, added tokens included; None: not here."""
    if source.kind == "gguf":
        return None
    config = config_file(source)
    path = None if config is None else Path(config).parent / "tokenizer.json"
    if path is None or not path.is_file():
        return None
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the engine's load reports a broken tokenizer
    vocab = data.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        return None  # a model type whose vocabulary is not a mapping: the engine checks
    added = {t["content"]: t["id"] for t in data.get("added_tokens", []) if isinstance(t, dict)}
    return {**vocab, **added}
