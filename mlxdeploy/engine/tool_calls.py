"""Splitting a model's answer into content and tool calls, as its text arrives.

Text outside a call's markers is content. A call in a format with a `CallShape` is read as
its header names the function and its arguments follow; a call in another format is parsed by
mlx-lm's parser once it is complete. A call is announced only once its arguments are whole, so
an answer cut by its token limit never carries a call whose arguments do not parse. The markup
itself never reaches the content.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from .api import Event, Text, Tool, ToolCallArguments, ToolCallStarted
from .prompt import tool_dicts
from .tool_formats import ToolFormat

log = logging.getLogger("mlxdeploy.engine")


@dataclass
class JsonObjectEnd:
    """Finds where one JSON object ends, one piece of text at a time."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def feed(self, text: str) -> int | None:
        """The length of `text` up to and including the object's closing brace; None when the
        object goes on."""
        for i, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


@dataclass
class CallSplitter:
    """One request's answer: text pieces in, content and tool-call events out."""

    format: ToolFormat
    tools: Sequence[Tool]
    calls: int = 0  # calls announced so far (complete ones)
    _pending: str = ""  # text not yet judged
    _in_call: bool = False
    _call: str = ""  # the current call's text after its start marker
    _streaming: bool = False  # the current call's header was read: its arguments stream
    _arguments: JsonObjectEnd | None = None  # None: the current call's arguments are complete
    _closed: int = 0  # closing parts (tail, end marker) of the current call seen
    _events: list[Event] = field(default_factory=list)
    _held: list[Event] = field(default_factory=list)  # the current call's, until it is whole

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        while self._pending and self._advance():
            pass
        return self._take()

    def finish(self, cut: bool = False) -> list[Event]:
        """The end of the answer: an open call that never closed is parsed as it stands,
        unless the answer was `cut` by its token limit (its call is dropped, not guessed)."""
        if self._held:
            log.info("dropped a tool call whose arguments the token limit cut")
            self._held = []
        if self._in_call and not self._streaming and not cut:
            self._parse_whole(self._call + self._pending)
        elif not self._in_call and self._is_content(self._pending):
            self._content(self._pending)
        self._pending = ""
        return self._take()

    # -- states -----------------------------------------------------------------------
    def _advance(self) -> bool:
        """Consume what the pending text settles; False when it must wait for more."""
        if not self._in_call:
            return self._in_content()
        if self._streaming:
            return self._in_arguments() if self._arguments is not None else self._in_tail()
        return self._in_header()

    def _in_content(self) -> bool:
        start = self.format.start
        at = self._pending.find(start)
        if at < 0:
            keep = _partial_suffix(self._pending, start)
            ready = self._pending[: len(self._pending) - keep]
            if self._is_content(ready):
                self._content(ready)
                self._pending = self._pending[len(ready) :]
            return False
        before = self._pending[:at]
        self._content(before if self._is_content(before) else "")
        self._pending = self._pending[at + len(start) :]
        self._in_call, self._call, self._streaming = True, "", False
        return True

    def _in_header(self) -> bool:
        shape = self.format.shape
        self._call += self._pending
        self._pending = ""
        if shape is not None:
            match = shape.header.match(self._call, partial=True)
            if match is not None and not match.partial and self._call[match.end() :]:
                self._start_streaming(match.group(1), self._call[match.end() :])
                return True
            if match is not None:
                return False  # the header may still come
        end = self.format.end
        if end and end in self._call:
            body, rest = self._call.split(end, 1)
            self._parse_whole(body)
            self._pending, self._in_call = rest, False
            return True
        return False

    def _start_streaming(self, name: str, rest: str) -> None:
        self._held = [ToolCallStarted(self.calls, _call_id(), name)]
        self._streaming, self._arguments = True, JsonObjectEnd()
        self._pending = rest.lstrip()

    def _in_arguments(self) -> bool:
        assert self._arguments is not None
        size = self._arguments.feed(self._pending)
        piece = self._pending if size is None else self._pending[:size]
        if piece:
            self._held.append(ToolCallArguments(self.calls, piece))
        if size is None:
            self._pending = ""
            return False
        self._pending, self._arguments = self._pending[size:], None
        self._events.extend(self._held)  # the arguments are whole: announce the call
        self._held = []
        self.calls += 1
        return True

    def _in_tail(self) -> bool:
        """After the arguments: the shape's tail and the end marker close the call (blank
        space around them is not significant)."""
        shape = self.format.shape
        assert shape is not None
        parts = [part for part in (shape.tail.strip(), self.format.end) if part]
        while self._closed < len(parts):
            text, part = self._pending.lstrip(), parts[self._closed]
            if text.startswith(part):
                self._pending, self._closed = text[len(part) :], self._closed + 1
            elif part.startswith(text):
                return False  # the closing markup is still arriving
            else:
                log.warning("a tool call's markup did not close as %s expects", self.format.name)
                break
        self._in_call, self._closed = False, 0
        return True

    # -- output -----------------------------------------------------------------------
    def _parse_whole(self, body: str) -> None:
        try:
            calls = self.format.parse_calls(body, tool_dicts(self.tools))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("a tool call did not parse (%s): %r", exc, body[:200])
            return
        for name, arguments in calls:
            self._events.append(ToolCallStarted(self.calls, _call_id(), name))
            self._events.append(ToolCallArguments(self.calls, arguments))
            self.calls += 1

    def _is_content(self, text: str) -> bool:
        """Blank text between or after calls is markup, not content."""
        return bool(text.strip()) or (bool(text) and not self.calls)

    def _content(self, text: str) -> None:
        if text:
            self._events.append(Text(text))

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
