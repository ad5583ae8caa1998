"""Where a problem was written: each value's layer (a spec file, the environment or an override)
and, for a file, the `line:col` of the value; validation errors become placed `Problem`s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic_core import ErrorDetails

from .messages import readable_message
from .problems import FieldError, Problem, dotted
from .settings import ENV_DELIMITER, ENV_PREFIX
from .yaml_nodes import position


@dataclass(frozen=True)
class Layers:
    """Where each value came from, to place each validation error."""

    path: str
    files: list[SpecFile]  # the spec first, then what it extends, and so on
    env: dict[str, Any]
    env_names: dict[tuple[str, ...], str]
    overrides: dict[str, Any]

    def file_for(self, loc: tuple[str | int, ...]) -> SpecFile:
        """The most specific file that sets `loc` (the spec itself when none does)."""
        return next((f for f in self.files if covers(f.data, loc)), self.files[0])


@dataclass(frozen=True)
class SpecFile:
    path: str
    root: yaml.Node
    data: dict[str, Any]

    @property
    def directory(self) -> Path:
        return Path(self.path).parent


def _value_error(loc: tuple[str | int, ...], error: ValueError) -> ErrorDetails:
    return ErrorDetails(
        type="value_error", loc=loc, msg=str(error), input=None, ctx={"error": error}
    )


def field_problem(error: FieldError, layers: Layers) -> Problem:
    return validation_problem(_value_error(error.loc, error), layers)


def validation_problem(error: ErrorDetails, layers: Layers) -> Problem:
    loc = tuple(error["loc"])
    message = readable_message(error)
    at_key = error["type"] == "extra_forbidden"  # an unknown key: point at the key, not its value
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):  # found across fields: placed by its own loc
        loc, at_key = cause.loc, cause.at_key
    if covers(layers.overrides, loc):
        return Problem(layers.path, None, None, dotted(loc), f"{message} (from an override)")
    if covers(layers.env, loc):
        return Problem(layers.path, None, None, _env_name(loc, layers.env_names), message)
    spec_file = layers.file_for(loc)
    line, col = position(spec_file.root, loc, at_key)
    return Problem(spec_file.path, line, col, dotted(loc), message)


def covers(layer: Any, loc: tuple[str | int, ...]) -> bool:
    """Whether `layer` set the value at `loc` (or a scalar above it)."""
    for part in loc:
        if isinstance(layer, dict):
            if part not in layer:
                return False
            layer = layer[part]
        elif isinstance(layer, list):
            if not isinstance(part, int) or part >= len(layer):
                return False
            layer = layer[part]
        else:
            return True
    return True


def _env_name(loc: tuple[str | int, ...], names: dict[tuple[str, ...], str]) -> str:
    parts = tuple(str(part).lower() for part in loc)
    for end in range(len(parts), 0, -1):
        if parts[:end] in names:
            return names[parts[:end]]
    return ENV_PREFIX + ENV_DELIMITER.join(parts).upper()
