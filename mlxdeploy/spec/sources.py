"""Where a spec's `model:` points: an HF repo id, a local model directory, or a GGUF file.

Parsing only checks the file system (and the first bytes of a GGUF file); it never downloads,
loads weights or imports mlx. With `require_files=False` (`validate --no-weights`, for machines
without the weights) a source whose files are not on this machine is checked for its form only.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..gguf_header import GGUF_MAGIC, GGUF_VERSIONS

_HF_REPO_ID = re.compile(r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+")
_LOCAL_PREFIXES = ("/", "./", "../", "~")
_PKG_PREFIX = "pkg:"


@dataclass(frozen=True)
class ModelSource:
    """A parsed `model:` value: `repo` is set for "hf", `path` (absolute) for "dir" and "gguf".

    `present` is False for a well-formed source whose files are not on this machine (parsed
    with `require_files=False`); `path` is then None when it cannot be known (a `pkg:`
    package that is not installed)."""

    kind: Literal["hf", "dir", "gguf"]
    value: str
    path: Path | None = None
    repo: str | None = None
    present: bool = True

    def __str__(self) -> str:
        if self.repo is not None:
            return self.repo
        return str(self.path) if self.path is not None else self.value


class SourceNotHere(ValueError):
    """A well-formed source whose files are not on this machine."""

    def __init__(self, message: str, kind: Literal["dir", "gguf"], path: Path | None = None):
        super().__init__(message)
        self.kind = kind
        self.path = path


def parse_model_source(value: str, base_dir: Path, require_files: bool = True) -> ModelSource:
    """Classify `value`; relative paths resolve against `base_dir` (the spec file's directory).

    Raises ValueError with a one-line message that says what to fix. Without `require_files`,
    a source whose files are missing is returned with `present=False` instead.
    """
    try:
        return _parse(value, base_dir)
    except SourceNotHere as missing:
        if require_files:
            raise
        return ModelSource(kind=missing.kind, value=value, path=missing.path, present=False)


def weight_files(source: ModelSource) -> list[Path] | None:
    """The files holding a model's weights on this machine (a GGUF file, a directory's or a
    downloaded repo's .safetensors), or None when they are not here."""
    if not source.present:
        return None
    if source.kind == "gguf" and source.path is not None:
        return [source.path]
    if source.kind == "dir" and source.path is not None:
        return sorted(source.path.glob("*.safetensors"))
    snapshots = _hub_cache(str(source.repo)) / "snapshots"
    found = sorted(snapshots.glob("*/*.safetensors")) if snapshots.is_dir() else []
    return found or None  # not downloaded yet: nothing to measure


def config_file(source: ModelSource) -> Path | None:
    """Where a model's configuration is read from on this machine: its config.json, or the
    GGUF file itself (its header); None when the model is not here."""
    if not source.present:
        return None
    if source.kind == "gguf" and source.path is not None:
        return source.path
    if source.kind == "dir" and source.path is not None:
        return source.path / "config.json"
    repo = _hub_cache(str(source.repo))
    main = repo / "refs" / "main"  # the revision a download without one takes
    if main.is_file():
        path = repo / "snapshots" / main.read_text(encoding="utf-8").strip() / "config.json"
        return path if path.is_file() else None
    found = sorted((repo / "snapshots").glob("*/config.json"))
    return found[-1] if found else None


def _hub_cache(repo: str) -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def _parse(value: str, base_dir: Path) -> ModelSource:
    if not value.strip():
        raise ValueError(
            "model is empty: give an HF repo id (owner/name), a model directory or a .gguf file"
        )
    if value.startswith(_PKG_PREFIX):
        return _local_source(value, _package_file(value))
    if _looks_local(value, base_dir):
        return _local_source(value, _resolve(value, base_dir))
    if _is_hf_repo_id(value):
        return ModelSource(kind="hf", value=value, repo=value)
    raise ValueError(
        f"{value!r} is not an HF repo id (owner/name), an existing model directory or a .gguf file"
    )


def _looks_local(value: str, base_dir: Path) -> bool:
    if value.startswith(_LOCAL_PREFIXES) or value.lower().endswith(".gguf"):
        return True
    return (base_dir / value).exists()


def _is_hf_repo_id(value: str) -> bool:
    if _HF_REPO_ID.fullmatch(value) is None:
        return False
    return all(part not in (".", "..") for part in value.split("/"))


def _resolve(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return path.resolve()


def _local_source(value: str, path: Path) -> ModelSource:
    if path.suffix.lower() == ".gguf":
        if not path.exists():
            raise SourceNotHere(f"{value}: GGUF file not found at {path}", "gguf", path)
        if not path.is_file():
            raise ValueError(f"{value}: {path} is a directory, expected a .gguf file")
        _check_gguf_start(value, path)
        return ModelSource(kind="gguf", value=value, path=path)
    if not path.exists():
        raise SourceNotHere(f"{value}: no model directory at {path}", "dir", path)
    if not path.is_dir():
        raise ValueError(
            f"{value}: {path} is a file but not a .gguf; give a model directory or a .gguf file"
        )
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{value}: {path} has no config.json; expected a model directory "
            "(config.json, *.safetensors, tokenizer files)"
        )
    return ModelSource(kind="dir", value=value, path=path)


def _check_gguf_start(value: str, path: Path) -> None:
    """The magic, version and table sizes that open every GGUF file, read with plain struct."""
    try:
        with path.open("rb") as handle:
            start = handle.read(24)
    except OSError as error:
        raise ValueError(f"{value}: cannot read {path}: {error.strerror or error}") from None
    if start[:4] != GGUF_MAGIC:
        raise ValueError(
            f"{value}: {path} is not a GGUF file (it starts with {start[:4]!r}, not b'GGUF')"
        )
    if len(start) < 24:
        raise ValueError(f"{value}: {path} is a truncated GGUF file ({len(start)} bytes)")
    (version,) = struct.unpack_from("<I", start, 4)
    if version not in GGUF_VERSIONS:
        supported = ", ".join(map(str, GGUF_VERSIONS))
        raise ValueError(f"{value}: {path} is GGUF version {version} (supported: {supported})")


def _package_file(value: str) -> Path:
    """Locate `pkg:<package>/<path>` inside an installed package without importing it."""
    name, _, relative = value[len(_PKG_PREFIX) :].partition("/")
    rel = Path(relative)
    if not name.isidentifier() or not relative or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{value}: expected pkg:<python_package>/<path/inside/the/package>")
    for location in _package_locations(value, name):
        candidate = Path(location) / rel
        if candidate.exists():
            return candidate.resolve()
    raise SourceNotHere(f"{value}: package '{name}' has no file '{relative}'", _kind(rel))


def _package_locations(value: str, name: str) -> list[str]:
    # find_spec on a top-level name locates the package without running its __init__.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    distribution = name.replace("_", "-")
    if spec is None:
        hint = f"pip install --no-deps {distribution}"
        raise SourceNotHere(
            f"{value}: package '{name}' is not installed ({hint})", _kind(Path(value))
        )
    if not spec.submodule_search_locations:
        raise ValueError(f"{value}: '{name}' is a module, not a package directory")
    return list(spec.submodule_search_locations)


def _kind(path: Path) -> Literal["dir", "gguf"]:
    return "gguf" if path.suffix.lower() == ".gguf" else "dir"
