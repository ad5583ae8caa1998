"""OpenAI's Responses API on the wire: the request (input items, function tools, text format),
the response object with its output items, and the conversion into the engine's types."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from ...engine.api import Tool, ToolCall, ToolUse, Turn
from ...spec.formats import ResponseFormat
from ...spec.reasoning import Effort
from .. import unsupported
from ..chat.tools import FunctionDefinition, FunctionName, offered
from ..reasoning import ThinkingAsk
from ..unused import unused_fields, unused_of
from ..wire import MAX_TOKENS_LIMIT, Float, SamplingFields, Usage, WireModel, enforceable, type_of


def _kind(value: Any) -> str | None:
    """An item's or a part's `type`; a message written without one is a message."""
    return type_of(value, missing="message")


class TextContent(WireModel):
    """Text in a message of the input: the user's (`input_text`) or an earlier answer's."""

    type: Literal["input_text", "output_text"]
    text: str


class MediaContent(WireModel):
    """An image, a file or audio: this server's models read text only (a 400 naming it)."""

    type: Literal["input_image", "input_file", "input_audio"]


class RefusalContent(WireModel):
    type: Literal["refusal"]
    refusal: str


Content = Annotated[
    Annotated[TextContent, Tag("input_text")]
    | Annotated[TextContent, Tag("output_text")]
    | Annotated[RefusalContent, Tag("refusal")]
    | Annotated[MediaContent, Tag("input_image")]
    | Annotated[MediaContent, Tag("input_file")]
    | Annotated[MediaContent, Tag("input_audio")],
    Discriminator(_kind),
]


class InputMessage(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Content]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextContent))

    def media(self) -> int | None:
        parts = [] if isinstance(self.content, str) else self.content
        return next((j for j, p in enumerate(parts) if isinstance(p, MediaContent)), None)


class SummaryText(WireModel):
    type: Literal["summary_text"]
    text: str


class ReasoningText(WireModel):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(WireModel):
    """An earlier answer's thinking, sent back: its `encrypted_content` (sealed here) is the
    thinking itself; without one, its text."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None

    def thought(self, unseal: Callable[[str], str | None], where: str) -> str | None:
        if self.encrypted_content:
            opened = unseal(self.encrypted_content)
            if opened is not None:
                return opened
            unused_fields().decline(
                f"{where}.encrypted_content", "it was not sealed by this deployment", "not ours"
            )
        parts = self.content or self.summary
        return "".join(part.text for part in parts) or None


class FunctionCallItem(WireModel):
    """A call the model made, sent back as part of the conversation."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    namespace: str | None = None  # a tool of a namespace tool

    def to_call(self) -> ToolCall:
        return ToolCall(self.call_id, flat_name(self.namespace, self.name), self.arguments)


class CustomCallItem(WireModel):
    """A call of a custom (free-form) tool, sent back: its `input` is plain text."""

    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str
    id: str | None = None
    namespace: str | None = None

    def to_call(self) -> ToolCall:
        arguments = json.dumps({CUSTOM_INPUT: self.input}, ensure_ascii=False)
        return ToolCall(self.call_id, flat_name(self.namespace, self.name), arguments)


class FunctionCallOutput(WireModel):
    """What the client's function (or custom tool) returned for call `call_id`."""

    type: Literal["function_call_output", "custom_tool_call_output"]
    call_id: str
    output: str | list[Content]

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(p.text for p in self.output if isinstance(p, TextContent))


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[CustomCallItem, Tag("custom_tool_call")]
    | Annotated[FunctionCallOutput, Tag("function_call_output")]
    | Annotated[FunctionCallOutput, Tag("custom_tool_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_kind),
]

Unseal = Callable[[str], "str | None"]


def _unsealable(sealed: str) -> str | None:
    return None


def turns_of(items: list[Any], unseal: Unseal = _unsealable) -> list[Turn]:
    """A conversation of input items as the chat format sees it: consecutive calls join the
    assistant turn before them, each output names the function it answers, and a reasoning
    item is the thinking of the assistant turn it opens."""
    turns: list[Turn] = []
    names: dict[str, str] = {}
    thought: list[str] = []  # reasoning items waiting for their assistant turn
    for index, item in enumerate(items):
        if isinstance(item, ReasoningItem):
            text = item.thought(unseal, f"input[{index}]")
            thought += [text] if text else []
            continue
        if isinstance(item, InputMessage | FunctionCallOutput) and item_role(item) != "assistant":
            thought = []  # thinking with no answer after it
        if isinstance(item, InputMessage):
            turn = Turn(item.role, item.text())
            turns.append(_with_thought(turn, thought) if item.role == "assistant" else turn)
            thought = [] if item.role == "assistant" else thought
        elif isinstance(item, FunctionCallItem | CustomCallItem):
            call = item.to_call()
            names[item.call_id] = call.name
            if turns and turns[-1].role == "assistant" and not thought:
                last = turns[-1]
                turns[-1] = replace(last, tool_calls=(*last.tool_calls, call))
            else:
                turns.append(_with_thought(Turn("assistant", "", (call,)), thought))
                thought = []
        else:
            name = names.get(item.call_id)
            turns.append(Turn("tool", item.text(), tool_call_id=item.call_id, name=name))
    return turns


def item_role(item: Any) -> str:
    return str(item.role) if isinstance(item, InputMessage) else "tool"


def _with_thought(turn: Turn, thought: list[str]) -> Turn:
    return replace(turn, reasoning="".join(thought)) if thought else turn


CUSTOM_INPUT = "input"  # a custom tool's free-form text, as the model sees its one argument


def custom_input(arguments: str) -> str:
    """A custom tool's text input, from the arguments of the function the model saw."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    text = value.get(CUSTOM_INPUT) if isinstance(value, dict) else None
    return text if isinstance(text, str) else arguments


def flat_name(namespace: str | None, name: str) -> str:
    """A namespace's tool as the model sees it: one flat function name."""
    return name if not namespace else f"{namespace}__{name}"


class FunctionTool(FunctionDefinition):
    """A function the model may call: chat's function definition, flattened into the tool."""

    type: Literal["function"]
    defer_loading: StrictBool | None = None  # a hint: offered at once (no tool search here)

    def tools(self, namespace: str | None = None) -> list[OfferedTool]:
        tool = self.to_tool()
        name = flat_name(namespace, self.name)
        return [OfferedTool(replace(tool, name=name), self.name, namespace, custom=False)]


class CustomFormat(WireModel):
    type: Literal["text", "grammar"]
    syntax: str | None = None
    definition: str | None = None


class CustomTool(WireModel):
    """A custom (free-form) tool: its input is text. The model sees a function with one
    string argument, `input`; its calls come back as custom_tool_call items."""

    type: Literal["custom"]
    name: FunctionName
    description: str | None = None
    format: CustomFormat | None = None
    defer_loading: StrictBool | None = None

    def tools(self, namespace: str | None = None) -> list[OfferedTool]:
        schema = {
            "type": "object",
            "properties": {CUSTOM_INPUT: {"type": "string"}},
            "required": [CUSTOM_INPUT],
        }
        what = self.description or ""
        if self.format is not None and self.format.definition:
            what += f"\nThe input follows this {self.format.syntax or ''} grammar:\n"
            what += self.format.definition
        tool = Tool(flat_name(namespace, self.name), what or None, json.dumps(schema))
        return [OfferedTool(tool, self.name, namespace, custom=True)]


class NamespaceTool(WireModel):
    """A group of tools under one name: the model sees each as `<namespace>__<name>`, and
    its calls come back with their own name and `namespace`."""

    type: Literal["namespace"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    tools: list[FunctionTool | CustomTool]

    def offered(self) -> list[OfferedTool]:
        return [o for tool in self.tools for o in tool.tools(self.name)]


class HostedTool(WireModel):
    """A tool OpenAI's servers run (web search, file search, ...): declined here."""

    type: Annotated[str, Field(pattern=r"^[a-z_0-9]+$")]


@dataclass(frozen=True)
class OfferedTool:
    """A tool as the model sees it, and how its calls go back to the client."""

    tool: Tool
    name: str  # the client's own name
    namespace: str | None
    custom: bool


def _tool_kind(value: Any) -> str | None:
    kind = type_of(value)
    return kind if kind in ("function", "custom", "namespace", None) else "hosted"


AnyTool = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[CustomTool, Tag("custom")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[HostedTool, Tag("hosted")],
    Discriminator(_tool_kind),
]


class NamedFunction(WireModel):
    type: Literal["function", "custom"]
    name: str


class AllowedTool(WireModel):
    type: str
    name: str | None = None


class AllowedTools(WireModel):
    """`allowed_tools`: only these of the tools may be called, `auto` or `required`."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[AllowedTool]


ToolChoice = Literal["none", "auto", "required"] | NamedFunction | AllowedTools


class TextFormat(WireModel):
    """`text.format`: free text, any JSON object, or JSON that matches `schema`."""

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None

    _enforceable = field_validator("schema_")(enforceable)

    @model_validator(mode="after")
    def _named_schema(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs name and schema")
        return self

    def response_format(self) -> ResponseFormat:
        if self.type != "json_schema":
            return ResponseFormat(type=self.type)
        schema = {"name": self.name, "description": self.description, "schema": self.schema_}
        return ResponseFormat.model_validate({"type": "json_schema", "json_schema": schema})


class TextConfig(WireModel):
    format: TextFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _verbosity_is_a_hint(cls, data: Any, info: ValidationInfo) -> Any:
        # Codex sends text.verbosity; a hint, as chat's top-level verbosity is (unsupported.py).
        if isinstance(data, dict) and data.get("verbosity") is not None:
            unused_of(info).decline("text.verbosity", "verbosity is not supported")
        return data


class ResponseRequest(WireModel):
    model: str | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: StrictBool = True
    stream: StrictBool = False
    tools: list[AnyTool] | None = None
    tool_choice: ToolChoice | None = None
    reasoning: ReasoningParam | None = None
    include: list[str] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any, info: ValidationInfo) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.RESPONSES, info)
        return data

    def items(self) -> list[Any]:
        if isinstance(self.input, str):
            return [InputMessage(role="user", content=self.input)]
        return list(self.input)

    def format(self) -> TextFormat:
        return self.text.format if self.text and self.text.format else TextFormat(type="text")

    def sampling(self) -> ResponseSampling:
        """The request's sampling as the shared sampling fields."""
        fmt = None if self.text is None else self.text.format
        return ResponseSampling(
            model=self.model,
            stream=self.stream,
            max_completion_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            response_format=None if fmt is None else fmt.response_format(),
        )

    def offered_tools(self) -> list[OfferedTool]:
        """Every tool the model may call, namespaces flattened; hosted tools are declined."""
        out: list[OfferedTool] = []
        for index, tool in enumerate(self.tools or []):
            if isinstance(tool, HostedTool):
                unused_fields().decline(
                    f"tools[{index}]", "hosted tools are not run here", tool.type
                )
            elif isinstance(tool, NamespaceTool):
                out += tool.offered()
            else:
                out += tool.tools()
            if getattr(tool, "defer_loading", None):
                unused_fields().decline(
                    f"tools[{index}].defer_loading", "tool search is not run here"
                )
        return out

    def tool_use(self) -> ToolUse | None:
        """The engine's ToolUse; None when the model may call nothing."""
        tools = [offer.tool for offer in self.offered_tools()]
        choice = self.tool_choice
        if isinstance(choice, AllowedTools):
            allowed = {t.name for t in choice.tools if t.name is not None}
            tools = [tool for tool in tools if tool.name in allowed]
            return offered(tools, choice.mode, False, self.parallel_tool_calls)
        named = isinstance(choice, NamedFunction)
        picked = choice.name if isinstance(choice, NamedFunction) else choice
        return offered(tools, picked, named, self.parallel_tool_calls)

    def thinking(self) -> ThinkingAsk:
        effort = None if self.reasoning is None else self.reasoning.effort
        return ThinkingAsk(effort=effort, param="reasoning.effort")

    @property
    def sealed_thinking(self) -> bool:
        """Whether output reasoning items carry their thinking sealed (`encrypted_content`)."""
        return ENCRYPTED in (self.include or [])

    @property
    def summarized(self) -> bool:
        return (
            self.reasoning is not None
            and (self.reasoning.summary or self.reasoning.generate_summary) is not None
        )

    def media(self) -> str | None:
        for index, item in enumerate(self.items()):
            part = item.media() if isinstance(item, InputMessage) else None
            if part is not None:
                return f"input[{index}].content[{part}]"
        return None

    @field_validator("include")
    @classmethod
    def _included(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """`reasoning.encrypted_content` is honoured; log-probabilities cannot be (a 400);
        the other extras (hosted tools' results, image URLs) have nothing to show here."""
        for entry in value or []:
            if entry == "message.output_text.logprobs":
                raise ValueError("log-probabilities are not reported on this route")
            if entry != ENCRYPTED:
                unused_of(info).decline("include", f"'{entry}' is not available here", entry)
        return value


ENCRYPTED = "reasoning.encrypted_content"


class ReasoningParam(WireModel):
    """`reasoning`: the effort of a thinking model; a summary of the thinking (the thinking
    itself is its summary here)."""

    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseSampling(SamplingFields):
    """A Responses request's sampling fields under the names the shared checks use."""

    def wire_name(self, field: str) -> str:
        return "max_output_tokens" if field == "max_completion_tokens" else field


# -- the response ------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]

    def as_input(self) -> InputMessage:
        parts: list[Content] = [TextContent(type="output_text", text=p.text) for p in self.content]
        return InputMessage(role="assistant", content=parts)


class OutputCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]
    namespace: str | None = None  # a namespace tool's (left out otherwise)

    @model_serializer(mode="wrap")
    def _namespace_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler(self), "namespace")

    def as_input(self) -> FunctionCallItem:
        return FunctionCallItem(
            type="function_call",
            call_id=self.call_id,
            name=self.name,
            arguments=self.arguments,
            namespace=self.namespace,
        )


class OutputCustomCall(BaseModel):
    type: Literal["custom_tool_call"] = "custom_tool_call"
    id: str
    call_id: str
    name: str
    input: str
    status: Literal["in_progress", "completed", "incomplete"]
    namespace: str | None = None

    @model_serializer(mode="wrap")
    def _namespace_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler(self), "namespace")

    def as_input(self) -> CustomCallItem:
        return CustomCallItem(
            type="custom_tool_call",
            call_id=self.call_id,
            name=self.name,
            input=self.input,
            namespace=self.namespace,
        )


class OutputSummary(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class OutputReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class OutputReasoning(BaseModel):
    """A thinking model's thinking: as its summary when the request asked for one, as its
    content, and sealed in `encrypted_content` when the request included it."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[OutputSummary]
    content: list[OutputReasoningText] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def as_input(self) -> ReasoningItem:
        return ReasoningItem(
            type="reasoning",
            summary=[SummaryText(type="summary_text", text=s.text) for s in self.summary],
            content=[ReasoningText(type="reasoning_text", text=c.text) for c in self.content or []],
            encrypted_content=self.encrypted_content,
        )


def _without_none(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data


OutputItem = OutputMessage | OutputCall | OutputCustomCall | OutputReasoning


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> ResponseUsage:
        cached = (usage.prompt_tokens_details or {}).get("cached_tokens", 0)
        return cls(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens=usage.completion_tokens,
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=(usage.completion_tokens_details or {}).get("reasoning_tokens", 0)
            ),
            total_tokens=usage.total_tokens,
        )


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseError(BaseModel):
    code: Literal["server_error"] = "server_error"
    message: str


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    temperature: float | None
    top_p: float | None
    tool_choice: Any
    tools: list[dict[str, Any]]
    text: dict[str, Any]
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None  # left out until the response is done
    metadata: dict[str, str]

    @model_serializer(mode="wrap")
    def _usage_once_known(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
