"""The deployment spec: YAML -> typed `Spec`, with every mistake reported as `file:line:col`.

Layers, lowest first: the files a spec `extends`, the spec itself, `MLXDEPLOY_*` environment
variables (strings, coerced to the field's type), then keyword overrides from the CLI. YAML and
overrides are validated strictly. The settings themselves are in `settings.py`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from .catalog import Catalog, CatalogError, Files, build_catalog, read_files
from .footprint import estimate_bytes, gib, machine_memory
from .problems import FieldError, Problem, SpecError, dotted, show_value
from .settings import ENV_DELIMITER, ENV_PREFIX, EnvSource, Spec

_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Layers:
    """Where each value came from, to place each validation error."""

    path: str
    files: list[_SpecFile]  # the spec first, then what it extends, and so on
    env: dict[str, Any]
    env_names: dict[tuple[str, ...], str]
    overrides: dict[str, Any]

    def file_for(self, loc: tuple[str | int, ...]) -> _SpecFile:
        """The most specific file that sets `loc` (the spec itself when none does)."""
        return next((f for f in self.files if _covers(f.data, loc)), self.files[0])


@dataclass(frozen=True)
class _SpecFile:
    path: str
    root: yaml.Node
    data: dict[str, Any]

    @property
    def directory(self) -> Path:
        return Path(self.path).parent


def load_spec(path: Path, **overrides: Any) -> Spec:
    """Read, merge (YAML < environment < overrides) and validate a spec.

    Overrides whose value is None are ignored, so CLI flags can be passed through unset.
    Raises SpecError listing every problem; never a raw YAML or pydantic exception.
    """
    shown = str(path)
    files, problems = _read_chain(path)
    env, env_problems = _read_env(shown)
    layers = _Layers(shown, files, env, _env_names(), _drop_none(overrides))
    data: dict[str, Any] = {}
    for spec_file in reversed(files):  # base first; each file deep-merges over it, lists replace
        data = _merge(data, spec_file.data)
    merged = _merge(_merge(data, env), layers.overrides)
    problems += env_problems
    spec: Spec | None = None
    try:
        # BaseSettings validates through __init__, which re-reads the (same) environment;
        # `merged` is passed as init values, so it wins and the layering above holds.
        spec = Spec.model_validate(merged)
    except ValidationError as error:
        problems += [_validation_problem(detail, layers) for detail in error.errors()]
    except SettingsError as error:
        problems.append(Problem(shown, None, None, "environment", str(error)))
    # Sources and templates are checked even when other keys are wrong: every problem at once.
    referenced, file_errors = read_files(merged, lambda loc: layers.file_for(loc).directory)
    problems += [_field_problem(error, layers) for error in file_errors]
    _check_memory(referenced, merged, layers, problems)
    catalog = None if spec is None else _check_catalog(spec, referenced, layers, problems)
    if problems or spec is None or catalog is None:
        raise SpecError(sorted(dict.fromkeys(problems), key=_problem_order))
    spec._catalog = catalog
    spec._base_dir = path.parent
    return spec


def _check_catalog(
    spec: Spec, files: Files, layers: _Layers, problems: list[Problem]
) -> Catalog | None:
    """Models and presets resolved; mistakes across keys (ids, endpoints, paths) reported."""
    try:
        return build_catalog(spec, files)
    except CatalogError as error:
        problems += [_field_problem(field_error, layers) for field_error in error.errors]
        return None


def resolve_catalog(spec: Spec) -> Spec:
    """Resolve the catalog of a Spec made in code (relative paths: the working directory)."""
    files, errors = read_files(spec.model_dump(), lambda loc: Path.cwd())
    if errors:
        raise CatalogError(errors)
    spec._catalog = build_catalog(spec, files)
    return spec


def _read_chain(path: Path) -> tuple[list[_SpecFile], list[Problem]]:
    """The spec and the files it `extends`, interpolated; a missing base or a cycle is a problem."""
    files: list[_SpecFile] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None:
        seen.add(current.resolve())
        shown = str(current)
        root, data, found = _parse_yaml(shown, _read_text(current))
        problems += found + _interpolate(shown, root, data)
        parent = data.pop("extends", None)
        files.append(_SpecFile(shown, root, data))
        current = _parent(shown, root, parent, seen, problems)
    return files, problems


def _parent(
    shown: str, root: yaml.Node, parent: Any, seen: set[Path], problems: list[Problem]
) -> Path | None:
    if parent is None:
        return None
    line, col = _position(root, ("extends",), at_key=False)
    if not isinstance(parent, str) or not parent:
        problems.append(Problem(shown, line, col, "extends", "expected a path to a base spec"))
        return None
    target = Path(shown).parent / parent
    if target.resolve() in seen:
        problems.append(Problem(shown, line, col, "extends", f"'{parent}' extends itself (cycle)"))
        return None
    if not target.is_file():
        problems.append(Problem(shown, line, col, "extends", f"base spec '{target}' not found"))
        return None
    return target


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    path: str, root: yaml.Node, data: Any, loc: tuple[str | int, ...] = ()
) -> list[Problem]:
    """Replace `${VAR}` / `${VAR:-default}` in string values, in place; a value that is one
    reference takes the YAML type of its text (`port: ${PORT:-8080}` is an int)."""
    problems: list[Problem] = []
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in list(items):
        here = (*loc, key)
        if isinstance(value, dict | list):
            problems += _interpolate(path, root, value, here)
        elif isinstance(value, str) and "${" in value:
            missing = [m.group(1) for m in _REFERENCE.finditer(value)
                       if m.group(2) is None and m.group(1) not in os.environ]  # fmt: skip
            if missing:
                line, col = _position(root, here, at_key=False)
                message = (
                    f"environment variable {missing[0]} is not set (use ${{{missing[0]}:-default}})"
                )
                problems.append(Problem(path, line, col, dotted(here), message))
                continue
            text = _REFERENCE.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
            whole = _REFERENCE.fullmatch(value) is not None
            data[key] = _typed(text) if whole else text
    return problems


def _typed(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool) else text


def _check_memory(
    files: Files, data: dict[str, Any], layers: _Layers, problems: list[Problem]
) -> None:
    """Weights that cannot fit this machine's memory together are a problem before anything
    loads. Sizes come from file headers; no weights are read."""
    sizes: list[tuple[str, int]] = []
    for loc, source in files.sources.items():
        try:
            needed = estimate_bytes(source)
        except (OSError, ValueError, KeyError) as error:  # an unreadable header: say so, once
            message = f"cannot read the size of the model's weights: {error}"
            problems.append(_field_problem(FieldError(loc, message), layers))
            continue
        if needed is not None:
            sizes.append((_model_label(data, loc), needed))
    needed, available = sum(size for _, size in sizes), machine_memory()
    if needed <= available:
        return
    if "models" in data:
        parts = ", ".join(f"{label} {gib(size)}" for label, size in sizes)
        message = f"the models' weights need about {gib(needed)} of memory together ({parts})"
    else:
        message = f"the model's weights need about {gib(needed)} of memory"
    message += f", this machine has {gib(available)}; use smaller or quantized models"
    where = ("models",) if "models" in data else ("model",)
    problems.append(_field_problem(FieldError(where, message), layers))


def _model_label(data: dict[str, Any], loc: tuple[str | int, ...]) -> str:
    """A model's id for messages, read from the (unvalidated) data when it is there."""
    if loc[0] == "models" and isinstance(loc[1], int):
        entry = data["models"][loc[1]]
        if isinstance(entry.get("id"), str):
            return str(entry["id"])
    return str(data.get("name") or data.get("model"))


def _problem_order(problem: Problem) -> tuple[bool, int, int]:
    return (problem.line is None, problem.line or 0, problem.col or 0)


def _read_text(path: Path) -> str:
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


def _parse_yaml(path: str, text: str) -> tuple[yaml.Node, dict[str, Any], list[Problem]]:
    """Compose then construct, so values keep their marks and duplicate keys can be caught."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise SpecError(
                [Problem(path, None, None, "", "the file is empty; add at least 'model:'")]
            )
        duplicates = _node_problems(path, root, (), set(), frozenset())
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as error:
        raise SpecError([_yaml_problem(path, error)]) from None
    except yaml.YAMLError as error:
        raise SpecError([Problem(path, None, None, "", f"invalid YAML: {error}")]) from None
    finally:
        loader.dispose()
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        line, col = _mark(root)
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
        line, col = _mark(node)
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
        line, col = _mark(key)
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


def _read_env(path: str) -> tuple[dict[str, Any], list[Problem]]:
    try:
        return EnvSource(Spec)(), []
    except SettingsError as error:
        return {}, [Problem(path, None, None, "environment", str(error))]


def _env_names() -> dict[tuple[str, ...], str]:
    """Map each `MLXDEPLOY_A__B` variable to its loc ("a", "b"), to name it in errors."""
    names = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX):
            loc = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
            names[loc] = name
    return names


def _drop_none(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in overrides.items() if value is not None}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- error mapping


def _value_error(loc: tuple[str | int, ...], error: ValueError) -> ErrorDetails:
    return ErrorDetails(
        type="value_error", loc=loc, msg=str(error), input=None, ctx={"error": error}
    )


def _field_problem(error: FieldError, layers: _Layers) -> Problem:
    return _validation_problem(_value_error(error.loc, error), layers)


def _validation_problem(error: ErrorDetails, layers: _Layers) -> Problem:
    loc = tuple(error["loc"])
    message = _message(error)
    at_key = error["type"] == "extra_forbidden"  # an unknown key: point at the key, not its value
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):  # found across fields: placed by its own loc
        loc, at_key = cause.loc, cause.at_key
    if _covers(layers.overrides, loc):
        return Problem(layers.path, None, None, dotted(loc), f"{message} (from an override)")
    if _covers(layers.env, loc):
        return Problem(layers.path, None, None, _env_name(loc, layers.env_names), message)
    spec_file = layers.file_for(loc)
    line, col = _position(spec_file.root, loc, at_key)
    return Problem(spec_file.path, line, col, dotted(loc), message)


def _covers(layer: Any, loc: tuple[str | int, ...]) -> bool:
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


def _position(root: yaml.Node, loc: tuple[str | int, ...], at_key: bool) -> tuple[int, int]:
    """Node of the offending value; the key for unknown keys; the parent mapping if missing."""
    node, key = root, root
    for part in loc:
        child = _child(node, part)
        if child is None:
            return _mark(node)
        key, node = child
    return _mark(key if at_key else node)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):  # the last of duplicate keys wins
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


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


def _message(error: ErrorDetails) -> str:
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
