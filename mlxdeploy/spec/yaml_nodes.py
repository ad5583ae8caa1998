"""YAML text -> node tree and plain data, with duplicate keys and recursive aliases reported,
and the `line:col` of any loc in that tree (a value, its key, or the mapping it is missing from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .problems import Problem, SpecError, dotted, show_value

_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        message = "file not found"
    except IsADirectoryError:
        message = "is a directory, expected a YAML spec file"
    except UnicodeDecodeError as error:
        message = f"not UTF-8 text (byte {error.start})"
    except OSError as error:
        message = f"cannot read the file: {error.strerror or error}"
    raise SpecError([Problem(str(path), None, None, "", message)])


def parse_yaml(path: str, text: str) -> tuple[yaml.Node, dict[str, Any], list[Problem]]:
    """Compose then construct, so values keep their marks and duplicate keys can be caught."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            # Line 1: annotations (GitHub's among them) need a line to attach to.
            raise SpecError([Problem(path, 1, 1, "", "the file is empty; add at least 'model:'")])
        duplicates = _node_problems(path, root, (), set(), frozenset())
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as error:
        raise SpecError([_yaml_problem(path, error)]) from None
    except yaml.YAMLError as error:
        raise SpecError([Problem(path, None, None, "", f"invalid YAML: {error}")]) from None
    finally:
        loader.dispose()
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        line, col = mark(root)
        message = f"the spec must be a mapping of keys like 'model: ...', got {show_value(data)}"
        raise SpecError([Problem(path, line, col, "", message)])
    return root, _string_keys(data), duplicates


def _yaml_problem(path: str, error: yaml.MarkedYAMLError) -> Problem:
    mark = error.problem_mark or error.context_mark
    problem, context = error.problem or "", error.context or ""
    if error.context and error.context_mark:
        context += f" on line {error.context_mark.line + 1}"
    if problem.startswith("but "):  # PyYAML phrases some errors as context + ", but ..."
        message = f"{context}, {problem}"
    else:
        message = f"{problem} ({context})" if problem and context else problem or context
    if mark is None:
        return Problem(path, None, None, "", f"invalid YAML: {message}")
    return Problem(path, mark.line + 1, mark.column + 1, "", f"invalid YAML: {message}")


def _node_problems(
    path: str, node: yaml.Node, loc: tuple[str | int, ...], seen: set[int], parents: frozenset[int]
) -> list[Problem]:
    """Duplicate keys (PyYAML silently keeps the last) and aliases that contain themselves."""
    if id(node) in parents:
        line, col = mark(node)
        message = "an alias refers to a value that contains it; remove the recursion"
        raise SpecError([Problem(path, line, col, dotted(loc), message)])
    if id(node) in seen:  # an alias to a node already checked
        return []
    seen.add(id(node))
    problems = _duplicate_keys(path, node, loc)
    for child_loc, child in _children(node, loc):
        problems += _node_problems(path, child, child_loc, seen, parents | {id(node)})
    return problems


def _children(
    node: yaml.Node, loc: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], yaml.Node]]:
    if isinstance(node, yaml.SequenceNode):
        return [((*loc, index), item) for index, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        return [(_key_loc(key, loc), value) for key, value in node.value]
    return []


def _key_loc(key: yaml.Node, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
        return (*loc, key.value)
    return loc


def _duplicate_keys(path: str, node: yaml.Node, loc: tuple[str | int, ...]) -> list[Problem]:
    if not isinstance(node, yaml.MappingNode):
        return []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line, col = mark(key)
        if key.value not in first_line:
            first_line[key.value] = line
            continue
        message = f"duplicate key '{key.value}' (first on line {first_line[key.value]}); remove one"
        problems.append(Problem(path, line, col, dotted((*loc, key.value)), message))
    return problems


def _string_keys(value: Any) -> Any:
    """YAML allows `1: x`; pydantic needs string keys to report it as an unknown key."""
    if isinstance(value, dict):
        return {str(key): _string_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_string_keys(item) for item in value]
    return value


def position(root: yaml.Node, loc: tuple[str | int, ...], at_key: bool) -> tuple[int, int]:
    """Node of the offending value; the key for unknown keys; the parent mapping if missing."""
    node, key = root, root
    for part in loc:
        child = _child(node, part)
        if child is None:
            return mark(node)
        key, node = child
    return mark(key if at_key else node)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):  # the last of duplicate keys wins
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None


def mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1
