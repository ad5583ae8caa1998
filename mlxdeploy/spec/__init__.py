"""The YAML spec: settings, loading with layers and file:line problems, the resolved catalog.

No Quart and no MLX here: every other layer reads the deployment from these objects."""

from .deployment import Deployment
from .load import load_spec
from .problems import Problem, SpecError, format_problems
from .settings import Spec, spec_json_schema

__all__ = [
    "Deployment",
    "Problem",
    "Spec",
    "SpecError",
    "format_problems",
    "load_spec",
    "spec_json_schema",
]
