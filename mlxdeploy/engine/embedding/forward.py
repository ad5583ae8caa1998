"""One forward pass of an embedding model through mlx-lm's own model code: the transformer
without its output head, each input's final hidden state at its last token (last-token
pooling), L2-normalised, as Qwen3-Embedding's model card computes it."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

# Where mlx-lm keeps a model's transformer (embeddings, layers, final norm) next to its head.
BACKBONE_NAMES = ("model", "transformer", "backbone")
WRAPPER = "language_model"  # multimodal checkpoints hold the text model under this name
PAD = 0  # any token id: under the causal mask no real token sees the padding after it
EPSILON = 1e-12  # as torch.nn.functional.normalize, which the model card uses


def backbone_path(model: nn.Module) -> tuple[str, ...]:
    """The attribute path of the transformer inside an mlx-lm model: `model` (llama, qwen,
    mistral, gemma and most others), `transformer` or `backbone` (gpt-2 and mamba shapes),
    under `language_model` in multimodal wrappers. Its call returns the final, normed hidden
    states; the model's own call puts the output head on them."""
    path: list[str] = []
    node = model
    while isinstance(getattr(node, WRAPPER, None), nn.Module):
        path.append(WRAPPER)
        node = getattr(node, WRAPPER)
    for name in BACKBONE_NAMES:
        if isinstance(getattr(node, name, None), nn.Module):
            return (*path, name)
    raise ValueError(
        f"mlx-lm's {type(model).__module__} model keeps no transformer under "
        f"{', '.join(BACKBONE_NAMES)}: it cannot serve embeddings"
    )


def backbone(model: nn.Module) -> nn.Module:
    return reduce(getattr, backbone_path(model), model)


def last_states(
    model: nn.Module, body: nn.Module, rows: Sequence[Sequence[int]], chunk: int
) -> mx.array:
    """Each row's final hidden state at its last token, as float32 [rows, hidden].

    The rows are right-padded into one batch: each starts at position 0, and under the causal
    mask its tokens never attend to the padding after them, so each state is the one the row
    gets alone. A batch wider than `chunk` tokens is read `chunk` tokens at a time through
    the model's own cache, which bounds the attention's memory."""
    lengths = [len(row) for row in rows]
    width = max(lengths)
    tokens = mx.array([[*row, *[PAD] * (width - len(row))] for row in rows], dtype=mx.int32)
    last = mx.array([length - 1 for length in lengths])
    index = mx.arange(len(rows))
    if width <= chunk:
        return body(tokens)[index, last].astype(mx.float32)
    cache = make_prompt_cache(model)
    pooled: mx.array | None = None
    for start in range(0, width, chunk):
        hidden = body(tokens[:, start : start + chunk], cache)
        read = hidden.shape[1]
        states = hidden[index, mx.clip(last - start, 0, read - 1)]
        here = (last >= start) & (last < start + read)
        pooled = states if pooled is None else mx.where(here[:, None], states, pooled)
        mx.eval(pooled, [c.state for c in cache])
    assert pooled is not None
    return pooled.astype(mx.float32)


def unit(vectors: mx.array) -> mx.array:
    """Each row scaled to length 1 (L2)."""
    norms = mx.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / mx.maximum(norms, EPSILON)


def float32_rows(vectors: mx.array, dimensions: Sequence[int]) -> list[bytes]:
    """Row i: its first dimensions[i] values, normalised, as little-endian float32 bytes.
    Matryoshka models (Qwen3-Embedding) are trained so that a vector's head is one too."""
    rows: list[bytes] = [b""] * len(dimensions)
    for size in sorted(set(dimensions)):
        values = np.asarray(unit(vectors[:, :size]), dtype="<f4")
        for i, wanted in enumerate(dimensions):
            if wanted == size:
                rows[i] = values[i].tobytes()
    return rows
