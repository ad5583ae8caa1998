"""Chat completion wire models: the request, the whole answer and the stream chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from ...engine.api import RoleOverride, Turn
from .. import unsupported
from ..wire import SamplingFields, Usage, WireModel


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_turn(self) -> Turn:
        return Turn(role=self.role, content=self.text())


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

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.CHAT)
        return data

    def turns(self) -> list[Turn]:
        return [message.to_turn() for message in self.messages]

    def role_override(self) -> RoleOverride | None:
        return None if self.role_mapping is None else self.role_mapping.to_role_override()


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None  # required by OpenAI's schema, and never a refusal here


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """A chunk's delta: the role in the first chunk only, and no keys in the finishing one
    (as OpenAI sends them), so unset fields are left out rather than sent as null."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
