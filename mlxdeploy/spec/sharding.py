"""Whether a model splits over a distributed spec's ranks, from its config.json alone: `validate`
says so before any weights load, and the engine checks again before it shards (a split that
does not divide would otherwise fail inside a forward pass, on every rank)."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .gguf_header import read_header
from .scale import Strategy
from .sources import ModelSource

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
    """Whether mlx-lm can shard this architecture that way (its model class says)."""
    module = _mlx_lm_module(model_type)
    if module is None:
        return f"mlx-lm has no model type '{model_type}'"
    if strategy == "tensor" and not hasattr(module.Model, "shard"):
        return f"mlx-lm cannot split '{model_type}' models by heads (tensor); try pipeline"
    if strategy == "pipeline" and not _has_pipeline(module):
        return f"mlx-lm cannot split '{model_type}' models by layers (pipeline); try tensor"
    return None


def _mlx_lm_module(model_type: str) -> Any:
    from mlx_lm.utils import MODEL_REMAPPING

    name = MODEL_REMAPPING.get(model_type, model_type)
    try:
        return importlib.import_module(f"mlx_lm.models.{name}")
    except ImportError:
        return None


def _has_pipeline(module: Any) -> bool:
    classes = (value for _, value in inspect.getmembers(module, inspect.isclass))
    return any(hasattr(cls, "pipeline") and hasattr(cls, "pipeline_layers") for cls in classes)


# GGUF metadata -> the config.json keys the split is judged by (a GGUF model is a llama).
GGUF_KEYS = {
    "num_attention_heads": "llama.attention.head_count",
    "num_key_value_heads": "llama.attention.head_count_kv",
    "intermediate_size": "llama.feed_forward_length",
    "num_hidden_layers": "llama.block_count",
}


def model_config(source: ModelSource) -> dict[str, Any] | None:
    """The config.json of a model directory (or a downloaded repo), or what a GGUF file's
    header says of the same numbers; None when the model is not on this machine."""
    if source.present and source.kind == "gguf" and source.path is not None:
        metadata = read_header(source.path).metadata
        config = {key: metadata[name] for key, name in GGUF_KEYS.items() if name in metadata}
        return {"model_type": "llama", **config}
    path = _config_path(source)
    if path is None:
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _config_path(source: ModelSource) -> Path | None:
    if not source.present:
        return None
    if source.kind == "dir" and source.path is not None:
        return source.path / "config.json"
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = Path(HF_HUB_CACHE) / f"models--{str(source.repo).replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/config.json")) if snapshots.is_dir() else []
    return found[-1] if found else None


def model_problem(config: Mapping[str, Any], ranks: int, strategy: Strategy) -> str | None:
    model_type = config.get("model_type")
    if isinstance(model_type, str):
        unsupported = support_problem(model_type, strategy)
        if unsupported is not None:
            return unsupported
    problem = split_problem(config, ranks, strategy)
    layers_too = isinstance(model_type, str) and support_problem(model_type, "pipeline") is None
    if problem is not None and strategy == "tensor" and layers_too:
        problem += ", or strategy: pipeline"
    return problem
