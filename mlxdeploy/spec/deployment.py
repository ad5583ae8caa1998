"""A loaded spec: the settings as written beside what they resolve to on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog
from .settings import Spec


@dataclass(frozen=True)
class Deployment:
    """What `load_spec` returns. `spec`: the validated settings; `catalog`: the models and
    presets served, paths resolved and templates read; `base_dir`: the directory relative
    paths in the spec resolve against (the spec file's)."""

    spec: Spec
    catalog: Catalog
    base_dir: Path
