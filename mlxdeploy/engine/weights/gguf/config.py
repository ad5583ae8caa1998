"""config.json for mlx-lm's llama model, from a GGUF file's `llama.*` metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .header import GGUFError


def _float(value: Any) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _required(metadata: dict[str, Any], key: str, source: Path) -> Any:
    if key not in metadata:
        raise GGUFError(f"{source}: metadata key {key} is missing")
    value = metadata[key]
    if isinstance(value, list):
        raise GGUFError(f"{source}: per-layer values for {key} are not supported")
    return value


def model_config(
    metadata: dict[str, Any], weights: dict[str, mx.array], source: Path
) -> dict[str, Any]:
    """config.json for mlx-lm's llama model, from the `llama.*` metadata."""
    n_head = int(_required(metadata, "llama.attention.head_count", source))
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": int(_required(metadata, "llama.embedding_length", source)),
        "num_hidden_layers": int(_required(metadata, "llama.block_count", source)),
        "intermediate_size": int(_required(metadata, "llama.feed_forward_length", source)),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(metadata.get("llama.attention.head_count_kv", n_head)),
        "rms_norm_eps": _float(
            _required(metadata, "llama.attention.layer_norm_rms_epsilon", source)
        ),
        "rope_theta": _float(metadata.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": weights["model.embed_tokens.weight"].shape[0],
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in weights,
        "mlp_bias": "model.layers.0.mlp.up_proj.bias" in weights,
    }
    if "llama.context_length" in metadata:
        config["max_position_embeddings"] = int(metadata["llama.context_length"])
    if "llama.attention.key_length" in metadata:
        config["head_dim"] = int(metadata["llama.attention.key_length"])
    config.update(_rope_scaling(metadata, source))
    config.update(_token_ids(metadata))
    return config


def _rope_scaling(metadata: dict[str, Any], source: Path) -> dict[str, Any]:
    kind = metadata.get("llama.rope.scaling.type", "none")
    if kind == "none":
        return {}
    if kind == "linear":
        factor = _float(metadata["llama.rope.scaling.factor"])
        return {"rope_scaling": {"type": "linear", "factor": factor}}
    raise GGUFError(f"{source}: unsupported rope scaling {kind!r} (supported: linear)")


def _token_ids(metadata: dict[str, Any]) -> dict[str, Any]:
    """bos/eos ids for config.json; an end-of-turn token counts as a second eos."""
    ids: dict[str, Any] = {}
    if "tokenizer.ggml.bos_token_id" in metadata:
        ids["bos_token_id"] = int(metadata["tokenizer.ggml.bos_token_id"])
    eos = [
        int(metadata[key])
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
        if key in metadata
    ]
    if eos:
        unique = list(dict.fromkeys(eos))
        ids["eos_token_id"] = unique[0] if len(unique) == 1 else unique
    return ids
