"""The names a spec's `tool_parser` may take: mlx-lm's tool parsers, found on disk (listing
them imports neither mlx-lm nor mlx)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator


@functools.cache
def known_tool_parsers() -> tuple[str, ...]:
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(next(iter(spec.submodule_search_locations))) / "tool_parsers"
    return tuple(sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")))


def _known(name: str) -> str:
    known = known_tool_parsers()
    if name not in known:
        raise ValueError(f"unknown tool parser '{name}'; known: {', '.join(known)}")
    return name


ToolParserName = Annotated[str, AfterValidator(_known)]

TOOL_PARSER_HELP = (
    "How the model writes tool calls: one of mlx-lm's tool parsers (e.g. json_tools, for "
    "<tool_call> JSON as Hermes and Qwen write it); default: inferred from the chat template "
    "as mlx-lm does. Tools need a chat template that renders them."
)
