"""One forward pass that decodes the running rows and reads prompt chunks.

A decode step of B rows and a prompt chunk of C tokens read as two calls cost two passes over
the weights. Here the dense work (the norms and the MLP, a layer's largest weights) runs once
on all B + C tokens flattened; attention runs per part through the model's own attention
module: the decode rows against their slots (one call, as a decode step makes it), then the
chunks, right-padded to one width, each against its own slot (one call, masked), so only the
attention projections are read twice. Only
the positions that are sampled (the decode rows, and a chunk's last token when it ends its
prompt) go through the vocabulary projection.

It is written per form of decoder layer (`FORMS`): the llama form
(`h = x + attn(norm(x)); out = h + mlp(norm(h))`: llama, mistral, qwen2, qwen3, qwen3_moe,
gpt_oss, deepseek_v3) and Gemma 3's (norms after attention and MLP too, scaled embeddings),
whose attention modules do everything else themselves (rotary embeddings, q/k norms, sinks,
latent attention). Each layer's cache gives each part its mask (a full-attention slot's, a
sliding window's ring). Other families, and models split across ranks, read prompts in calls
of their own (the log says so).

On a model with adapters (`adapters.py`) each token applies its row's adapter: the dense work
sees the tokens flattened, each attention call its part's rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.models.gemma3_text import clip_residual

from .adapters import Selection, bank_of
from .storage import Planned, Slots

Attend = Callable[[mx.array], mx.array]


def family(model: Any) -> str:
    """The mlx-lm model module's name: its architecture family."""
    return str(type(model).__module__).rsplit(".", 1)[-1]


def _llama_block(layer: Any, x: mx.array, attend: Attend) -> mx.array:
    h = x + attend(layer.input_layernorm(x))
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _gemma3_block(layer: Any, x: mx.array, attend: Attend) -> mx.array:
    h = clip_residual(x, layer.post_attention_layernorm(attend(layer.input_layernorm(x))))
    r = layer.mlp(layer.pre_feedforward_layernorm(h))
    return clip_residual(h, layer.post_feedforward_layernorm(r))


def _plain(inner: Any, h: mx.array) -> mx.array:
    return h


def _gemma3_scale(inner: Any, h: mx.array) -> mx.array:
    return h * mx.array(inner.args.hidden_size**0.5, mx.bfloat16).astype(h.dtype)


@dataclass(frozen=True)
class Form:
    """How a family's model runs a decoder layer, and what it does to its embeddings."""

    block: Callable[[Any, mx.array, Attend], mx.array]
    embed: Callable[[Any, mx.array], mx.array] = _plain
    array_masks: bool = False  # its attention takes masks as arrays only (MLA)


LLAMA = Form(_llama_block)
# mlx-lm model modules whose decoder layers have one of these forms.
FORMS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gpt_oss"), LLAMA),
    "gemma3_text": Form(_gemma3_block, _gemma3_scale),
    "deepseek_v3": Form(_llama_block, array_masks=True),
}
MIXABLE = frozenset(FORMS)


@dataclass(frozen=True)
class Part:
    """Rows of one attention call: `tokens` (rows, width), right-padded, `counts` real tokens
    in each row, read into `planned`'s slots; `adapters`: the adapter of each row (none
    given: no adapter)."""

    planned: Planned
    tokens: list[list[int]]
    counts: tuple[int, ...]
    adapters: tuple[int, ...] = ()

    def row_adapters(self) -> list[int]:
        return list(self.adapters) or [0] * len(self.counts)

    def token_adapters(self) -> list[int]:
        """The adapter of each real token, in the part's flattened order."""
        rows = zip(self.row_adapters(), self.counts, strict=True)
        return [adapter for adapter, n in rows for _ in range(n)]

    @property
    def width(self) -> int:
        return self.planned.call.width

    @property
    def padded(self) -> bool:
        return any(n < self.width for n in self.counts)

    def real(self) -> list[int]:
        return [t for row, n in zip(self.tokens, self.counts, strict=True) for t in row[:n]]

    def spread(self) -> tuple[mx.array, mx.array]:
        """Indices from the part's real tokens to its padded (rows * width) layout (a pad takes
        its row's last real token: its keys land past the row's length, unread), and back."""
        out: list[int] = []
        back: list[int] = []
        at = 0
        for e, n in enumerate(self.counts):
            out.extend(at + min(i, n - 1) for i in range(self.width))
            back.extend(e * self.width + i for i in range(n))
            at += n
        return mx.array(out), mx.array(back)


class MixedForward:
    """The model's layers called piece by piece (module docstring)."""

    def __init__(self, model: Any, form: Form):
        self.inner, self.form = model.model, form
        self.head = getattr(model, "lm_head", None) or self.inner.embed_tokens.as_linear
        bank = bank_of(model)
        self.selection: Selection | None = None if bank is None else bank.selection

    @classmethod
    def of(cls, model: Any, family: str) -> MixedForward | None:
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        parts = ("embed_tokens", "norm")
        form = FORMS.get(family)
        if form is None or not layers or not all(hasattr(inner, p) for p in parts):
            return None
        pieces = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        if not all(hasattr(layer, p) for layer in layers for p in pieces):
            return None
        return cls(model, form)

    def __call__(
        self,
        slots: Slots,
        parts: Sequence[Part],
        picked: Sequence[int],
        first: mx.array | None = None,
    ) -> mx.array | None:
        """Logits (len(picked), vocab) of the real tokens at positions `picked` (None when none
        is picked: the pass only writes the caches); `first`: the tokens of the first part when
        they are not known yet (lazy: sampled by the step before)."""
        inner = self.inner
        if first is None:
            flat = mx.array([t for part in parts for t in part.real()], dtype=mx.uint32)
        else:
            rest = [t for part in parts[1:] for t in part.real()]
            flat = mx.concatenate([first.reshape(-1), mx.array(rest, dtype=first.dtype)])
        h = self.form.embed(inner, inner.embed_tokens(flat[None]))
        layout = [(part, part.spread() if part.padded else None) for part in parts]
        tokens = [a for part in parts for a in part.token_adapters()]
        self._select(tokens)
        for layer, cache in zip(inner.layers, slots.caches, strict=True):

            def attend(x: mx.array, layer: Any = layer, cache: Any = cache) -> mx.array:
                out = self._attention(layer, x, cache, slots, layout, self.form.array_masks)
                self._select(tokens)  # the dense work again: tokens flattened
                return out

            h = self.form.block(layer, h, attend)
        self._select(None)
        if not picked:
            return None
        out = inner.norm(h[:, mx.array(list(picked))])
        return self.head(out)[0]

    def _select(self, tokens: list[int] | None) -> None:
        """Each flattened token's adapter (None: the selection ends)."""
        if self.selection is not None:
            self.selection.tokens(tokens or ())

    def _attention(
        self,
        layer: Any,
        x: mx.array,
        cache: Any,
        slots: Slots,
        layout: Sequence[tuple[Part, tuple[mx.array, mx.array] | None]],
        array_masks: bool,
    ) -> mx.array:
        outs, at = [], 0
        for part, spread in layout:
            rows, width, size = len(part.counts), part.width, sum(part.counts)
            piece = x[0, at : at + size]
            if spread is not None:
                piece = piece[spread[0]]
            slots.activate(part.planned)
            if self.selection is not None:
                self.selection.rows(part.row_adapters())
            # The layer's own mask: a slot's, or a window's ring.
            mask = cache.make_mask(width, return_array=array_masks)
            out = layer.self_attn(piece.reshape(rows, width, -1), mask, cache)
            out = out.reshape(rows * width, -1)
            outs.append(out[spread[1]] if spread is not None else out)
            at += size
        return mx.concatenate(outs)[None]


def read_part(
    model: Any, mixed: MixedForward | None, slots: Slots, part: Part, at: Sequence[int]
) -> mx.array | None:
    """The logits of the last real token of each row of `part` in `at` (None: no row), from
    one pass of `model` reading the part into `slots`, each row applying its adapter; through
    `mixed` where the family allows it, so that only those positions go through the
    vocabulary projection."""
    counts = part.counts
    if mixed is not None:
        starts = list(itertools.accumulate(counts, initial=0))
        return mixed(slots, [part], [starts[e] + counts[e] - 1 for e in at])
    slots.activate(part.planned)
    bank = bank_of(model)
    if bank is not None:
        bank.selection.rows(part.row_adapters())
    logits = model(mx.array(part.tokens), cache=slots.caches)
    if bank is not None:
        bank.selection.rows(())
    if not at:
        return None
    if len(at) == 1:
        return logits[at[0], counts[at[0]] - 1][None]
    return logits[mx.array(list(at)), mx.array([counts[e] - 1 for e in at])]
