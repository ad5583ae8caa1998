"""The adapters a spec declares on its models: their files read, each checked against its base
model from file headers and configs only (`lora_format.py`), and resolved to what is served.

An adapter is served as a model id of its own (ids of models, adapters and endpoints share one
namespace), with the model's defaults and stop words unless it sets its own; endpoints may run
on it. A fused adapter (`fuse: true`) is merged into its model's weights: the model's own id
serves the fused weights too, so it must be the model's only adapter (the others were trained on
the plain weights).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lora_format import (
    AdapterFiles,
    AdapterFormatError,
    BaseLayout,
    problems,
    read_adapter,
    read_header,
)
from .problems import FieldError
from .settings import AdapterEntry, SamplingDefaults, Spec
from .sources import ModelSource, config_file, weight_files

if TYPE_CHECKING:
    from .catalog import ServedModel

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ServedAdapter:
    """One adapter as it is served: its model's settings with its own keys over them."""

    id: str
    model_id: str  # the base model's id
    path: Path  # the adapter's directory
    written: str  # the path as the spec wrote it (a request's `adapters` may name it so)
    fuse: bool
    description: str | None
    defaults: SamplingDefaults
    stop: tuple[str, ...]


def read_adapter_files(
    data: Mapping[str, Any], directory_for: Callable[[Loc], Path], require_files: bool
) -> tuple[dict[Loc, AdapterFiles | Path], list[FieldError]]:
    """Every adapter directory the (merged, unvalidated) spec names, read; keyed by the loc of
    its entry. Without `require_files`, a directory that is not here is checked for nothing
    (its path stands for it)."""
    found: dict[Loc, AdapterFiles | Path] = {}
    errors: list[FieldError] = []
    for loc, path in _named_paths(data):
        where = (*loc, "path")
        directory = directory_for(where) / path
        if not require_files and not directory.exists():
            found[loc] = directory.resolve()
            continue
        try:
            found[loc] = read_adapter(directory.resolve())
        except AdapterFormatError as error:
            errors.append(FieldError(where, str(error)))
    return found, errors


def _named_paths(data: Mapping[str, Any]) -> Iterator[tuple[Loc, str]]:
    entries = data.get("models")
    scopes: list[tuple[Loc, Any]] = [((), data)]
    listed = entries if isinstance(entries, list) else []
    scopes += [(("models", i), entry) for i, entry in enumerate(listed)]
    for prefix, scope in scopes:
        adapters = scope.get("adapters") if isinstance(scope, dict) else None
        for j, entry in enumerate(adapters if isinstance(adapters, list) else ()):
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str) and path:
                yield (*prefix, "adapters", j), path


def adapter_ids(spec: Spec) -> list[str]:
    """The ids of every adapter the spec declares, in spec order."""
    return [adapter.id for _, entries in _declared(spec) for adapter in entries]


def _declared(spec: Spec) -> list[tuple[Loc, list[AdapterEntry]]]:
    if spec.models is None:
        return [((), spec.adapters)]
    return [(("models", i), entry.adapters) for i, entry in enumerate(spec.models)]


def check_declarations(spec: Spec, errors: list[FieldError]) -> None:
    """What spans keys: where adapters may be declared, unique ids, one fused adapter alone."""
    if spec.models is not None and spec.adapters:
        message = "with 'models', each entry lists its own adapters"
        errors.append(FieldError(("adapters",), message, at_key=True))
    if spec.distributed is not None and adapter_ids(spec):
        message = "adapters are not served on a model split over ranks (distributed)"
        errors.append(FieldError(("distributed",), message, at_key=True))
    seen = {entry.id for entry in spec.models or ()} | {spec.name or spec.model or ""}
    for loc, entries in _declared(spec):
        for j, adapter in enumerate(entries):
            if adapter.id in seen:
                message = f"the id '{adapter.id}' is used twice (ids of models and adapters)"
                errors.append(FieldError((*loc, "adapters", j, "id"), message))
            seen.add(adapter.id)
        fused = [j for j, adapter in enumerate(entries) if adapter.fuse]
        if fused and len(entries) > 1:
            message = (
                "a fused adapter changes the model's weights, and the model's other adapters "
                "were trained on the plain ones: fuse a model's only adapter (declare the "
                "model again, under another id, to serve the others)"
            )
            errors.append(FieldError((*loc, "adapters", fused[0], "fuse"), message))


def resolve(
    spec: Spec,
    loc: Loc,
    model: ServedModel,
    files: Mapping[Loc, AdapterFiles | Path],
    errors: list[FieldError],
) -> tuple[ServedAdapter, ...]:
    """The model's adapters, each checked against the model's own files."""
    entries = spec.adapters if spec.models is None else _entries_at(spec, loc)
    layout: BaseLayout | None = None
    served = []
    for j, entry in enumerate(entries):
        where: Loc = (*loc, "adapters", j)
        adapter = files.get(where)
        if adapter is None:  # unreadable: reported where it was read
            continue
        if isinstance(adapter, Path):  # not on this machine (validate --no-weights)
            served.append(_served(entry, model, adapter))
            continue
        if layout is None:
            try:
                layout = base_layout(model.source)
            except (OSError, ValueError, KeyError, TypeError) as error:
                message = f"cannot read the model's config or weight headers: {error}"
                errors.append(FieldError((*where, "path"), message))
                return ()
        found = problems(adapter, layout)
        errors.extend(FieldError((*where, "path"), problem) for problem in found[:4])
        served.append(_served(entry, model, adapter.path))
    return tuple(served)


def _entries_at(spec: Spec, loc: Loc) -> list[AdapterEntry]:
    assert spec.models is not None and isinstance(loc[1], int)
    return spec.models[loc[1]].adapters


def _served(entry: AdapterEntry, model: ServedModel, path: Path) -> ServedAdapter:
    defaults = model.defaults
    if entry.defaults is not None:
        defaults = defaults.model_copy(update=entry.defaults.model_dump(exclude_unset=True))
    return ServedAdapter(
        id=entry.id,
        model_id=model.id,
        path=path,
        written=entry.path,
        fuse=entry.fuse,
        description=entry.description,
        defaults=defaults,
        stop=tuple(model.stop if entry.stop is None else entry.stop),
    )


def base_layout(source: ModelSource) -> BaseLayout:
    """The base model's layer count and linear layers, from its config and weight headers
    (nothing to check against for a GGUF file, whose tensors are renamed when converted, or
    a model that is not on this machine)."""
    config = config_file(source)
    if source.kind == "gguf" or config is None or not config.is_file():
        return BaseLayout(None)
    raw = json.loads(config.read_text(encoding="utf-8"))
    headers = [read_header(path) for path in weight_files(source) or []]
    return BaseLayout.of(raw if isinstance(raw, dict) else {}, headers)
