"""How a model writes tool calls: mlx-lm's tool parsers (`mlx_lm.tool_parsers`), named by the
spec's `tool_parser` or inferred from the chat template and vocabulary as mlx-lm does.

A parser gives the markers around a call and parses a call's text. For the formats whose
arguments are one JSON object after a fixed header, a `CallShape` says exactly how a call is
written: calls in those formats stream their arguments piece by piece, and constrained decoding
can force a call (tool_choice required or named) with schema-valid arguments. Other formats are
parsed when their call is complete.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import regex


@dataclass(frozen=True)
class CallShape:
    """One call is written `start + head(name) + <arguments JSON object> + tail + end`;
    parallel calls are joined by `separator`. `header` matches the head at the start of a
    call's text (after `start`) and captures the name."""

    head: str  # with {name}
    tail: str
    separator: str
    header: regex.Pattern[str]

    def head_of(self, name: str) -> str:
        return self.head.format(name=name)


SHAPES: dict[str, CallShape] = {
    # <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>  (Hermes, Qwen 2.5 and 3)
    "json_tools": CallShape(
        head='\n{{"name": "{name}", "arguments": ',
        tail="}\n",
        separator="\n",
        header=regex.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_.-]+)"\s*,\s*"arguments"\s*:\s*'),
    ),
    # [TOOL_CALLS]f[ARGS]{...}  (Mistral's tokenizer v11 and later)
    "mistral": CallShape(
        head="{name}[ARGS]",
        tail="",
        separator="",
        header=regex.compile(r"\s*([A-Za-z0-9_-]+)\s*\[ARGS\]\s*"),
    ),
}


@dataclass(frozen=True)
class ToolFormat:
    name: str  # the mlx-lm parser's module name
    start: str  # opens a call
    end: str  # closes it ("" when a call ends with its arguments)
    parse: Callable[[str, Any], Any]  # mlx-lm's parse_tool_call(text, tools)
    shape: CallShape | None  # None: parsed whole, never constrained

    def parse_calls(self, text: str, tools: Any) -> list[tuple[str, str]]:
        """(name, arguments JSON) of each call in a call's text; ValueError when it does not
        parse."""
        parsed = self.parse(text, tools)
        calls = parsed if isinstance(parsed, list) else [parsed]
        return [(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in calls]


def load_format(name: str) -> ToolFormat:
    module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
    return ToolFormat(
        name=name,
        start=module.tool_call_start,
        end=module.tool_call_end,
        parse=module.parse_tool_call,
        shape=SHAPES.get(name),
    )


def infer_format(tokenizer: Any) -> ToolFormat | None:
    """mlx-lm's own inference, run on the template in use (the spec's may replace the
    tokenizer's)."""
    from .mlx_lm_internals import infer_tool_parser

    try:
        name = infer_tool_parser(tokenizer)
    except Exception:  # a tokenizer without a vocabulary to look at
        return None
    return None if name is None else load_format(name)
