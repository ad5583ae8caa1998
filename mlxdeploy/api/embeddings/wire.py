"""Embedding wire models, in OpenAI's shape: `input` as a string, a list of strings, a list of
token ids or a list of token-id lists; vectors as floats or base64 (little-endian float32)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, StrictInt, ValidationInfo, model_validator

from ...engine.api import Embedding
from .. import unsupported
from ..wire import WireModel

MAX_INPUTS = 2048  # OpenAI's bound on the inputs of one request
SHAPES = "a string, a list of strings, a list of token ids, or a list of token-id lists"

Input = str | list[int]  # one input: text, or the token ids of a text


def check_input(value: Any) -> Any:
    """The whole `input` field, with one message per mistake (a union's own errors would name
    every branch)."""
    if isinstance(value, str):
        _text(value, "input")
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be {SHAPES}")
    if not value:
        raise ValueError("must not be empty")
    if all(isinstance(item, int) for item in value):  # one input's token ids
        _token_ids(value, "input")
        return value
    if len(value) > MAX_INPUTS:
        raise ValueError(f"at most {MAX_INPUTS} inputs, got {len(value)}")
    if all(isinstance(item, str) for item in value):
        for index, item in enumerate(value):
            _text(item, f"input[{index}]")
    elif all(isinstance(item, list) for item in value):
        for index, item in enumerate(value):
            _token_ids(item, f"input[{index}]")
    else:
        raise ValueError(f"must be {SHAPES}, not a mix")
    return value


def _text(value: str, where: str) -> None:
    if not value:
        raise ValueError(f"{where} is an empty string; send text to embed")


def _token_ids(value: list[Any], where: str) -> None:
    if not value:
        raise ValueError(f"{where} is an empty list of token ids")
    for token in value:
        if type(token) is not int or token < 0:  # JSON true is not token 1
            raise ValueError(f"{where} holds {token!r}; token ids are integers >= 0")


EmbeddingInput = Annotated[
    str | list[str] | list[StrictInt] | list[list[StrictInt]], BeforeValidator(check_input)
]


class EmbeddingRequest(WireModel):
    input: EmbeddingInput
    model: str | None = None
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any, info: ValidationInfo) -> Any:
        unsupported.check_fields(data, cls.model_fields, unsupported.EMBEDDINGS, info)
        return data

    def inputs(self) -> list[Input]:
        """Each input on its own: a text, or one text's token ids."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: the float32 values, little-endian

    @classmethod
    def of(cls, vector: Embedding, index: int, encoding: str | None) -> EmbeddingObject:
        if encoding == "base64":
            return cls(index=index, embedding=base64.b64encode(vector.float32).decode("ascii"))
        return cls(index=index, embedding=vector.values())


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage
