"""Where a spec's `model:` points: an HF repo id, a local model directory, or a GGUF file.

Parsing only checks the file system; it never downloads, loads weights or imports mlx.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_HF_REPO_ID = re.compile(r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+")
_LOCAL_PREFIXES = ("/", "./", "../", "~")
_PKG_PREFIX = "pkg:"


@dataclass(frozen=True)
class ModelSource:
    """A parsed `model:` value: `repo` is set for "hf", `path` (absolute) for "dir" and "gguf"."""

    kind: Literal["hf", "dir", "gguf"]
    value: str
    path: Path | None = None
    repo: str | None = None

    def __str__(self) -> str:
        return self.repo if self.repo is not None else str(self.path)


def parse_model_source(value: str, base_dir: Path) -> ModelSource:
    """Classify `value`; relative paths resolve against `base_dir` (the spec file's directory).

    Raises ValueError with a one-line message that says what to fix.
    """
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
            raise ValueError(f"{value}: GGUF file not found at {path}")
        if not path.is_file():
            raise ValueError(f"{value}: {path} is a directory, expected a .gguf file")
        return ModelSource(kind="gguf", value=value, path=path)
    if not path.exists():
        raise ValueError(f"{value}: no model directory at {path}")
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
    raise ValueError(f"{value}: package '{name}' has no file '{relative}'")


def _package_locations(value: str, name: str) -> list[str]:
    # find_spec on a top-level name locates the package without running its __init__.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    distribution = name.replace("_", "-")
    if spec is None:
        raise ValueError(
            f"{value}: package '{name}' is not installed (pip install --no-deps {distribution})"
        )
    if not spec.submodule_search_locations:
        raise ValueError(f"{value}: '{name}' is a module, not a package directory")
    return list(spec.submodule_search_locations)
