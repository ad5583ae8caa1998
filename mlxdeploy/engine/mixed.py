"""One forward pass that decodes the running rows and reads prompt chunks.

A decode step of B rows and a prompt chunk of C tokens read as two calls cost two passes over
the weights. Here the dense work (the norms and the MLP, a layer's largest weights) runs once
on all B + C tokens flattened; attention runs per part through the model's own attention
module, the decode rows against their slots (one call, as a decode step makes it), each chunk
causally against its own slot, so only the attention projections are read once per part. Only
the positions that are sampled (the decode rows, and a chunk's last token when it ends its
prompt) go through the vocabulary projection.

It is written for mlx-lm's pre-norm decoder layers of the llama form
(`h = x + attn(norm(x)); out = h + mlp(norm(h))`) whose attention module does everything
else itself (rotary embeddings, q/k norms): the families in `MIXABLE`. Other families, and
models split across ranks, read prompts in calls of their own (the worker says so in its log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from .storage import Planned, Slots

# mlx-lm model modules whose decoder layers have exactly the form above.
MIXABLE = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen3_moe"})


@dataclass(frozen=True)
class Part:
    """Rows of one attention call: `tokens` (rows, width), read into `planned`'s slots."""

    planned: Planned
    tokens: mx.array

    @property
    def size(self) -> int:
        return int(self.tokens.size)


class MixedForward:
    """The model's layers called piece by piece (module docstring)."""

    def __init__(self, model: Any):
        self.inner = model.model
        self.head = getattr(model, "lm_head", None) or self.inner.embed_tokens.as_linear

    @classmethod
    def of(cls, model: Any, family: str) -> MixedForward | None:
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        parts = ("embed_tokens", "norm")
        if family not in MIXABLE or not layers or not all(hasattr(inner, p) for p in parts):
            return None
        pieces = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        if not all(hasattr(layer, p) for layer in layers for p in pieces):
            return None
        return cls(model)

    def __call__(self, slots: Slots, parts: Sequence[Part], picked: Sequence[int]) -> mx.array:
        """Logits (len(picked), vocab) of the flattened positions `picked`."""
        inner = self.inner
        flat = mx.concatenate([p.tokens.reshape(-1) for p in parts])
        h = inner.embed_tokens(flat[None])
        for layer, cache in zip(inner.layers, slots.caches, strict=True):
            h = h + self._attention(layer, layer.input_layernorm(h), cache, slots, parts)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        out = inner.norm(h[:, mx.array(list(picked))])
        return self.head(out)[0]

    @staticmethod
    def _attention(
        layer: Any, x: mx.array, cache: Any, slots: Slots, parts: Sequence[Part]
    ) -> mx.array:
        outs, at = [], 0
        for part in parts:
            rows, width = part.tokens.shape
            slots.activate(part.planned)
            piece = x[:, at : at + part.size].reshape(rows, width, -1)
            out = layer.self_attn(piece, part.planned.mask, cache)
            outs.append(out.reshape(1, part.size, -1))
            at += part.size
        return mx.concatenate(outs, axis=1)
