"""The deployment spec: YAML -> typed `Spec`, with every mistake reported as `file:line:col`.

Layers, lowest first: the files a spec `extends`, the spec itself, `MLXDEPLOY_*` environment
variables (strings, coerced to the field's type), then keyword overrides from the CLI. YAML and
overrides are validated strictly. The settings themselves are in `settings.py`, YAML nodes
and their positions in `yaml_nodes.py`, and the placing of each problem in `placement.py`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError

from ..device import device_memory
from ..footprint import bytes_text, estimate_bytes
from ..gguf_header import GGUFError
from ..sharding import model_config, model_problem
from .catalog import Catalog, CatalogError, Files, build_catalog, read_files
from .deployment import Deployment
from .memory import MemorySettings
from .placement import Layers, SpecFile, field_problem, validation_problem
from .problems import FieldError, Problem, SpecError, dotted
from .scale import DistributedSettings
from .settings import ENV_DELIMITER, ENV_PREFIX, EnvSource, Spec
from .sources import ModelSource, config_file, weight_files
from .yaml_nodes import parse_yaml, position, read_text


def load_spec(path: Path, *, require_weights: bool = True, **overrides: Any) -> Deployment:
    """Read, merge (YAML < environment < overrides) and validate a spec; resolve its catalog.

    Overrides whose value is None are ignored, so CLI flags can be passed through unset.
    Without `require_weights` (`validate --no-weights`), a model source whose files are not
    on this machine is checked for its form only (see `parse_model_source`).
    Raises SpecError listing every problem; never a raw YAML or pydantic exception.
    """
    shown = str(path)
    chain = _read_chain(path)
    if chain.broken:  # without its bases, the spec's own keys cannot be judged
        raise SpecError(chain.problems)
    files, problems = chain.files, list(chain.problems)
    env, env_problems = _read_env(shown)
    layers = Layers(shown, files, env, _env_names(), _drop_none(overrides))
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
        problems += [validation_problem(detail, layers) for detail in error.errors()]
    except SettingsError as error:
        problems.append(Problem(shown, None, None, "environment", str(error)))
    # Sources and templates are checked even when other keys are wrong: every problem at once.
    referenced, file_errors = read_files(
        merged, lambda loc: layers.file_for(loc).directory, require_weights
    )
    problems += [field_problem(error, layers) for error in file_errors]
    machines = spec.distributed.machines if spec is not None and spec.distributed else 1
    _check_memory(referenced, merged, layers, problems, spec, machines)
    catalog = None if spec is None else _check_catalog(spec, referenced, layers, problems)
    if spec is not None and spec.distributed is not None:
        _check_split(spec.distributed, referenced, layers, problems)
    if problems or spec is None or catalog is None:
        problems = _unset_alone(problems, chain.unset)
        raise SpecError(sorted(dict.fromkeys(problems), key=_problem_order))
    return Deployment(spec, catalog, path.parent)


def _check_catalog(
    spec: Spec, files: Files, layers: Layers, problems: list[Problem]
) -> Catalog | None:
    """Models and presets resolved; mistakes across keys (ids, endpoints, paths) reported."""
    try:
        return build_catalog(spec, files)
    except CatalogError as error:
        problems += [field_problem(field_error, layers) for field_error in error.errors]
        return None


def _check_split(
    distributed: DistributedSettings, files: Files, layers: Layers, problems: list[Problem]
) -> None:
    """A model that does not split over the ranks is a problem before any rank starts."""
    for loc, source in files.sources.items():
        try:
            path = config_file(source)
            config = None if path is None else model_config(path)
        except (OSError, ValueError, GGUFError) as error:
            message = f"cannot read the model's config.json: {error}"
            problems.append(field_problem(FieldError(loc, message), layers))
            continue
        try:
            problem = (
                None
                if config is None
                else model_problem(config, distributed.size, distributed.strategy)
            )
        except ValueError as error:  # mlx-lm's sources in a form this cannot read
            problem = f"cannot check the split: {error}"
        if problem is not None:
            problems.append(field_problem(FieldError(loc, problem), layers))


def resolve_spec(spec: Spec) -> Deployment:
    """The Deployment of a Spec made in code (relative paths: the working directory)."""
    files, errors = read_files(spec.model_dump(), lambda loc: Path.cwd())
    if errors:
        raise CatalogError(errors)
    return Deployment(spec, build_catalog(spec, files), Path.cwd())


@dataclass
class _Chain:
    """The spec and the files it `extends`, spec first. `unset`: the problems of `${VAR}`
    references to unset variables; `broken`: an `extends` that names no readable base."""

    files: list[SpecFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unset: list[Problem] = field(default_factory=list)
    broken: bool = False


def _read_chain(path: Path) -> _Chain:
    """The spec and the files it `extends`, interpolated; a missing base or a cycle is a problem."""
    chain = _Chain()
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None:
        seen.add(current.resolve())
        shown = str(current)
        root, data, found = parse_yaml(shown, read_text(current))
        unset = _interpolate(shown, root, data)
        chain.problems += found + unset
        chain.unset += unset
        parent = data.pop("extends", None)
        chain.files.append(SpecFile(shown, root, data))
        current = _parent(shown, root, parent, seen, chain)
    return chain


def _parent(
    shown: str, root: yaml.Node, parent: Any, seen: set[Path], chain: _Chain
) -> Path | None:
    if parent is None:
        return None
    line, col = position(root, ("extends",), at_key=False)
    # Normalized, so that a base reached from several specs is named (and reported) once.
    target = None
    if isinstance(parent, str) and parent:
        target = Path(os.path.normpath(Path(shown).parent / parent))
    if target is None:
        message = "expected a path to a base spec"
    elif target.resolve() in seen:
        message = f"'{parent}' extends itself (cycle)"
    elif not target.is_file():
        message = f"base spec '{target}' not found"
    else:
        return target
    chain.problems.append(Problem(shown, line, col, "extends", message))
    chain.broken = True
    return None


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
                line, col = position(root, here, at_key=False)
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


@dataclass(frozen=True)
class _Weights:
    """One model's weights as `validate` sees them: where the spec names it, and their size."""

    loc: tuple[str | int, ...]
    label: str
    size: int
    eager: bool = True
    pin: bool = False


def _check_memory(
    files: Files,
    data: dict[str, Any],
    layers: Layers,
    problems: list[Problem],
    spec: Spec | None,
    machines: float = 1,
) -> None:
    """Weights that cannot fit the memory budget are a problem before anything loads: the
    models loaded at start together, the pinned ones together, and each model beside the
    pinned ones. Sizes come from file headers; no weights are read. A model split over
    several `machines` (distributed hosts) needs its share on each."""
    weights = _measure(files, data, layers, problems, spec)
    memory = spec.memory if spec is not None else MemorySettings()
    budget = memory.bytes_of(device_memory()) * machines
    limit = _limit_text(memory, budget, machines)
    several = "models" in data
    eager = [w for w in weights if w.eager]
    if sum(w.size for w in eager) > budget:
        subject = (
            "the models' weights"
            if len(eager) == len(weights)
            else ("the weights of the models loaded at start")
        )
        message = _too_big(subject if several else "", eager, machines)
        message += f", {limit}; use smaller or quantized models"
        if several:
            message += " or load some on demand (load: on_demand)"
        where = ("models",) if several else ("model",)
        problems.append(field_problem(FieldError(where, message), layers))
        return
    pinned = [w for w in weights if w.pin]
    if sum(w.size for w in pinned) > budget:
        message = _too_big("the pinned models' weights", pinned, machines) + f", {limit}"
        problems.append(field_problem(FieldError(("models",), message), layers))
        return
    for alone in weights:
        beside = [w for w in pinned if w is not alone]
        if alone.size + sum(w.size for w in beside) > budget:
            message = f"model '{alone.label}' needs about {bytes_text(alone.size)} of memory"
            if beside:
                message += f" beside the pinned models ({_sizes(beside)})"
            message += f", {limit}: it can never be loaded"
            problems.append(field_problem(FieldError(alone.loc, message), layers))


def _size(
    loc: tuple[str | int, ...], source: ModelSource, layers: Layers, problems: list[Problem]
) -> int | None:
    """The bytes of the source's weights (None: not measurable here, or a problem added)."""
    try:
        found = weight_files(source)
        return None if found is None else estimate_bytes(found)
    except (OSError, ValueError, KeyError, TypeError) as error:  # an unreadable header
        message = f"cannot read the size of the model's weights: {error}"
        problems.append(field_problem(FieldError(loc, message), layers))
        return None


def _measure(
    files: Files, data: dict[str, Any], layers: Layers, problems: list[Problem], spec: Spec | None
) -> list[_Weights]:
    """The size of each model's weights that can be measured here (a hub model that is not
    downloaded cannot), its draft model's with them."""
    weights: list[_Weights] = []
    for loc, source in files.sources.items():
        size = _size(loc, source, layers, problems)
        draft_loc = (*loc[:-1], "draft_model")
        draft = files.drafts.get(draft_loc)
        if size is None:
            continue
        if draft is not None:
            size += _size(draft_loc, draft, layers, problems) or 0
        entry = None
        if spec is not None and spec.models is not None and loc[0] == "models":
            entry = spec.models[int(loc[1])]
        eager = entry is None or entry.load == "eager"
        pin = entry is not None and entry.pin
        weights.append(_Weights(loc, _model_label(data, loc), size, eager, pin))
    return weights


def _too_big(what: str, weights: list[_Weights], machines: float) -> str:
    needed = sum(w.size for w in weights)
    if what:
        message = f"{what} need about {bytes_text(needed)} of memory together ({_sizes(weights)})"
    else:
        message = f"the model's weights need about {bytes_text(needed)} of memory"
    if machines > 1:
        message += f", {bytes_text(int(needed / machines))} on each of {machines:g} machines"
    return message


def _sizes(weights: list[_Weights]) -> str:
    return ", ".join(f"{w.label} {bytes_text(w.size)}" for w in weights)


def _limit_text(memory: MemorySettings, budget: float, machines: float) -> str:
    if memory.budget is None:
        return f"this machine has {bytes_text(int(budget / machines))}"
    return f"the memory budget is {bytes_text(int(budget / machines))} (memory.budget)"


def _model_label(data: dict[str, Any], loc: tuple[str | int, ...]) -> str:
    """A model's id for messages, read from the (unvalidated) data when it is there."""
    if loc[0] == "models" and isinstance(loc[1], int):
        entry = data["models"][loc[1]]
        if isinstance(entry.get("id"), str):
            return str(entry["id"])
    return str(data.get("name") or data.get("model"))


def _unset_alone(problems: list[Problem], unset: list[Problem]) -> list[Problem]:
    """A value with an unset `${VAR}` has that one problem: what its raw text fails is noise."""
    places = {(p.path, p.line, p.col) for p in unset}
    return [p for p in problems if p in unset or (p.path, p.line, p.col) not in places]


def _problem_order(problem: Problem) -> tuple[bool, int, int]:
    return (problem.line is None, problem.line or 0, problem.col or 0)


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
