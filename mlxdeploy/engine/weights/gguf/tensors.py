"""GGUF tensors -> mlx-lm's llama weights: renamed, q/k rows unpermuted, packed or dequantized,
and saved as (sharded) safetensors with the matching `quantization` config entry."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .header import BF16, GGUFError, GGUFHeader, hf_name

GROUP_SIZE = 32
MAX_SHARD_BYTES = 5 << 30


@dataclass(frozen=True)
class Layout:
    """How converted weights are stored: packed or dequantized, and the float dtype."""

    dequantize: bool
    dtype: str  # "float32" | "float16" | "bfloat16"

    @property
    def mx_dtype(self) -> mx.Dtype:
        return getattr(mx, self.dtype)


def load_tensors(source: Path, header: GGUFHeader) -> dict[str, mx.array]:
    """All tensors under their GGUF names; quantized ones as weight/scales/biases triples."""
    try:
        loaded = mx.load(str(source))
    except (RuntimeError, ValueError) as error:
        raise GGUFError(f"{source}: MLX cannot read the tensors ({error})") from None
    if not isinstance(loaded, dict):
        raise GGUFError(f"{source}: MLX read a single array, not a GGUF tensor table")
    tensors: dict[str, mx.array] = loaded
    for name, (tensor_type, shape, offset) in header.tensors.items():
        if tensor_type == BF16:
            tensors[name] = _read_bf16(source, header.data_start + offset, shape)
    return tensors


def _read_bf16(source: Path, offset: int, shape: tuple[int, ...]) -> mx.array:
    raw = np.fromfile(source, dtype="<u2", count=int(np.prod(shape)), offset=offset)
    return mx.array((raw.astype(np.uint32) << 16).view(np.float32).reshape(shape))


def convert_weights(
    tensors: dict[str, mx.array],
    metadata: dict[str, Any],
    layout: Layout,
    converted: Callable[[str], None] | None = None,
) -> dict[str, mx.array]:
    """Rename to mlx-lm's llama names, undo llama.cpp's q/k row permutation, set dtypes.
    `converted` is called with each GGUF name once its tensor is done (for progress)."""
    n_head = int(metadata["llama.attention.head_count"])
    n_head_kv = int(metadata.get("llama.attention.head_count_kv", n_head))
    weights: dict[str, mx.array] = {}
    for name, tensor in tensors.items():
        target = hf_name(name)
        if target is None:
            raise GGUFError(f"unsupported tensor {name} for a llama model")
        if ".attn_q." in name:
            tensor = unpermute_rows(tensor, n_head)
        elif ".attn_k." in name:
            tensor = unpermute_rows(tensor, n_head_kv)
        if tensor.dtype != mx.uint32:
            tensor = tensor.astype(layout.mx_dtype)
        weights[target] = tensor
        if not layout.dequantize:  # one at a time, so that progress can be told
            mx.eval(tensor)
        if converted is not None:
            converted(name)
    if layout.dequantize:
        weights = dequantize_weights(weights, layout.mx_dtype)
    mx.eval(weights)
    return weights


def unpermute_rows(tensor: mx.array, n_head: int) -> mx.array:
    """Invert llama.cpp's `permute` (interleaved RoPE rows back to the HF half-split order).

    llama.cpp maps rows (head, half, i) to (head, i, half); this maps them back. Quantized
    tensors are packed along columns, so weight, scales and biases permute the same way.
    """
    rows = tensor.shape[0]
    if rows % (2 * n_head):
        raise GGUFError(f"{rows} rows cannot be split into {n_head} heads of rotary pairs")
    rest = tensor.shape[1:]
    paired = tensor.reshape(n_head, rows // n_head // 2, 2, *rest)
    return paired.swapaxes(1, 2).reshape(tensor.shape)


def quantized_bits(weights: dict[str, mx.array], module: str) -> int:
    """Bits per weight of a packed module: uint32 words per group of 32 values."""
    return weights[f"{module}.weight"].shape[-1] // weights[f"{module}.scales"].shape[-1]


def quantized_modules(weights: dict[str, mx.array]) -> list[str]:
    return [name.removesuffix(".scales") for name in weights if name.endswith(".scales")]


def dequantize_weights(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    out = dict(weights)
    for module in quantized_modules(weights):
        packed, scales, biases = (
            out.pop(f"{module}.{part}") for part in ("weight", "scales", "biases")
        )
        out[f"{module}.weight"] = mx.dequantize(
            packed, scales, biases, group_size=GROUP_SIZE, bits=quantized_bits(weights, module)
        ).astype(dtype)
    return out


def quantization_config(weights: dict[str, mx.array]) -> dict[str, Any] | None:
    """mlx-lm's `quantization` entry: the common bits, per-module overrides, and False for
    matrices kept in floating point (e.g. an F16 output layer next to Q4 layers)."""
    bits = {module: quantized_bits(weights, module) for module in quantized_modules(weights)}
    if not bits:
        return None
    common = Counter(bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": common}
    for module, module_bits in sorted(bits.items()):
        if module_bits != common:
            config[module] = {"group_size": GROUP_SIZE, "bits": module_bits}
    for name, tensor in sorted(weights.items()):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and tensor.ndim == 2 and module not in bits:
            config[module] = False
    return config


def save_weights(weights: dict[str, mx.array], out: Path) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors shards plus an index."""
    shards: list[dict[str, mx.array]] = [{}]
    size = 0
    for name, tensor in weights.items():
        if shards[-1] and size + tensor.nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    if len(shards) == 1:
        mx.save_safetensors(str(out / "model.safetensors"), shards[0], {"format": "mlx"})
        return
    index: dict[str, Any] = {
        "metadata": {"total_size": sum(t.nbytes for t in weights.values())},
        "weight_map": {},
    }
    for i, shard in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / file_name), shard, {"format": "mlx"})
        index["weight_map"].update(dict.fromkeys(shard, file_name))
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
