"""What is wrong with a spec: `Problem`s with a file position, and how the CLI prints them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

ProblemFormat = Literal["text", "github", "json"]


@dataclass(frozen=True)
class Problem:
    """One mistake in a spec. `line`/`col` are 1-based; None when it has no place in the file."""

    path: str
    line: int | None
    col: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}" + (f":{self.col}" if self.col is not None else "")
        return ": ".join(part for part in (where, self.field, self.message) if part)


class SpecError(Exception):
    """Raised by `load_spec`; carries every problem found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


class FieldError(ValueError):
    """A problem found after parsing, placed at a key of the spec (`loc`), e.g. ("models", 1, "id").

    `at_key`: point at the key itself rather than its value (names, not settings)."""

    def __init__(self, loc: tuple[str | int, ...], message: str, at_key: bool = False):
        super().__init__(message)
        self.loc = loc
        self.at_key = at_key


def unique(problems: list[Problem]) -> list[Problem]:
    """Each problem once, in first-seen order: a base that several specs extend is checked with
    each of them, and its problems are the same place and message every time."""
    seen: dict[tuple[str, int | None, int | None, str], Problem] = {}
    for problem in problems:
        seen.setdefault((problem.path, problem.line, problem.col, problem.message), problem)
    return list(seen.values())


def dotted(loc: tuple[Any, ...]) -> str:
    """A location as users name fields: `('models', 0, 'id')` -> `models[0].id`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def show_value(value: Any) -> str:
    """A value as the user wrote it in YAML: true/false/null, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_problems(problems: list[Problem], fmt: ProblemFormat) -> str:
    """Render problems as text lines, GitHub Actions annotations, or a JSON list."""
    if fmt == "json":
        return json.dumps([asdict(problem) for problem in problems], indent=2)
    if fmt == "github":
        return "\n".join(_github_annotation(problem) for problem in problems)
    return "\n".join(str(problem) for problem in problems)


def _github_annotation(problem: Problem) -> str:
    properties = [f"file={_escape_property(problem.path)}"]
    if problem.line is not None:
        properties.append(f"line={problem.line}")
    if problem.col is not None:
        properties.append(f"col={problem.col}")
    properties.append("title=mlxdeploy validate")
    text = f"{problem.field}: {problem.message}" if problem.field else problem.message
    return f"::error {','.join(properties)}::{_escape_data(text)}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
