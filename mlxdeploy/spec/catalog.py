"""What a spec serves, resolved: each model with its own prompt and sampling settings, and the
endpoint presets over them. Model ids and preset names share one namespace: both are what
clients send as `model`.

`read_files` parses every model source and reads every template, each path relative to the
file that wrote it; `build_catalog` then puts models and presets together and checks what spans
keys (ids, endpoint models, paths). Both report each mistake as a `FieldError` at its key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from ..grammar import problem_of
from ..lora_format import AdapterFiles
from . import adapters as adapter_specs
from .adapters import ServedAdapter
from .drafts import vocabulary_problem
from .formats import ResponseFormat
from .memory import Residency
from .problems import FieldError
from .reasoning import ReasoningSettings
from .routes import BUILTIN_PATHS, BUILTIN_PREFIXES
from .settings import (
    DraftDepth,
    Endpoint,
    EngineSettings,
    ModelEntry,
    PromptFormat,
    RoleMapping,
    SamplingDefaults,
    Spec,
    Task,
)
from .sources import ModelSource, parse_model_source
from .templates import PromptTemplate, TemplateProblem, read_chat_template, read_prompt_template

Loc = tuple[str | int, ...]
DirectoryFor = Callable[[Loc], Path]  # the directory of the file that set the key at `loc`

ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*$")

S = TypeVar("S", bound=BaseModel)


class CatalogError(Exception):
    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(str(error) for error in errors))
        self.errors = errors


@dataclass(frozen=True)
class ServedModel:
    """One model as it is served: the spec's top level with the entry's own keys over it."""

    id: str
    model: str  # as written in the spec
    source: ModelSource
    prompt_format: PromptFormat
    chat_template: str | None  # the template's text, over the tokenizer's own
    role_mapping: RoleMapping
    defaults: SamplingDefaults
    stop: tuple[str, ...]
    tool_parser: str | None = None  # None: inferred from the chat template
    reasoning: ReasoningSettings = field(default_factory=ReasoningSettings)
    residency: Residency = field(default_factory=Residency)
    task: Task = "generate"  # embed: served on /v1/embeddings only
    adapters: tuple[ServedAdapter, ...] = ()  # served in the model's batches
    draft: ModelSource | None = None  # guesses tokens the model verifies (speculative.py)
    draft_model: str | None = None  # the draft as written in the spec
    num_draft_tokens: int = 0  # guesses per step and request, at most
    draft_depth: DraftDepth = "adaptive"  # how many of those a request guesses
    engine: EngineSettings = field(default_factory=EngineSettings)  # its generation thread


@dataclass(frozen=True)
class Preset:
    """A named endpoint over one model."""

    name: str
    model_id: str
    path: str
    description: str | None
    system_prompt: str | None
    prompt_template: PromptTemplate | None
    defaults: SamplingDefaults  # the model's, with the preset's keys over them
    stop: tuple[str, ...]  # the model's and the preset's own
    response_format: ResponseFormat | None = None  # for requests that set none of their own


@dataclass(frozen=True)
class Catalog:
    models: tuple[ServedModel, ...]
    presets: tuple[Preset, ...] = ()

    @property
    def ids(self) -> list[str]:
        """Every id a client may send as `model`: models first, their adapters, then presets."""
        adapters = [a.id for m in self.models for a in m.adapters]
        return [m.id for m in self.models] + adapters + [p.name for p in self.presets]


@dataclass
class Files:
    """What the spec's paths point at, read once: model sources, chat and prompt templates,
    keyed by where the spec names them (e.g. ("models", 1, "model"))."""

    sources: dict[Loc, ModelSource] = field(default_factory=dict)
    chat_templates: dict[Loc, str] = field(default_factory=dict)
    prompt_templates: dict[Loc, PromptTemplate] = field(default_factory=dict)
    # Keyed by their entry; a path alone where the files are not on this machine.
    adapters: dict[Loc, AdapterFiles | Path] = field(default_factory=dict)
    drafts: dict[Loc, ModelSource] = field(default_factory=dict)  # draft_model sources


def read_files(
    data: Mapping[str, Any], directory_for: DirectoryFor, require_weights: bool = True
) -> tuple[Files, list[FieldError]]:
    """Parse every model source and read every template the (merged, unvalidated) spec names,
    so that these problems are found even while other keys are wrong. Values of the wrong
    type are skipped: validation reports those. Without `require_weights`, a source whose
    files are not on this machine is checked for its form only."""
    files, errors = Files(), list[FieldError]()
    for loc, value in _named(data, "model", "chat_template", "draft_model"):
        try:
            if loc[-1] in ("model", "draft_model"):
                source = parse_model_source(value, directory_for(loc), require_weights)
                (files.sources if loc[-1] == "model" else files.drafts)[loc] = source
            else:
                files.chat_templates[loc] = read_chat_template(directory_for(loc) / value)
        except ValueError as error:  # TemplateProblem is one
            errors.append(FieldError(loc, str(error)))
    endpoints = data.get("endpoints")
    for name, endpoint in endpoints.items() if isinstance(endpoints, dict) else ():
        path = endpoint.get("prompt_template") if isinstance(endpoint, dict) else None
        if isinstance(path, str) and path:
            where: Loc = ("endpoints", name, "prompt_template")
            try:
                files.prompt_templates[where] = read_prompt_template(directory_for(where) / path)
            except TemplateProblem as error:
                errors.append(FieldError(where, str(error)))
    for loc, draft in files.drafts.items():
        model = files.sources.get((*loc[:-1], "model"))
        problem = None if model is None else vocabulary_problem(model, draft)
        if problem is not None:
            errors.append(FieldError(loc, problem))
    files.adapters, adapter_errors = adapter_specs.read_adapter_files(
        data, directory_for, require_weights
    )
    return files, errors + adapter_errors


def _named(data: Mapping[str, Any], *keys: str) -> Iterator[tuple[Loc, str]]:
    """Non-empty string values of `keys` at the top level and in each `models` entry."""
    entries = data.get("models")
    scopes: list[tuple[Loc, Any]] = [((), data)]
    scopes += [
        (("models", i), e) for i, e in enumerate(entries if isinstance(entries, list) else ())
    ]
    for prefix, scope in scopes:
        for key in keys:
            value = scope.get(key) if isinstance(scope, dict) else None
            if isinstance(value, str) and value:
                yield (*prefix, key), value


def build_catalog(spec: Spec, files: Files) -> Catalog:
    """Resolve the spec's models and presets over files that `read_files` read without
    error; raises CatalogError listing every mistake across keys."""
    errors: list[FieldError] = []
    if spec.models is None:
        models = [_single(spec, files)]
    else:
        models = [_entry(spec, i, entry, files) for i, entry in enumerate(spec.models)]
    served = tuple(
        _with_adapters(spec, () if spec.models is None else ("models", i), m, files, errors)
        for i, m in enumerate(models)
        if m is not None
    )
    _check_unique_ids(spec, errors)
    adapter_specs.check_declarations(spec, errors)
    by_id = {m.id: m for m in served} | _adapter_views(served)
    presets = tuple(
        preset
        for name, endpoint in spec.endpoints.items()
        if (preset := _preset(spec, name, endpoint, by_id, files, errors)) is not None
    )
    _check_paths(presets, errors)
    _check_tasks(spec, served, errors)
    _check_drafts(spec, served, errors)
    if errors:
        raise CatalogError(errors)
    return Catalog(served, presets)


def _with_adapters(
    spec: Spec, loc: Loc, model: ServedModel, files: Files, errors: list[FieldError]
) -> ServedModel:
    """The model with the adapters declared at `loc` (its entry, or the top level)."""
    adapters = adapter_specs.resolve(spec, loc, model, files.adapters, errors)
    return dataclasses.replace(model, adapters=adapters) if adapters else model


def _adapter_views(models: tuple[ServedModel, ...]) -> dict[str, ServedModel]:
    """Each adapter as the model endpoints run on: its model with its own settings."""
    return {
        a.id: dataclasses.replace(m, id=a.id, defaults=a.defaults, stop=a.stop, adapters=())
        for m in models
        for a in m.adapters
    }


def _single(spec: Spec, files: Files) -> ServedModel | None:
    assert spec.model is not None  # Spec's own validator requires `model` or `models`
    source = files.sources.get(("model",))
    if source is None:
        return None
    return ServedModel(
        id=spec.name or spec.model,
        model=spec.model,
        source=source,
        prompt_format=spec.prompt_format,
        chat_template=files.chat_templates.get(("chat_template",)),
        role_mapping=spec.role_mapping,
        defaults=spec.defaults,
        stop=tuple(spec.stop),
        tool_parser=spec.tool_parser,
        reasoning=spec.reasoning,
        residency=Residency(idle_unload_seconds=spec.memory.idle_unload_seconds),
        task=spec.task,
        engine=spec.engine,
        **_draft(files, (), spec.draft_model, spec.num_draft_tokens, spec.draft_depth),
    )


def _entry(spec: Spec, index: int, entry: ModelEntry, files: Files) -> ServedModel | None:
    loc: Loc = ("models", index)
    source = files.sources.get((*loc, "model"))
    if source is None:
        return None
    template_loc = (*loc, "chat_template") if entry.chat_template else ("chat_template",)
    return ServedModel(
        id=entry.id,
        model=entry.model,
        source=source,
        prompt_format=entry.prompt_format or spec.prompt_format,
        chat_template=files.chat_templates.get(template_loc),
        role_mapping=overlay(spec.role_mapping, entry.role_mapping),
        defaults=overlay(spec.defaults, entry.defaults),
        stop=tuple(spec.stop if entry.stop is None else entry.stop),
        tool_parser=entry.tool_parser or spec.tool_parser,
        reasoning=overlay(spec.reasoning, entry.reasoning),
        residency=Residency(
            entry.load, entry.pin, entry.idle_unload_seconds or spec.memory.idle_unload_seconds
        ),
        task=entry.task or spec.task,
        engine=overlay(spec.engine, entry.engine),
        **_draft(
            files,
            loc,
            entry.draft_model,
            entry.num_draft_tokens or spec.num_draft_tokens,
            entry.draft_depth or spec.draft_depth,
        ),
    )


def _draft(
    files: Files, loc: Loc, written: str | None, tokens: int, depth: DraftDepth
) -> dict[str, Any]:
    """The ServedModel fields of a model's draft (none: no fields)."""
    source = files.drafts.get((*loc, "draft_model"))
    if written is None or source is None:
        return {}
    return {"draft": source, "draft_model": written, "num_draft_tokens": tokens,
            "draft_depth": depth}  # fmt: skip


def _preset(
    spec: Spec,
    name: str,
    endpoint: Endpoint,
    models: dict[str, ServedModel],
    files: Files,
    errors: list[FieldError],
) -> Preset | None:
    loc: Loc = ("endpoints", name)
    if not ENDPOINT_NAME.match(name):
        message = "an endpoint name is a model id: letters, digits and . _ ~ - only"
        errors.append(FieldError(loc, message, at_key=True))
        return None
    declared = _declared_ids(spec)
    model_id = endpoint.model or declared[0]
    if model_id not in declared:
        message = f"no model with id '{model_id}' (models: {', '.join(declared)})"
        errors.append(FieldError((*loc, "model"), message))
        return None
    model = models.get(model_id)
    if model is None:  # its weights could not be found: reported at its own `model` key
        return None
    if model.task == "embed":
        message = f"'{model_id}' is an embedding model (task: embed); endpoints run chat requests"
        errors.append(FieldError((*loc, "model"), message))
        return None
    if not _enforceable(endpoint.response_format, loc, errors):
        return None
    return Preset(
        name=name,
        model_id=model.id,
        path=endpoint.path or f"/v1/endpoints/{name}",
        description=endpoint.description,
        system_prompt=endpoint.system_prompt,
        prompt_template=files.prompt_templates.get((*loc, "prompt_template")),
        defaults=overlay(model.defaults, endpoint.defaults),
        stop=tuple(dict.fromkeys((*model.stop, *endpoint.stop))),
        response_format=endpoint.response_format,
    )


def _enforceable(fmt: ResponseFormat | None, loc: Loc, errors: list[FieldError]) -> bool:
    """Whether the preset's schema compiles; a bad one fails `validate`, not every request."""
    schema = None if fmt is None else fmt.schema_text()
    problem = None if schema is None else problem_of(schema)
    if problem is not None:
        where = (
            (*loc, "response_format", "json_schema", "schema")
            if fmt and fmt.json_schema
            else (*loc, "response_format")
        )
        errors.append(FieldError(where, f"invalid JSON schema: {problem}"))
    return problem is None


def overlay(base: S, top: S | None) -> S:
    """`base` with the keys `top` sets (explicitly, in the spec) over it."""
    if top is None:
        return base
    return base.model_copy(update=top.model_dump(exclude_unset=True))


def _declared_ids(spec: Spec) -> list[str]:
    """Model ids, then adapter ids: what an endpoint may run on."""
    if spec.models is not None:
        return [entry.id for entry in spec.models] + adapter_specs.adapter_ids(spec)
    return [spec.name or spec.model or ""] + adapter_specs.adapter_ids(spec)


def _check_unique_ids(spec: Spec, errors: list[FieldError]) -> None:
    seen: set[str] = set()
    for index, entry in enumerate(spec.models or ()):
        if entry.id in seen:
            errors.append(FieldError(("models", index, "id"), f"the id '{entry.id}' is used twice"))
        seen.add(entry.id)
    seen.update(_declared_ids(spec))
    for name in spec.endpoints:
        if name in seen:
            message = f"'{name}' is already a model id; endpoints and models share one set of ids"
            errors.append(FieldError(("endpoints", name), message, at_key=True))


def _check_tasks(spec: Spec, models: tuple[ServedModel, ...], errors: list[FieldError]) -> None:
    """An embedding model needs the embeddings API, and runs on one process."""
    embedders = [m.id for m in models if m.task == "embed"]
    if embedders and "embeddings" not in spec.apis:
        message = f"'{embedders[0]}' is an embedding model (task: embed): add embeddings to apis"
        errors.append(FieldError(("apis",), message))
    if embedders and spec.distributed is not None:
        message = "a distributed spec serves a generation model, not an embedding model"
        errors.append(FieldError(("distributed",), message, at_key=True))


def _check_drafts(spec: Spec, models: tuple[ServedModel, ...], errors: list[FieldError]) -> None:
    """Where a draft model may be named, and for which models."""
    if spec.models is not None and spec.draft_model is not None:
        message = "with 'models', each entry names its own draft_model"
        errors.append(FieldError(("draft_model",), message, at_key=True))
    if spec.distributed is not None and any(m.draft is not None for m in models):
        message = "a draft model does not run on a model split over ranks (distributed)"
        errors.append(FieldError(("distributed",), message, at_key=True))
    for i, model in enumerate(models):
        if model.draft is not None and model.task == "embed":
            loc: Loc = ("draft_model",) if spec.models is None else ("models", i, "draft_model")
            message = "an embedding model (task: embed) generates nothing to draft for"
            errors.append(FieldError(loc, message, at_key=True))


def _check_paths(presets: tuple[Preset, ...], errors: list[FieldError]) -> None:
    owners: dict[str, str] = {}
    for preset in presets:
        loc: Loc = ("endpoints", preset.name, "path")
        if preset.path in BUILTIN_PATHS or preset.path.startswith(BUILTIN_PREFIXES):
            errors.append(FieldError(loc, f"'{preset.path}' is a built-in route; choose another"))
        elif preset.path in owners:
            message = f"'{preset.path}' is also the path of endpoint '{owners[preset.path]}'"
            errors.append(FieldError(loc, message))
        owners.setdefault(preset.path, preset.name)
