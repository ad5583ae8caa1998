"""The deployment spec: YAML -> typed `Spec`, with every mistake reported as `file:line:col`.

Layers, lowest first: the YAML file, `MLXDEPLOY_*` environment variables (strings, coerced to the
field's type), then keyword overrides from the CLI. YAML and overrides are validated strictly.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from mlxdeploy.footprint import estimate_bytes, gib, machine_memory
from mlxdeploy.sources import ModelSource, parse_model_source
from mlxdeploy.templates import TemplateProblem, read_chat_template

ENV_PREFIX = "MLXDEPLOY_"
ENV_DELIMITER = "__"
PromptFormat = Literal["auto", "chat_template", "role_mapping"]
ProblemFormat = Literal["text", "github", "json"]
_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------- problems


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


# --------------------------------------------------------------------------- models


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors and YAML values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RoleMapping(Section):
    """Prompt pieces used when the prompt is built without a chat template (mlx-lm's keys)."""

    system_prompt: str = Field(
        default="A chat between a curious user and an artificial intelligence assistant.",
        description="Text placed at the start of every prompt.",
    )
    system: str = Field(default="ASSISTANT's RULE: ", description="Prefix of system messages.")
    user: str = Field(default="USER: ", description="Prefix of user messages.")
    assistant: str = Field(default="ASSISTANT: ", description="Prefix of assistant messages.")
    stop: str = Field(default="\n", description="Text placed after each message.")


class SamplingDefaults(Section):
    """Default sampling parameters; the fields a request sets itself win."""

    max_tokens: int = Field(default=100, ge=1, description="Most tokens to generate.")
    temperature: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="Sampling temperature; 0 is greedy."
    )
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass, in (0, 1].")
    repetition_penalty: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, description="Penalty on repeated tokens; 1 is off."
    )
    repetition_context_size: int = Field(
        default=20, ge=1, description="How many recent tokens the repetition penalty looks at."
    )


class EngineSettings(Section):
    """How the generation thread batches requests and caches prompts."""

    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Most requests decoded together in one step."
    )
    prefill_batch_size: int = Field(
        default=8, ge=1, le=1024, description="Most prompts processed together in one step."
    )
    prefill_step_size: int = Field(
        default=512, ge=16, le=65536, description="Prompt tokens per request in one prefill step."
    )
    prompt_cache_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="Byte budget of the prompt prefix cache; 0 turns it off.",
    )
    prompt_cache_entries: int = Field(
        default=64, ge=1, description="Most cached prompt prefixes kept at once."
    )
    max_queue: int = Field(
        default=1024,
        ge=0,
        description="Requests that may wait beyond the running batch; more get 429 + Retry-After.",
    )
    heartbeat_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Idle seconds before a stream gets an SSE keep-alive comment.",
    )


class AuthSettings(Section):
    """API keys, sent by clients as `Authorization: Bearer <key>`. Keys never live in the spec."""

    api_keys_env: str | None = Field(
        default=None,
        min_length=1,
        description="Name of an environment variable holding the keys, separated by commas.",
    )
    api_keys_file: str | None = Field(
        default=None,
        min_length=1,
        description="File with one key per line ('#' starts a comment); relative to the spec.",
    )
    api_keys: list[str] | None = Field(
        default=None,
        description="Not allowed: literal keys end up in git. Use api_keys_env or api_keys_file.",
    )

    @field_validator("api_keys")
    @classmethod
    def _no_literal_keys(cls, value: list[str] | None) -> None:
        if value is not None:
            raise ValueError(
                "literal API keys are not allowed in a spec (they end up in git); "
                "put them in an environment variable (api_keys_env) or a file (api_keys_file)"
            )
        return None

    @property
    def enabled(self) -> bool:
        return self.api_keys_env is not None or self.api_keys_file is not None


class CorsSettings(Section):
    """Cross-origin access from browsers; none unless origins are listed."""

    allow_origins: list[str] = Field(
        default=[],
        description="Origins allowed to call the API from a browser, e.g. https://app.example.com.",
    )
    allow_headers: list[str] = Field(
        default=["Authorization", "Content-Type", "X-Request-ID"],
        description="Request headers a browser may send.",
    )
    max_age_seconds: int = Field(
        default=600, ge=0, description="How long a browser may cache a preflight answer."
    )


class LimitSettings(Section):
    """Bounds on what one request may ask for."""

    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest request body; larger ones get 413."
    )
    max_tokens: int = Field(
        default=4096, ge=1, description="Most tokens one request may ask to generate."
    )
    request_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A request still generating after this fails."
    )


class ServerSettings(Section):
    """Process behaviour: shutdown and logs."""

    shutdown_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long in-flight requests may take to finish.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text for people, json for log collectors."
    )
    access_log: bool = Field(default=True, description="Log one line per request.")


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a string or a list of strings, got {_show(value)}")
    return value


StopWords = Annotated[list[str], BeforeValidator(_as_list, json_schema_input_type=str | list[str])]


class _EnvSource(EnvSettingsSource):
    """Environment source that leaves undecodable JSON as the raw string.

    Validation then reports it against the variable (e.g. `MLXDEPLOY_STOP=</s>` is one stop word).
    """

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


class Spec(BaseSettings):
    """An mlxdeploy deployment: one model served with an OpenAI-compatible API."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        # Strict for YAML and keyword values; pydantic-settings coerces env strings first.
        strict=True,
        title="mlxdeploy spec",
    )

    extends: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A base spec (path relative to this file) that this one deep-merges over; "
            "mappings merge, lists and scalars replace."
        ),
    )
    model: str = Field(
        min_length=1,
        description=(
            "The model: an HF repo id (owner/name), a local model directory, a .gguf file, "
            "or pkg:<python_package>/<path> for a file inside an installed package. "
            "Relative paths are relative to this file."
        ),
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description="Model id that clients send as `model` and /v1/models lists; default: `model`.",
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to listen on.")
    prompt_format: PromptFormat = Field(
        default="auto",
        description=(
            "auto: the tokenizer's chat template if it has one, else role_mapping; "
            "chat_template: require the tokenizer's template; role_mapping: always role_mapping."
        ),
    )
    chat_template: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A Jinja2 chat template file (relative to the spec that names it) used instead of "
            "the tokenizer's own, e.g. templates/chatml.jinja; checked by validate."
        ),
    )
    role_mapping: RoleMapping = Field(
        default=RoleMapping(), description="Prompt pieces used when no chat template is used."
    )
    defaults: SamplingDefaults = Field(
        default=SamplingDefaults(), description="Default sampling; a request's own fields win."
    )
    stop: StopWords = Field(
        default=["</s>"], description="Stop words added to every request's own: a string or a list."
    )
    engine: EngineSettings = Field(
        default=EngineSettings(),
        description="Batching and prompt caching of the generation thread.",
    )
    auth: AuthSettings = Field(default=AuthSettings(), description="API keys; off by default.")
    cors: CorsSettings = Field(default=CorsSettings(), description="Browser cross-origin access.")
    limits: LimitSettings = Field(default=LimitSettings(), description="Per-request bounds.")
    server: ServerSettings = Field(default=ServerSettings(), description="Shutdown and logging.")

    _source: ModelSource | None = PrivateAttr(None)
    _base_dir: Path | None = PrivateAttr(None)
    _chat_template_text: str | None = PrivateAttr(None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvSource(settings_cls)

    @property
    def source(self) -> ModelSource:
        """The parsed `model`; `load_spec` resolves relative paths against the spec's directory."""
        if self._source is None:
            self._source = parse_model_source(self.model, Path.cwd())
        return self._source

    @property
    def base_dir(self) -> Path:
        """The spec file's directory: relative paths in the spec resolve against it."""
        return self._base_dir or Path.cwd()

    @property
    def chat_template_text(self) -> str | None:
        """The text of `chat_template`, read and checked by `load_spec`."""
        return self._chat_template_text

    @property
    def model_id(self) -> str:
        """The id clients use for this model: `name`, or `model` when no name is given."""
        return self.name or self.model


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the spec, for editors (yaml-language-server) and docs."""
    schema = Spec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


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
    base_dir = layers.file_for(("model",)).directory
    source = _check_source(merged.get("model"), base_dir, layers, problems)
    if source is not None:
        _check_memory(source, layers, problems)
    template = _check_template(merged.get("chat_template"), layers, problems)
    if problems or spec is None or source is None:
        raise SpecError(sorted(problems, key=_problem_order))
    spec._source = source
    spec._base_dir = path.parent
    spec._chat_template_text = template
    return spec


def _check_template(value: Any, layers: _Layers, problems: list[Problem]) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return read_chat_template(layers.file_for(("chat_template",)).directory / value)
    except TemplateProblem as error:
        problems.append(_validation_problem(_value_error(("chat_template",), error), layers))
        return None


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
    line, col = _position(root, ("extends",), "")
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
                line, col = _position(root, here, "")
                message = (
                    f"environment variable {missing[0]} is not set (use ${{{missing[0]}:-default}})"
                )
                problems.append(Problem(path, line, col, _dotted(here), message))
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


def _check_source(
    value: Any, base_dir: Path, layers: _Layers, problems: list[Problem]
) -> ModelSource | None:
    """Parse `model` against the spec's directory; a bad source is reported where it was set."""
    if not isinstance(value, str) or not value:
        return None  # already reported by validation
    try:
        return parse_model_source(value, base_dir)
    except ValueError as error:
        problems.append(_validation_problem(_value_error(("model",), error), layers))
        return None


def _check_memory(source: ModelSource, layers: _Layers, problems: list[Problem]) -> None:
    """Weights that cannot fit this machine's memory are a problem before anything loads."""
    try:
        needed = estimate_bytes(source)
    except (OSError, ValueError, KeyError) as error:  # an unreadable header: say so, once
        problems.append(_validation_problem(_value_error(("model",), ValueError(
            f"cannot read the size of the model's weights: {error}")), layers))  # fmt: skip
        return
    available = machine_memory()
    if needed is not None and needed > available:
        message = (
            f"the model's weights need about {gib(needed)} of memory, this machine has "
            f"{gib(available)}; use a smaller or quantized model"
        )
        problems.append(_validation_problem(_value_error(("model",), ValueError(message)), layers))


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
        message = f"the spec must be a mapping of keys like 'model: ...', got {_show(data)}"
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
        raise SpecError([Problem(path, line, col, _dotted(loc), message)])
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
        problems.append(Problem(path, line, col, _dotted((*loc, key.value)), message))
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
        return _EnvSource(Spec)(), []
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


def _validation_problem(error: ErrorDetails, layers: _Layers) -> Problem:
    loc = tuple(error["loc"])
    message = _message(error)
    if _covers(layers.overrides, loc):
        return Problem(layers.path, None, None, _dotted(loc), f"{message} (from an override)")
    if _covers(layers.env, loc):
        return Problem(layers.path, None, None, _env_name(loc, layers.env_names), message)
    spec_file = layers.file_for(loc)
    line, col = _position(spec_file.root, loc, error["type"])
    return Problem(spec_file.path, line, col, _dotted(loc), message)


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


def _position(root: yaml.Node, loc: tuple[str | int, ...], kind: str) -> tuple[int, int]:
    """Node of the offending value; the key for unknown keys; the parent mapping if missing."""
    node, key = root, root
    for part in loc:
        child = _child(node, part)
        if child is None:
            return _mark(node)
        key, node = child
    return _mark(key if kind == "extra_forbidden" else node)


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


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


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
    got = _show(error.get("input"))
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
    model: type[BaseModel] = Spec
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


def _number(value: Any) -> str:
    """A bound as written in the docs: 0 rather than 0.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: Any) -> str:
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


# --------------------------------------------------------------------------- formatting


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
