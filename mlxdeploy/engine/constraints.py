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
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

from ..spec.grammar import grammar_of
from .api import PromptRejected, SamplingParams
from .tool_formats import ToolFormat
from .tool_grammar import tool_grammar


@dataclass
class Guide:
    """The logits processor of one constrained request."""

    matcher: llguidance.LLMatcher
    eos: int  # the token that ends the answer
    started: bool = False  # the first call comes before any token was sampled
    error: str | None = None  # the matcher refused a token: the answer cannot be trusted

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        m = self.matcher
        if self.started and self.error is None:
            token = tokens[-1].item()
            assert isinstance(token, int)
            if not m.consume_token(token):
                self.error = m.get_error() or "the grammar refused a token"
        self.started = True
        if self.error is not None:  # end the answer now; the worker reports the failure
            return mx.where(mx.arange(logits.shape[-1]) == self.eos, logits, -mx.inf)
        bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), np.uint8), bitorder="little")
        width = logits.shape[-1]
        if bits.size < width:  # logits wider than the tokenizer: the padding is never allowed
            bits = np.pad(bits, (0, width - bits.size))
        allowed = mx.array(bits[:width].view(np.bool_))
        return mx.where(allowed, logits, -mx.inf)


class Grammars:
    """Builds guides for one model. The llguidance tokenizer takes ~1 s to build at a 49k
    vocabulary, so it is built once, on the first constrained request."""

    def __init__(self, tokenizer: Any, vocab_size: int | None):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._eos = _end_token(tokenizer)

    def guide(self, params: SamplingParams, tool_format: ToolFormat | None) -> Guide | None:
        """A fresh guide for a request's constraint and tool use, None when it has neither;
        PromptRejected when the grammar does not compile for this model. Tool use is
        constrained in formats with a call shape."""
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
        return Guide(matcher, self._eos)

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
            hf = getattr(self._tokenizer, "_tokenizer", self._tokenizer)  # mlx-lm's wrapper
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
