"""Loading embedding checkpoints through mlx-lm's model classes. Embedding models ship the
transformer alone: Qwen3-Embedding's weights are named `embed_tokens.*`, `layers.*`, `norm.*`
(no `model.` prefix, as transformers' headless Qwen3Model saves them), and its 8B model has no
output head although its config does not tie it to the embeddings."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..mlx_lm_internals import model_classes
from .forward import backbone_path

HEAD = "lm_head"


def embedding_classes(config: dict[str, Any]) -> tuple[type[nn.Module], type[Any]]:
    """mlx-lm's classes for `config` (for `mlx_lm.utils.load_model`'s `get_model_classes`),
    taking headless checkpoints: the transformer's weights get the prefix the model keeps it
    under, and a head with no weights is left out (an embedding model never reads it)."""
    model_class, args_class = model_classes(config)

    class EmbeddingModel(model_class):  # type: ignore[valid-type, misc]
        def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
            weights = with_backbone_prefix(self, weights)
            if hasattr(super(), "sanitize"):
                weights = super().sanitize(weights)
            drop_unread_head(self, weights)
            return weights

    EmbeddingModel.__name__ = EmbeddingModel.__qualname__ = model_class.__name__
    return EmbeddingModel, args_class


def with_backbone_prefix(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The weights, the transformer's under the path the model keeps it at, when the
    checkpoint names them from the transformer itself."""
    prefix = ".".join(backbone_path(model)) + "."
    if any(name.startswith(prefix) for name in weights):
        return weights
    return {
        name if name.startswith(f"{HEAD}.") else prefix + name: value
        for name, value in weights.items()
    }


def drop_unread_head(model: nn.Module, weights: dict[str, mx.array]) -> None:
    if isinstance(getattr(model, HEAD, None), nn.Module) and not any(
        name.startswith(f"{HEAD}.") for name in weights
    ):
        delattr(model, HEAD)
