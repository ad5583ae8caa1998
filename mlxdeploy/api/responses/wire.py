"""OpenAI's Responses API on the wire: the request (input items, function tools, text format),
the response object with its output items, and the conversion into the engine's types."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from ...engine.api import ToolCall, ToolUse, Turn
from ...spec.formats import ResponseFormat
from .. import unsupported
from ..chat.tools import FunctionDefinition, offered
from ..wire import MAX_TOKENS_LIMIT, Float, SamplingFields, Usage, WireModel, enforceable


def _kind(value: Any) -> str:
    """An item's or a part's `type`; a message written without one is a message."""
    kind = value.get("type", "message") if isinstance(value, dict) else value.type
    return str(kind)


class TextContent(WireModel):
    """Text in a message of the input: the user's (`input_text`) or an earlier answer's."""

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextContent]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(WireModel):
    """A call the model made, sent back as part of the conversation."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None


class FunctionCallOutput(WireModel):
    """What the client's function returned for call `call_id`."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[TextContent]

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutput, Tag("function_call_output")],
    Discriminator(_kind),
]


def turns_of(items: list[Any]) -> list[Turn]:
    """A conversation of input items as the chat format sees it: consecutive calls join the
    assistant turn before them, and each output names the function it answers."""
    turns: list[Turn] = []
    names: dict[str, str] = {}
    for item in items:
        if isinstance(item, InputMessage):
            turns.append(Turn(item.role, item.text()))
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = ToolCall(item.call_id, item.name, item.arguments)
            if turns and turns[-1].role == "assistant":
                last = turns[-1]
                turns[-1] = Turn("assistant", last.content, (*last.tool_calls, call))
            else:
                turns.append(Turn("assistant", "", (call,)))
        else:
            name = names.get(item.call_id)
            turns.append(Turn("tool", item.text(), tool_call_id=item.call_id, name=name))
    return turns


class FunctionTool(FunctionDefinition):
    """A function the model may call: chat's function definition, flattened into the tool."""

    type: Literal["function"]


class NamedFunction(WireModel):
    type: Literal["function"]
    name: str


ToolChoice = Literal["none", "auto", "required"] | NamedFunction


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


class ResponseRequest(WireModel):
    model: str | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: StrictBool = True
    stream: StrictBool = False
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.RESPONSES)
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

    def tool_use(self) -> ToolUse | None:
        """The engine's ToolUse; None when the model may call nothing."""
        choice = self.tool_choice
        named = isinstance(choice, NamedFunction)
        picked = choice.name if isinstance(choice, NamedFunction) else choice
        tools = [tool.to_tool() for tool in self.tools or []]
        return offered(tools, picked, named, self.parallel_tool_calls)


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
        parts = [TextContent(type="output_text", text=part.text) for part in self.content]
        return InputMessage(role="assistant", content=parts)


class OutputCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]

    def as_input(self) -> FunctionCallItem:
        return FunctionCallItem(
            type="function_call", call_id=self.call_id, name=self.name, arguments=self.arguments
        )


OutputItem = OutputMessage | OutputCall


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
