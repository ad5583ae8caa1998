"""The llguidance grammar (Lark) of a request's tool use, for formats with a `CallShape`.

- `required`: the answer is one call (or, with parallel calls, several) to any offered tool.
- a named function: the answer is one call to it.
- `auto`: free text (or the response format's JSON), until the model writes the call's start
  marker; from there on the call is constrained like the others (a lazy lexeme ends the free
  text at the marker; a marker that is a special token ends it by itself, as text never holds
  one).
Each call's arguments match its tool's JSON Schema. After the last call only the end of the
answer may follow.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..grammar import JSON_OPTIONS
from .api import ToolUse
from .tool_formats import ToolFormat

Marker = Callable[[str], str]  # a marker's Lark spelling: "<[id]>" for a special token, else text


def tool_grammar(fmt: ToolFormat, use: ToolUse, content_schema: str | None, marker: Marker) -> str:
    shape = fmt.shape
    assert shape is not None, "only formats with a call shape are constrained"
    tools = [t for t in use.tools if use.choice in ("auto", "required", t.name)]
    start, end = marker(fmt.start), marker(fmt.end) if fmt.end else ""
    bodies = " | ".join(f"body_{i}" for i in range(len(tools)))
    lines = ["%llguidance {}", f"body: {bodies}"]
    for i, tool in enumerate(tools):
        head, tail = json.dumps(shape.head_of(tool.name)), _literal(shape.tail)
        lines.append(f"body_{i}: {head} %json {_strict(tool.parameters)} {tail} {end}")
    several = use.parallel and tool_name(use) is None  # a named function: exactly one call
    more = f"({_literal(shape.separator)} call)*" if several else ""
    lines.append(f"call: {start} body")
    if use.choice == "auto" and start.startswith("<["):  # a special token ends free text
        content = "TEXT" if content_schema is None else f"%json {_strict(content_schema)}"
        text = "TEXT? " if content_schema is None else ""
        lines += [f"start: {content} | {text}call {more}", "TEXT: /(.|\\n)+/"]
    elif use.choice == "auto":
        content = "TEXT" if content_schema is None else f"%json {_strict(content_schema)}"
        lines += [
            f"start: {content} | opened {more}",
            "opened: opening body",
            f"opening[lazy]: TEXT {start}" if content_schema is None else f"opening: {start}",
            "TEXT: /(.|\\n)*/",
        ]
    else:
        lines.append(f"start: call {more}")
    return "\n".join(lines) + "\n"


def tool_name(use: ToolUse) -> str | None:
    """The one function a named tool_choice forces, else None."""
    return None if use.choice in ("auto", "required") else use.choice


def _strict(schema: str) -> str:
    """The schema with the JSON options every constrained answer uses (compact JSON)."""
    value = json.loads(schema)
    if isinstance(value, dict):
        value = {**value, "x-guidance": dict(JSON_OPTIONS)}
    return json.dumps(value, ensure_ascii=False)


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""
