"""The format of an answer (OpenAI's `response_format`), as a request or an endpoint preset
sets it: one model for both, so that the spec and the API accept the same shapes."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors and YAML values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


ANY_OBJECT = '{"type": "object"}'


class JsonSchemaFormat(Section):
    """OpenAI's `response_format.json_schema`. The schema is always enforced: `strict` is
    accepted with either value (a constrained answer never strays from its schema)."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The schema's name.")
    description: str | None = Field(default=None, description="What the answer is.")
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="The JSON Schema the answer follows; default: any JSON object.",
    )
    strict: bool | None = Field(default=None, description="Accepted; always enforced.")


class ResponseFormat(Section):
    """OpenAI's `response_format`: free text, any JSON object, or JSON that matches a schema.
    One model rather than a tagged union, so that a bad field's error names its own path.
    Requests and endpoint presets share it."""

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text: free text; json_object: any JSON object; json_schema: its schema."
    )
    json_schema: JsonSchemaFormat | None = Field(
        default=None, description="The schema, with type json_schema only."
    )

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self

    def schema_text(self) -> str | None:
        """The JSON text of the schema the answer must follow; None for free text."""
        if self.type == "text":
            return None
        schema = None if self.json_schema is None else self.json_schema.schema_
        return ANY_OBJECT if schema is None else json.dumps(schema)
