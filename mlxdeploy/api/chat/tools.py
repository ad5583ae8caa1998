"""Tool calling on the wire: the `tools` a chat request offers, its `tool_choice`, the calls in
an assistant message, and their conversion into the engine's `ToolUse`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, field_validator

from ...engine.api import Tool, ToolCall, ToolUse
from ..errors import InvalidRequest
from ..wire import WireModel, enforceable

# OpenAI's rule for function names; it also keeps a name safe inside any call format.
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDefinition(WireModel):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None  # every call is held to its schema either way

    _enforceable = field_validator("parameters")(enforceable)

    def to_tool(self) -> Tool:
        parameters = self.parameters if self.parameters is not None else {"type": "object"}
        return Tool(self.name, self.description, json.dumps(parameters, ensure_ascii=False))


class ToolDefinition(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: ChosenFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(WireModel):
    name: str
    arguments: str


class MessageToolCall(WireModel):
    """A call in an assistant message of the conversation (the client sends it back)."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction

    def to_call(self) -> ToolCall:
        return ToolCall(self.id, self.function.name, self.function.arguments)


def tool_use(
    tools: list[ToolDefinition] | None,
    choice: ToolChoice | None,
    parallel: bool | None,
) -> ToolUse | None:
    """The engine's ToolUse for a chat request; None when the model may call nothing."""
    named = isinstance(choice, NamedToolChoice)
    picked = choice.function.name if isinstance(choice, NamedToolChoice) else choice
    return offered([tool.function.to_tool() for tool in tools or []], picked, named, parallel)


def offered(
    tools: Sequence[Tool], choice: str | None, named: bool, parallel: bool | None
) -> ToolUse | None:
    """The tool use every API's request resolves to. `choice`: "none", "auto", "required", or
    (`named`) the one function's name; None is auto. `parallel`: whether the model may make
    several calls (None: not said); a forced choice makes one call unless the request asks for
    several (a small model would repeat the forced call until its token limit). A choice that
    needs tools without any, a repeated name, or a named function not offered is a 400, as in
    OpenAI's API."""
    if not tools:
        if named or choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools; send tools", param="tool_choice")
        return None
    names = [tool.name for tool in tools]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidRequest(f"tools: function names must be unique: {duplicates}", param="tools")
    if choice == "none" and not named:
        return None
    if named and choice not in names:
        raise InvalidRequest(
            f"tool_choice names function '{choice}', which is not in tools", param="tool_choice"
        )
    if choice == "required":  # one call, unless several are asked for
        return ToolUse(tuple(tools), "required", bool(parallel))
    return ToolUse(tuple(tools), choice or "auto", True if parallel is None else parallel)
