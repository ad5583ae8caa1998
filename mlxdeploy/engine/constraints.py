"""Constrained decoding: one llguidance matcher per constrained request, applied as that
request's last logits processor.

mlx-lm calls a request's processors once per sampled token, the first one (sampled right after
prefill) included, with the token history so far. So the processor's n-th call comes after the
request's (n-1)-th sampled token: it feeds that token to the matcher, then masks every token the
grammar does not allow next. Once the document is complete the grammar allows only the
end-of-sequence token, so the request ends with `stop` exactly when its JSON is whole.
Requests without a constraint get no processor and pay nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import mlx.core as mx
import numpy as np

from ..grammar import grammar_of
from .api import PromptRejected, SamplingParams
from .mlx_lm_internals import wrapped_tokenizer
from .reasoning import ThinkState
from .tool_formats import ToolFormat
from .tool_grammar import tool_grammar


@dataclass
class Guide:
    """The logits processor of one constrained request.

    A request's first token is sampled by mlx-lm's prompt step, which calls the guide as a
    processor on its row; every later step masks all guided rows of the batch at once
    (`mask_guided_rows`), their masks computed in parallel by llguidance's executor."""

    matcher: llguidance.LLMatcher
    eos: int  # the token that ends the answer
    executor: llguidance.LLExecutor  # shared by the guides of one model
    words: int  # 32-bit words in the tokenizer's token mask
    started: bool = False  # the first call comes before any token was sampled
    error: str | None = None  # the matcher refused a token: the answer cannot be trusted
    # A thinking model's answer: the grammar holds from the end of the thinking on; while the
    # answer may still open it, its start tag is allowed too. None: from the first token.
    thinking: ThinkState | None = None

    def advance(self, token: int) -> None:
        """Feed the token sampled last (nothing before the first call)."""
        started, self.started = self.started, True
        if not started or self.error is not None:
            return
        if self.thinking is not None and self.thinking.state != "done":
            if self.thinking.advance(token):
                return  # a token of the thinking (its end tag included): not the grammar's
        if not self.matcher.consume_token(token):
            self.error = self.matcher.get_error() or "the grammar refused a token"

    @property
    def waiting(self) -> bool:
        """Inside the thinking: the grammar does not apply yet."""
        return self.thinking is not None and self.thinking.state == "inside"

    @property
    def also_allowed(self) -> int | None:
        """A token allowed besides the grammar's: the thinking's start tag, while the answer
        may still open its thinking."""
        if self.thinking is not None and self.thinking.state == "maybe":
            return self.thinking.tags.start
        return None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        token = tokens[-1].item() if self.started else -1
        assert isinstance(token, int)
        self.advance(token)
        return logits if self.waiting else mask_guided_rows(logits, [(0, self)])


def mask_guided_rows(logits: mx.array, guided: Sequence[tuple[int, Guide]]) -> mx.array:
    """`logits` with every token its row's grammar does not allow next set to -inf; rows are
    (row of `logits`, its guide), each guide already advanced past the token sampled last.
    Rows without a guide allow everything; a guide whose matcher failed allows only the end of
    the answer (the worker reports it). One mask for the whole batch: no gather, no scatter."""
    batch, width = logits.shape
    known = guided[0][1].words  # the tokenizer's mask; logits may be wider (padding)
    words = max((width + 31) // 32, known)
    bitmask = np.full((batch, words), -1, dtype=np.int32)
    masks = np.zeros((batch, known), dtype=np.int32)
    live = [(guide.matcher, row) for row, guide in guided if guide.error is None]
    if live:
        llguidance.numpy.fill_next_token_bitmask_par(guided[0][1].executor, live, masks)
    for row, guide in guided:
        if guide.error is not None:
            masks.view(np.uint32)[row, guide.eos // 32] = 1 << (guide.eos % 32)
        extra = guide.also_allowed
        if extra is not None and guide.error is None:
            masks.view(np.uint32)[row, extra // 32] |= np.uint32(1 << (extra % 32))
        bitmask[row] = 0  # padding past the tokenizer's vocabulary is never allowed
        bitmask[row, :known] = masks[row]
    bits = (mx.array(bitmask)[:, :, None] >> mx.arange(32, dtype=mx.int32)) & 1
    allowed = bits.reshape(batch, words * 32)[:, :width].astype(mx.bool_)
    return mx.where(allowed, logits, -mx.inf)


class Grammars:
    """Builds guides for one model. The llguidance tokenizer takes ~1 s to build at a 49k
    vocabulary, so it is built once, on the first constrained request."""

    def __init__(self, tokenizer: Any, vocab_size: int | None):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._executor = llguidance.LLExecutor()
        self._eos = _end_token(tokenizer)

    def guide(
        self,
        params: SamplingParams,
        tool_format: ToolFormat | None,
        thinking: ThinkState | None = None,
    ) -> Guide | None:
        """A fresh guide for a request's constraint and tool use, None when it has neither;
        PromptRejected when the grammar does not compile for this model. Tool use is
        constrained in formats with a call shape. `thinking`: where a thinking model's answer
        starts (the grammar holds after its thinking)."""
        schema = None if params.constraint is None else params.constraint.schema
        use = params.tools
        if use is not None and tool_format is not None and tool_format.shape is not None:
            grammar, param = tool_grammar(tool_format, use, schema, self._marker), "tools"
        elif schema is not None:
            grammar, param = _schema_grammar(schema), "response_format"
        else:
            return None
        matcher = llguidance.LLMatcher(self._llt(), grammar, log_level=0)
        if matcher.is_error():
            raise PromptRejected(f"{param}: {matcher.get_error()}", param=param)
        words = (self._llt().vocab_size + 31) // 32
        return Guide(matcher, self._eos, self._executor, words, thinking=thinking)

    def _marker(self, text: str) -> str:
        """A marker as the grammar spells it: a special token by its id (its text never
        appears in the token's bytes), other text as a literal."""
        llt = self._llt()
        ids = llt.tokenize_str(text, parse_special=True)
        if len(ids) == 1 and llt.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return json.dumps(text)

    def _llt(self) -> llguidance.LLTokenizer:
        if self._lltokenizer is None:
            hf = wrapped_tokenizer(self._tokenizer)
            hf = self._tokenizer if hf is None else hf
            self._lltokenizer = llguidance.hf.from_tokenizer(
                hf, n_vocab=self._vocab_size, eos_token=self._eos
            )
        return self._lltokenizer


def _schema_grammar(schema: str) -> str:
    try:
        return grammar_of(schema)
    except ValueError as exc:
        raise PromptRejected(f"response_format: {exc}", param="response_format") from None


def _end_token(tokenizer: Any) -> int:
    """The one end-of-sequence token the grammar allows: the tokenizer's own when the worker
    stops on it, else one the worker stops on (mlx-lm may add ids from generation_config)."""
    eos = int(tokenizer.eos_token_id)
    stops = sorted(getattr(tokenizer, "eos_token_ids", None) or [eos])
    return eos if eos in stops else stops[0]
