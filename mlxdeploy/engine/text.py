"""Incremental detokenization with stop words.

The streamed pieces must join to exactly the text of decoding all tokens at once, leading
spaces included. mlx-lm's streaming detokenizers decode token by token and were seen dropping
the first token's leading space; here each step decodes a short window of tokens that starts
before the new ones and emits the difference, which is exact for byte-level BPE and
SentencePiece alike. Text that ends in an incomplete UTF-8 sequence, or that could be the
start of a stop word, is held back until it is settled.

For requests that ask for log-probabilities, each token's text is the text its step settled,
and `TextStream.logprobs` hands out the tokens whose text a piece completes, so the tokens of
the whole answer join to exactly its text (see `LogprobTrail`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .api import TokenLogprob
from .mlx_lm_internals import wrapped_tokenizer

if TYPE_CHECKING:
    from .logprobs import TokenScores

Decode = Callable[[Sequence[int]], str]


def fast_decode(tokenizer: Any) -> Decode:
    """`tokenizer.decode`, or the Rust tokenizer's own decode when it gives the same text.
    Streams decode twice per token per request; transformers' wrapper adds ~5 us of Python to
    each call (1.5 ms per decode step at 64 requests on a CPU, against 0.35 ms)."""
    inner = wrapped_tokenizer(tokenizer)
    wrapped = tokenizer if inner is None else inner
    backend = getattr(wrapped, "backend_tokenizer", None)
    if backend is None or getattr(wrapped, "clean_up_tokenization_spaces", True):
        return tokenizer.decode  # type: ignore[no-any-return]
    return partial(backend.decode, skip_special_tokens=False)


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

    def texts_of(self, tokens: Sequence[int]) -> list[str]:
        """The text each of `tokens` would settle if it came next, without holding back an
        incomplete character (it shows as U+FFFD). Call before `add`."""
        window = self.tokens[self.prefix_offset :]
        prefix = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        return [self.decode([*window, token])[len(prefix) :] for token in tokens]

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
    word: str | None = None  # the stop word that ended the text, once one has

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
        """Where the earliest stop word starts (the first listed of those starting there);
        remembers which it is."""
        hits = [(i, w) for w in self.stop_words if (i := self.pending.find(w)) >= 0]
        if not hits:
            return None
        at, self.word = min(hits, key=lambda hit: hit[0])
        return at

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
class _Scored:
    token: int
    text: str  # what this token's step settled
    end: int  # where its text ends in the settled text
    scores: TokenScores
    others: dict[int, str]  # the alternatives' texts

    def report(self, text: str) -> TokenLogprob:
        """This token as reported, its text `text` (all of it, or the part before a cut)."""
        texts = [self.text if t == self.token else self.others[t] for t, _ in self.scores.top]
        top = tuple(
            (alt, alt.encode(), logprob)
            for alt, (_, logprob) in zip(texts, self.scores.top, strict=True)
        )
        return TokenLogprob(text, text.encode(), self.scores.logprob, top)


@dataclass
class LogprobTrail:
    """Scored tokens whose text is settled but not yet emitted.

    The settled text is the detokenizer's output; the emitted text is a prefix of it (the stop
    matcher only holds back and cuts). A token is handed out once the emitted text covers its
    own; when the stream ends, a token the stop word cut into is handed out with the part of
    its text before the cut, and the tokens after it are dropped."""

    pending: deque[_Scored] = field(default_factory=deque)
    settled: int = 0
    emitted: int = 0

    def add(self, token: int, text: str, scores: TokenScores, others: dict[int, str]) -> None:
        self.settled += len(text)
        self.pending.append(_Scored(token, text, self.settled, scores, others))

    def extend_last(self, text: str) -> None:
        """Text the detokenizer settled without a new token (its flush at the end)."""
        self.settled += len(text)
        if self.pending:
            last = self.pending[-1]
            last.text, last.end = last.text + text, self.settled

    def take(self, emitted: int, final: bool) -> tuple[TokenLogprob, ...]:
        """The tokens covered once `emitted` more characters are out. A token that settled no
        text (it ends inside a character) waits for the token after it, which carries the
        character, so the two go out together."""
        self.emitted += emitted
        count = 0
        for i, scored in enumerate(self.pending):
            if scored.end > self.emitted:
                break
            if scored.text or final:
                count = i + 1
        out = []
        for _ in range(count):
            head = self.pending.popleft()
            out.append(head.report(head.text))
        if final and self.pending:
            head = self.pending[0]
            start = head.end - len(head.text)
            if start < self.emitted:
                out.append(head.report(head.text[: self.emitted - start]))
            self.pending.clear()
        return tuple(out)


@dataclass
class TextStream:
    """Tokens in, final text out, with the request's stop words applied."""

    detokenizer: Detokenizer
    matcher: StopMatcher
    trail: LogprobTrail | None = None  # made by the first scored token
    finished: bool = False

    @classmethod
    def create(cls, decode: Decode, stop_words: Sequence[str]) -> TextStream:
        return cls(Detokenizer(decode), StopMatcher(tuple(w for w in stop_words if w)))

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    @property
    def stop_word(self) -> str | None:
        """The stop word that ended the text; None while none has (or at end of sequence)."""
        return self.matcher.word

    def add(self, token: int, scores: TokenScores | None = None) -> str:
        if scores is None:
            return self.matcher.feed(self.detokenizer.add(token))
        ids = [t for t, _ in scores.top if t != token]
        others = dict(zip(ids, self.detokenizer.texts_of(ids), strict=True)) if ids else {}
        text = self.detokenizer.add(token)
        if self.trail is None:
            self.trail = LogprobTrail()
        self.trail.add(token, text, scores, others)
        return self.matcher.feed(text)

    def finish(self) -> str:
        self.finished = True
        flushed = self.detokenizer.flush()
        if self.trail is not None:
            self.trail.extend_last(flushed)
        return self.matcher.feed(flushed) + self.matcher.flush()

    def logprobs(self, piece: str) -> tuple[TokenLogprob, ...]:
        """The scored tokens whose text `piece` completes. Call once with every piece that
        `add` and `finish` return, empty ones included: at the end it also hands out what the
        last pieces left (a token cut by a stop word, say), with an empty piece if need be."""
        if self.trail is None:
            return ()
        return self.trail.take(len(piece), final=self.finished or self.stopped)
