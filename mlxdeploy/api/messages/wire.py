"""Anthropic's Messages API on the wire: the request (system, messages of content blocks,
tools), the message it answers with, and the conversion into the engine's types."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...engine.api import Finished, Tool, ToolCall, ToolUse, Turn
from ...spec.formats import ResponseFormat
from ...spec.reasoning import Effort
from .. import unsupported
from ..chat.tools import FunctionName, offered
from ..errors import InvalidRequest
from ..reasoning import ThinkingAsk
from ..unused import unused_fields
from ..wire import MAX_TOKENS_LIMIT, Float, SamplingFields, WireModel, enforceable, type_of


def _kind(value: Any) -> str | None:
    return type_of(value)


class TextBlock(WireModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(WireModel):
    """A call the assistant made, sent back as part of the conversation."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(WireModel):
    """What the client's tool returned for call `tool_use_id`."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: StrictBool = False

    def text(self) -> str:
        text = (
            self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        )
        return f"error: {text}" if self.is_error else text


class ThinkingBlock(WireModel):
    """An earlier answer's thinking, sent back with the signature that sealed it."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(WireModel):
    """An earlier answer's thinking, sealed whole (`data`)."""

    type: Literal["redacted_thinking"]
    data: str


class MediaBlock(WireModel):
    """An image or a document: this server's models read text only (a 400 naming the model)."""

    type: Literal["image", "document"]


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[MediaBlock, Tag("image")]
    | Annotated[MediaBlock, Tag("document")],
    Discriminator(_kind),
]


class MessageParam(WireModel):
    role: Literal["user", "assistant", "system"]  # system: a system message in the middle
    content: str | list[ContentBlock]

    def blocks(self) -> list[Any]:
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return list(self.content)


class ToolParam(WireModel):
    name: FunctionName
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    # Hints: offered either way (tool search is not run here), held to its schema either way.
    defer_loading: StrictBool | None = None
    strict: StrictBool | None = None

    _enforceable = field_validator("input_schema")(enforceable)

    def to_tool(self) -> Tool:
        return Tool(self.name, self.description, json.dumps(self.input_schema, ensure_ascii=False))


class ServerTool(WireModel):
    """A tool Anthropic's servers run (web search, code execution, ...): declined here."""

    type: Annotated[str, Field(pattern=r"^[a-z_]+_\d{8}$")]  # web_search_20250305, ...
    name: str | None = None


class ToolChoiceParam(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: StrictBool | None = None

    @model_validator(mode="after")
    def _name_iff_tool(self) -> ToolChoiceParam:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("name is required with type tool, and only then")
        return self


class OutputFormat(WireModel):
    """`output_config.format`: the answer is JSON that matches `schema`."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    _enforceable = field_validator("schema_")(enforceable)


class OutputConfig(WireModel):
    format: OutputFormat | None = None
    effort: Effort | None = None  # a thinking model's effort (a hint to one that does not think)

    def response_format(self) -> ResponseFormat | None:
        if self.format is None:
            return None
        schema = {"name": "output", "schema": self.format.schema_}
        return ResponseFormat.model_validate({"type": "json_schema", "json_schema": schema})


class ThinkingParam(WireModel):
    """`thinking`: on with a budget, off, or adaptive (the effort decides); `display:
    omitted` leaves the thinking's text out of the answer (its signature still seals it)."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    display: Literal["summarized", "omitted"] | None = None

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> ThinkingParam:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking of type enabled needs budget_tokens")
        return self


class ThinkingTurns(WireModel):
    type: Literal["thinking_turns"]
    value: Annotated[StrictInt, Field(ge=0)]


class ContextEdit(WireModel):
    """One edit of `context_management`: clearing the thinking of earlier turns (applied
    here); clearing tool results is not supported (it would change the answer)."""

    type: Literal["clear_thinking_20251015"]
    keep: Literal["all"] | ThinkingTurns | None = None

    def kept(self) -> int | None:
        """How many of the latest assistant turns keep their thinking; None: all."""
        if self.keep == "all":
            return None
        return 1 if self.keep is None else self.keep.value


class ContextManagement(WireModel):
    edits: list[ContextEdit] = []

    def kept(self) -> int | None:
        kept = [edit.kept() for edit in self.edits]
        return min((k for k in kept if k is not None), default=None)


StopSequence = Annotated[str, Field(min_length=1)]


class Conversation(WireModel):
    """What a request says to the model: shared by messages and count_tokens."""

    model: str | None = None
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam | ServerTool] | None = None
    tool_choice: ToolChoiceParam | None = None
    context_management: ContextManagement | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any, info: ValidationInfo) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.MESSAGES, info)
        return data

    @model_validator(mode="after")
    def _ends_with_the_user(self) -> Conversation:
        if self.messages[-1].role == "assistant":
            raise InvalidRequest(
                "the last message is the assistant's: continuing a partial assistant message "
                "(prefill) is not supported; end with a user message",
                param="messages",
            )
        return self

    def turns(self, unseal: Unseal | None = None) -> list[Turn]:
        """The conversation as the chat format sees it: tool results become tool turns (before
        the user's own text in the same message), tool_use blocks the assistant's calls, and
        thinking blocks the assistant's thinking (`unseal` opens their signatures; thinking
        whose signature does not open is left out, and noted). `context_management`'s
        clear_thinking edit leaves out the thinking of all but the latest turns."""
        system = self.system if isinstance(self.system, str) else _joined(self.system or [])
        turns = [Turn("system", system)] if system else []
        names: dict[str, str] = {}
        for index, message in enumerate(self.messages):
            turns += _turns_of(message, index, names, unseal or _unsealable)
        kept = None if self.context_management is None else self.context_management.kept()
        return turns if kept is None else _clear_thinking(turns, kept)

    def thinking_ask(self) -> ThinkingAsk:
        """`thinking` and `output_config.effort`, in the words every API shares."""
        thinking = self.thinking
        effort = None if self.output_config is None else self.output_config.effort
        enabled = (
            None if thinking is None else {"enabled": True, "disabled": False}.get(thinking.type)
        )
        budget = None if thinking is None or thinking.type != "enabled" else thinking.budget_tokens
        param = "thinking" if thinking is not None else "output_config.effort"
        return ThinkingAsk(effort=effort, budget=budget, enabled=enabled, param=param)

    @property
    def thinking_shown(self) -> bool:
        """Whether the answer shows its thinking's text (`display: omitted` does not)."""
        return self.thinking is None or self.thinking.display != "omitted"

    def media(self) -> str | None:
        """Where the first image or document block is (for the 400 naming the model)."""
        for i, message in enumerate(self.messages):
            for j, block in enumerate(message.blocks()):
                if isinstance(block, MediaBlock):
                    return f"messages[{i}].content[{j}]"
        return None

    def tool_use(self) -> ToolUse | None:
        """The engine's ToolUse: `any` is required, `tool` names the one to call. Server
        tools (web search, ...) are not run here: declined, as offers the model may not take."""
        for index, tool in enumerate(self.tools or []):
            if isinstance(tool, ServerTool):
                unused_fields().decline(
                    f"tools[{index}]", "server tools are not run here", tool.type
                )
            elif tool.defer_loading:  # offered at once: there is no tool search here
                where = f"tools[{index}].defer_loading"
                unused_fields().decline(where, "tool search is not run here")
        offer = [tool for tool in self.tools or [] if isinstance(tool, ToolParam)]
        choice, tools = self.tool_choice, [tool.to_tool() for tool in offer]
        modes = {"auto": "auto", "any": "required", "none": "none"}
        picked = None if choice is None else choice.name or modes[choice.type]
        disabled = None if choice is None else choice.disable_parallel_tool_use
        parallel = None if disabled is None else not disabled
        named = choice is not None and choice.type == "tool"
        return offered(tools, picked, named, parallel)


def _joined(blocks: list[TextBlock]) -> str:
    return "".join(block.text for block in blocks)


def _turns_of(
    message: MessageParam, index: int, names: dict[str, str], unseal: Unseal
) -> list[Turn]:
    blocks = message.blocks()
    texts = [b for b in blocks if isinstance(b, TextBlock)]
    if message.role == "system":
        return [Turn("system", _joined(texts))]
    if message.role == "assistant":
        if any(isinstance(b, ToolResultBlock) for b in blocks):
            raise InvalidRequest(
                "tool_result blocks belong in user messages", param=f"messages[{index}].content"
            )
        calls = tuple(
            ToolCall(b.id, b.name, json.dumps(b.input, ensure_ascii=False))
            for b in blocks
            if isinstance(b, ToolUseBlock)
        )
        names.update((call.id, call.name) for call in calls)
        thought = _thinking(blocks, index, unseal)
        return [Turn("assistant", _joined(texts), calls, reasoning=thought)]
    if any(isinstance(b, ToolUseBlock) for b in blocks):
        raise InvalidRequest(
            "tool_use blocks belong in assistant messages", param=f"messages[{index}].content"
        )
    results = [
        Turn("tool", b.text(), tool_call_id=b.tool_use_id, name=names.get(b.tool_use_id))
        for b in blocks
        if isinstance(b, ToolResultBlock)
    ]
    return results + ([Turn("user", _joined(texts))] if texts or not results else [])


Unseal = Callable[[str], "str | None"]


def _unsealable(sealed: str) -> str | None:
    return None


def _thinking(blocks: list[Any], index: int, unseal: Unseal) -> str | None:
    """An assistant message's thinking, from blocks whose seal opens."""
    thoughts = []
    for j, block in enumerate(blocks):
        if isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            sealed = block.signature if isinstance(block, ThinkingBlock) else block.data
            text = unseal(sealed) if sealed else None
            if text is None:
                where = f"messages[{index}].content[{j}]"
                unused_fields().decline(where, "its signature was not made here", "unsigned")
            else:
                thoughts.append(text)
    return "".join(thoughts) or None


def _clear_thinking(turns: list[Turn], kept: int) -> list[Turn]:
    thinking = [i for i, turn in enumerate(turns) if turn.reasoning]
    cleared = set(thinking[: max(len(thinking) - kept, 0)])
    return [replace(t, reasoning=None) if i in cleared else t for i, t in enumerate(turns)]


class MessagesRequest(Conversation):
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)]
    stop_sequences: Annotated[list[StopSequence], Field(max_length=16)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_LIMIT)] | None = None
    stream: StrictBool = False

    def sampling(self) -> MessagesSampling:
        return MessagesSampling(
            model=self.model,
            stream=self.stream,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop_sequences,
            response_format=None
            if self.output_config is None
            else self.output_config.response_format(),
        )


class MessagesSampling(SamplingFields):
    """A Messages request's sampling fields under the names the shared checks use."""

    def wire_name(self, field: str) -> str:
        return "stop_sequences" if field == "stop" else field


# -- the message ---------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


def stop_reason(
    finished: Finished, stop_sequences: list[str] | None
) -> tuple[StopReason, str | None]:
    """Anthropic's stop_reason and stop_sequence: a stop word is a `stop_sequence` only when
    the request sent it (the spec's own stop words end the turn)."""
    if finished.reason == "length":
        return "max_tokens", None
    if finished.reason == "tool_calls":
        return "tool_use", None
    word = finished.stop_word
    if word is not None and word in (stop_sequences or []):
        return "stop_sequence", word
    return "end_turn", None


class OutputText(BaseModel):
    type: Literal["text"] = "text"
    text: str
    citations: None = None


class OutputThinking(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class Caller(BaseModel):
    type: Literal["direct"] = "direct"


class OutputToolUse(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]
    caller: Caller = Caller()


class OutputTokensDetails(BaseModel):
    thinking_tokens: int = 0


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation: None = None
    inference_geo: None = None
    server_tool_use: None = None
    service_tier: Literal["standard"] = "standard"


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[OutputThinking | OutputText | OutputToolUse]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    stop_details: None = None
    usage: MessageUsage
    container: None = None


class TokenCount(BaseModel):
    input_tokens: int
