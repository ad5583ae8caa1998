"""Whether a model splits over a distributed spec's ranks, from its config.json alone: `validate`
says so before any weights load, and the engine checks again before it shards (a split that
does not divide would otherwise fail inside a forward pass, on every rank)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .gguf_header import read_header

# The two ways a model splits: by heads within each layer, or by whole layers.
Strategy = Literal["tensor", "pipeline"]

# config.json keys tensor parallelism divides over the ranks, with what they count.
TENSOR_SPLITS = (
    ("num_attention_heads", "attention heads"),
    ("num_key_value_heads", "key/value heads"),
    ("intermediate_size", "MLP units"),
)


def split_problem(config: Mapping[str, Any], ranks: int, strategy: Strategy) -> str | None:
    """Why this model cannot be split `strategy`-wise over `ranks` ranks, or None."""
    if strategy == "pipeline":
        layers = config.get("num_hidden_layers")
        if isinstance(layers, int) and layers < ranks:
            return (
                f"pipeline parallelism gives each of the {ranks} ranks whole layers, and the "
                f"model has {layers} (num_hidden_layers)"
            )
        return None
    for key, what in TENSOR_SPLITS:
        value = config.get(key)
        if key == "num_key_value_heads" and value is None:
            value = config.get("num_attention_heads")
        if isinstance(value, int) and value % ranks:
            return (
                f"tensor parallelism splits the {value} {what} ({key}) over {ranks} ranks, "
                f"and {value} is not divisible by {ranks}; use a number of ranks that divides "
                f"{value}"
            )
    return None


def support_problem(model_type: str, strategy: Strategy) -> str | None:
    """Whether mlx-lm can shard this architecture that way, as its model's source says (read,
    not imported: the spec never loads MLX)."""
    ways = splits_of(model_type)
    if ways is None:
        return f"mlx-lm has no model type '{model_type}'"
    if strategy not in ways:
        other = "pipeline" if strategy == "tensor" else "tensor"
        how = "by heads (tensor)" if strategy == "tensor" else "by layers (pipeline)"
        hint = f"; try strategy: {other}" if other in ways else ""
        return f"mlx-lm cannot split '{model_type}' models {how}{hint}"
    return None


@functools.cache
def splits_of(model_type: str) -> frozenset[Strategy] | None:
    """How mlx-lm's module for `model_type` splits: tensor when its Model has `shard`,
    pipeline when a class of it takes PipelineMixin; None when there is no such module.
    Raises ValueError when mlx-lm's sources cannot be read."""
    name = _remapped(model_type)
    if not name.isidentifier() or not (_mlx_lm_dir() / "models" / f"{name}.py").is_file():
        return None
    return frozenset(_module_splits(name, depth=0))


def _module_splits(name: str, depth: int) -> set[Strategy]:
    tree = _parse(_mlx_lm_dir() / "models" / f"{name}.py")
    ways: set[Strategy] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            if node.name == "Model" and "shard" in methods:
                ways.add("tensor")
            if any(isinstance(b, ast.Name) and b.id == "PipelineMixin" for b in node.bases):
                ways.add("pipeline")
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and depth < 3:
            if any(alias.name == "Model" for alias in node.names):  # Model from a sibling
                ways |= _module_splits(node.module, depth + 1)
    return ways


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read mlx-lm's source {path.name}: {error}") from None


def _mlx_lm_dir() -> Path:
    spec = importlib.util.find_spec("mlx_lm")  # finds, does not import
    if spec is None or spec.origin is None:
        raise ValueError("mlx-lm is not installed")
    return Path(spec.origin).parent


def _remapped(model_type: str) -> str:
    return str(_remapping().get(model_type, model_type))


@functools.cache
def _remapping() -> dict[str, str]:
    """mlx-lm's MODEL_REMAPPING (model types served by another type's module), read once from
    its source."""
    for node in _parse(_mlx_lm_dir() / "utils.py").body:
        target, value = _assignment(node)
        if target == "MODEL_REMAPPING" and value is not None:
            try:
                return dict(ast.literal_eval(value))
            except ValueError as error:
                raise ValueError(f"cannot read mlx-lm's MODEL_REMAPPING: {error}") from None
    return {}


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return (target.id if isinstance(target, ast.Name) else None), node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


# GGUF metadata -> the config.json keys the split is judged by (a GGUF model is a llama).
GGUF_KEYS = {
    "num_attention_heads": "llama.attention.head_count",
    "num_key_value_heads": "llama.attention.head_count_kv",
    "intermediate_size": "llama.feed_forward_length",
    "num_hidden_layers": "llama.block_count",
}


def model_config(path: Path) -> dict[str, Any] | None:
    """A model's config.json, or what a GGUF file's header says of the same numbers; None
    when the file holds no mapping."""
    if path.suffix.lower() == ".gguf":
        metadata = read_header(path).metadata
        config = {key: metadata[name] for key, name in GGUF_KEYS.items() if name in metadata}
        return {"model_type": "llama", **config}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def model_problem(config: Mapping[str, Any], ranks: int, strategy: Strategy) -> str | None:
    model_type = config.get("model_type")
    if isinstance(model_type, str):
        unsupported = support_problem(model_type, strategy)
        if unsupported is not None:
            return unsupported
    problem = split_problem(config, ranks, strategy)
    layers_too = isinstance(model_type, str) and "pipeline" in (splits_of(model_type) or ())
    if problem is not None and strategy == "tensor" and layers_too:
        problem += ", or strategy: pipeline"
    return problem
