"""Chat completion wire models: the request, the whole answer and the stream chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from ...engine.api import RoleOverride, TokenLogprob, ToolCall, ToolUse, Turn
from ...spec.reasoning import Effort
from .. import unsupported
from ..errors import InvalidRequest
from ..reasoning import ThinkingAsk
from ..wire import SamplingFields, Usage, WireModel, system_fingerprint, type_of
from .tools import MessageToolCall, ToolChoice, ToolDefinition, tool_use

ChatFinishReason = Literal["stop", "length", "tool_calls"]
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class MediaPart(WireModel):
    """An image, audio or a file: this server's models read text only (a 400 naming it)."""

    type: Literal["image_url", "input_audio", "file"]


def _part_kind(value: Any) -> str | None:
    kind = type_of(value)
    return "media" if kind in MEDIA_PARTS else kind


MEDIA_PARTS = ("image_url", "input_audio", "file")
ContentPart = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[MediaPart, Tag("media")],
    Discriminator(_part_kind),
]


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant message's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None
    # An assistant message's thinking, given back (the peers' name, and mlx_lm.server's).
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def media(self) -> int | None:
        parts = [] if not isinstance(self.content, list) else self.content
        return next((j for j, part in enumerate(parts) if isinstance(part, MediaPart)), None)

    def to_turn(self) -> Turn:
        calls = tuple(call.to_call() for call in self.tool_calls or ())
        thought = self.reasoning_content or self.reasoning if self.role == "assistant" else None
        return Turn(self.role, self.text(), calls, self.tool_call_id, self.name, thought)


class RoleMappingOverride(WireModel):
    model_config = ConfigDict(extra="forbid")
    system_prompt: str | None = None
    system: str | None = None
    user: str | None = None
    assistant: str | None = None
    stop: str | None = None

    def to_role_override(self) -> RoleOverride:
        return RoleOverride(**self.model_dump())


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    role_mapping: RoleMappingOverride | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    reasoning_effort: Effort | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any, info: ValidationInfo) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.CHAT, info)
        return data

    @model_validator(mode="after")
    def _logprobs_asked_for(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:  # OpenAI's rule (0 asks for nothing)
            raise InvalidRequest(
                "top_logprobs needs logprobs: send logprobs=true", param="top_logprobs"
            )
        if self.logprobs and self.tools and self.tool_choice != "none":
            raise InvalidRequest(
                "logprobs are not reported for requests that offer tools; leave one out",
                param="logprobs",
            )
        return self

    def asked_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def turns(self) -> list[Turn]:
        return [message.to_turn() for message in self.messages]

    def tool_use(self) -> ToolUse | None:
        return tool_use(self.tools, self.tool_choice, self.parallel_tool_calls)

    def media(self) -> str | None:
        """Where the first image (or audio, or file) is, for the 400 naming the model."""
        for i, message in enumerate(self.messages):
            part = message.media()
            if part is not None:
                return f"messages[{i}].content[{part}]"
        return None

    def thinking(self) -> ThinkingAsk:
        return ThinkingAsk(
            effort=self.reasoning_effort, template_kwargs=self.chat_template_kwargs or {}
        )

    def role_override(self) -> RoleOverride | None:
        return None if self.role_mapping is None else self.role_mapping.to_role_override()


class CallFunction(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: CallFunction

    @classmethod
    def of(cls, call: ToolCall) -> ResponseToolCall:
        return cls(id=call.id, function=CallFunction(name=call.name, arguments=call.arguments))


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None: the answer is tool calls only
    refusal: None = None  # required by OpenAI's schema, and never a refusal here
    tool_calls: list[ResponseToolCall] | None = None
    # A thinking model's thinking, under the peers' name and mlx_lm.server's.
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _calls_only_when_made(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("tool_calls", "reasoning_content", "reasoning"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: ChatFinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str = Field(default_factory=system_fingerprint)


class Delta(BaseModel):
    """A chunk's delta: the role in the first chunk only, and no keys in the finishing one
    (as OpenAI sends them), so unset fields are left out rather than sent as null."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    reasoning_content: str | None = None  # more thinking (and under mlx_lm.server's name)
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class DeltaFunction(BaseModel):
    """The name comes once, in a call's first chunk; the arguments come in pieces."""

    name: str | None = None
    arguments: str

    @model_serializer(mode="wrap")
    def _name_once(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class DeltaToolCall(BaseModel):
    """A streamed piece of call `index`: id, type and name in its first chunk only."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction

    @model_serializer(mode="wrap")
    def _first_chunk_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: ChatFinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str = Field(default_factory=system_fingerprint)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ContentLogprob(BaseModel):
    """One token of the answer: its log-probability and the most likely tokens there."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]

    @classmethod
    def of(cls, t: TokenLogprob) -> ContentLogprob:
        top = [TopLogprob(token=s, logprob=lp, bytes=list(b)) for s, b, lp in t.top]
        return cls(token=t.token, logprob=t.logprob, bytes=list(t.token_bytes), top_logprobs=top)


class ChoiceLogprobs(BaseModel):
    """A choice's (or a chunk's) tokens; their `token`s join to its content."""

    content: list[ContentLogprob] | None
    refusal: None = None

    @classmethod
    def of(cls, tokens: Sequence[TokenLogprob]) -> ChoiceLogprobs:
        return cls(content=[ContentLogprob.of(t) for t in tokens])
