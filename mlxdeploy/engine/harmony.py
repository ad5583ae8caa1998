"""gpt-oss's harmony format: an answer is a series of messages, each
`<|start|>assistant<|channel|>NAME ...<|message|>BODY<|end|>`. The `analysis` channel is the
thinking, `final` the answer, and a message whose header names a recipient
(`to=functions.NAME`, in the commentary channel) is a tool call with a JSON body, ended by
`<|call|>` (which ends the answer: the client runs the tool). The chat template ends the prompt
with `<|start|>assistant`, so the answer starts in a message's header.

Everything here works on token ids: the markers are special tokens, so the split is exact."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .api import Event, Reasoning, ToolCallArguments, ToolCallStarted
from .reasoning import ThinkingBudget, ThinkState
from .text import Decode, Detokenizer

log = logging.getLogger("mlxdeploy.engine")

Part = Literal["header", "body", "between"]
Kind = Literal["analysis", "answer", "call"]
RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")
MARKERS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|call|>", "<|return|>")


@dataclass(frozen=True)
class HarmonyTokens:
    """The harmony markers' token ids."""

    start: int
    end: int
    message: int
    channel: int
    call: int
    returned: int
    analysis: tuple[int, ...]  # the analysis channel's name

    @classmethod
    def of(cls, tokenizer: Any) -> HarmonyTokens | None:
        """The markers, when the vocabulary has them all (gpt-oss's o200k_harmony)."""
        vocab = tokenizer.get_vocab()
        if not all(marker in vocab for marker in MARKERS):
            return None
        start, end, message, channel, call, returned = (vocab[m] for m in MARKERS)
        analysis = tuple(tokenizer.encode("analysis", add_special_tokens=False))
        return cls(start, end, message, channel, call, returned, analysis)

    @property
    def name(self) -> str:
        return "harmony channels (analysis)"

    @property
    def stops(self) -> tuple[int, ...]:
        return (self.call,)  # a call ends the answer: the client runs the tool

    def splitter(self, prompt: Sequence[int], decode: Decode) -> HarmonySplitter:
        return HarmonySplitter(self.position(prompt), decode)

    def gate(self, prompt: Sequence[int]) -> ThinkState | None:
        return None  # a grammar holds from the first token: its answer is not split

    def budget(self, budget: int, prompt: Sequence[int]) -> ThinkingBudget:
        return ThinkingBudget(budget, lambda: self.position(prompt), self.end)

    def position(self, prompt: Sequence[int]) -> HarmonyPosition:
        """Where the prompt leaves the answer: after its last `<|start|>`, in a header."""
        starts = [i for i, token in enumerate(prompt) if token == self.start]
        at = HarmonyPosition(self)
        for token in prompt[starts[-1] :] if starts else ():
            at.advance(token)
        return at


@dataclass
class HarmonyPosition:
    """Which part of which message the answer is in, one token at a time."""

    markers: HarmonyTokens
    part: Part = "between"
    kind: Kind = "answer"
    header: list[int] = field(default_factory=list)
    decode: Decode | None = None  # to read headers; None: only the markers are known

    @property
    def inside(self) -> bool:
        return self.part == "body" and self.kind == "analysis"

    @property
    def may_open(self) -> bool:
        return False

    @property
    def settled(self) -> bool:
        return False  # another analysis message may always come

    def advance(self, token: int) -> bool:
        """Move past `token`; True when it is a marker or a header's (not a body's)."""
        m = self.markers
        if token == m.start:
            self.part, self.header = "header", []
        elif token == m.message and self.part == "header":
            self.part, self.kind = "body", self._kind()
        elif token in (m.end, m.call, m.returned) and self.part == "body":
            self.part = "between"
        elif self.part == "header" or (token == m.channel and self.part == "between"):
            self.part = "header"
            self.header.append(token)
        else:
            return self.part == "between" and token in (m.end, m.call, m.returned)
        return True

    def _kind(self) -> Kind:
        """A header's kind: analysis by its channel's name, a call when it names a recipient
        (read only with a decoder: a budget needs to know the analysis alone)."""
        m, header = self.markers, self.header
        channels = [i for i, token in enumerate(header) if token == m.channel]
        name = header[channels[-1] + 1 :] if channels else []
        if tuple(name[: len(m.analysis)]) == m.analysis:
            return "analysis"
        if self.decode is not None and RECIPIENT.search(self.decode(header)):
            return "call"
        return "answer"

    @property
    def recipient(self) -> str:
        match = RECIPIENT.search(self.decode(self.header)) if self.decode else None
        return match.group(1) if match else ""


@dataclass
class HarmonySplitter:
    """One request's harmony answer: the analysis channel's text becomes `Reasoning`, a call
    message a tool call (once its body is whole), the final channel's text the answer's."""

    position: HarmonyPosition
    decode: Decode
    tokens: int = 0  # analysis tokens
    calls: int = 0
    _body: Detokenizer | None = None

    def __post_init__(self) -> None:
        self.position.decode = self.decode

    @property
    def thinking(self) -> bool:
        return True  # any token may be a marker

    def feed(self, token: int) -> list[Event] | None:
        at = self.position
        was_body, kind = at.part == "body", at.kind
        if not at.advance(token):  # a body's token
            return self._body_token(token)
        if was_body and at.part != "body":  # the message ended
            return self._close(kind, whole=True)
        if at.part == "body":
            self._body = Detokenizer(self.decode)
        return []

    def _body_token(self, token: int) -> list[Event] | None:
        at = self.position
        if at.part != "body" or at.kind == "answer":
            return None  # the answer's text (or text outside any message: shown as it is)
        if self._body is None:
            self._body = Detokenizer(self.decode)
        piece = self._body.add(token)
        if at.kind == "analysis":
            self.tokens += 1
            return [Reasoning(piece)] if piece else []
        return []  # a call's body: read whole when it ends

    def finish(self, cut: bool = False) -> list[Event]:
        at = self.position
        if at.part != "body" or at.kind == "answer":
            return []
        at.part = "between"
        return self._close(at.kind, whole=not cut)

    def answer(self, text: str) -> str:
        return text

    def _close(self, kind: Kind, whole: bool) -> list[Event]:
        body, self._body = self._body, None
        if kind == "call":
            return self._call("" if body is None else body.decode(body.tokens), whole)
        text = "" if body is None else body.flush()
        return [Reasoning(text)] if kind == "analysis" and text else []

    def _call(self, arguments: str, whole: bool) -> list[Event]:
        name = self.position.recipient
        if not whole or not _is_object(arguments):
            log.info("dropped a tool call whose arguments are not a whole JSON object")
            return []
        index, self.calls = self.calls, self.calls + 1
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        return [ToolCallStarted(index, call_id, name), ToolCallArguments(index, arguments)]


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
