"""pydantic's validation messages rewritten to name the value and what is expected, with a
close match for an unknown key."""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from .problems import show_value
from .settings import Spec

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}
_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def readable_message(error: ErrorDetails) -> str:
    """Rewrite pydantic's message into one that names the value and what is expected."""
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx", {})
    got = show_value(error.get("input"))
    if kind == "missing":
        return f"missing required key '{loc[-1]}'"
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]), loc[:-1])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    if kind in _BOUNDS:
        operator, bound = _BOUNDS[kind]
        return f"must be {operator} {_number(ctx[bound])}, got {got}"
    if kind == "finite_number":
        return f"must be a finite number, got {got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {got}"


def _unknown_key(key: str, parent: tuple[str | int, ...]) -> str:
    allowed = list(_section_at(parent).model_fields)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    return f"unknown key '{key}' (expected one of: {', '.join(allowed)})"


def _section_at(loc: tuple[str | int, ...]) -> type[BaseModel]:
    """The section model at `loc`, through optional sections, lists and named mappings."""
    model: type[BaseModel] = Spec
    annotation: Any = None
    for part in loc:
        if annotation is None:
            field = model.model_fields.get(str(part))
            annotation = _unwrap_optional(field.annotation if field else None)
        else:  # inside a list or a mapping: the item's type, whatever the index or name
            annotation = _unwrap_optional(get_args(annotation)[-1])
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, annotation = annotation, None
        elif get_origin(annotation) not in (list, dict):
            break
    return model


def _unwrap_optional(annotation: Any) -> Any:
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _number(value: Any) -> str:
    """A bound as written in the docs: 0 rather than 0.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
