"""Incremental detokenization with stop words.

The streamed pieces must join to exactly the text of decoding all tokens at once, leading
spaces included. mlx-lm's streaming detokenizers decode token by token and were seen dropping
the first token's leading space; here each step decodes a short window of tokens that starts
before the new ones and emits the difference, which is exact for byte-level BPE and
SentencePiece alike. Text that ends in an incomplete UTF-8 sequence, or that could be the
start of a stop word, is held back until it is settled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Decode = Callable[[Sequence[int]], str]
REPLACEMENT = "\ufffd"


@dataclass
class Detokenizer:
    decode: Decode
    tokens: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def add(self, token: int) -> str:
        """Add a token; return the text it settles (possibly empty)."""
        self.tokens.append(token)
        prefix = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.decode(self.tokens[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
        return full[len(prefix) :]

    def flush(self) -> str:
        """The text of tokens not yet emitted (an incomplete character at the end, say)."""
        prefix = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.decode(self.tokens[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return full[len(prefix) :]


@dataclass
class StopMatcher:
    """Finds the earliest stop word in the text and holds back a possible partial match."""

    stop_words: tuple[str, ...]
    pending: str = ""
    stopped: bool = False

    def feed(self, text: str) -> str:
        """Return text safe to emit; sets `stopped` when a stop word appears."""
        if self.stopped:
            return ""
        self.pending += text
        hit = self._first_hit()
        if hit is not None:
            self.stopped = True
            out, self.pending = self.pending[:hit], ""
            return out
        keep = self._partial_suffix()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _first_hit(self) -> int | None:
        hits = [i for i in (self.pending.find(w) for w in self.stop_words) if i >= 0]
        return min(hits) if hits else None

    def _partial_suffix(self) -> int:
        """Length of the longest suffix of `pending` that is a proper prefix of a stop word."""
        best = 0
        for word in self.stop_words:
            for size in range(min(len(word) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(word[:size]):
                    best = size
                    break
        return best


@dataclass
class TextStream:
    """Tokens in, final text out, with the request's stop words applied."""

    detokenizer: Detokenizer
    matcher: StopMatcher

    @classmethod
    def create(cls, decode: Decode, stop_words: Sequence[str]) -> TextStream:
        return cls(Detokenizer(decode), StopMatcher(tuple(w for w in stop_words if w)))

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    def add(self, token: int) -> str:
        return self.matcher.feed(self.detokenizer.add(token))

    def finish(self) -> str:
        return self.matcher.feed(self.detokenizer.flush()) + self.matcher.flush()
