"""How much memory a model's weights will take, from file headers only (no weights read).

Used by `validate` and `up` to refuse a spec whose model cannot fit the machine before any
weights are loaded. On Linux CPUs mlxdeploy runs float models in float32, so half-precision
weights count double there.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HALF = {"F16", "BF16"}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4,
               "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip


def runs_on_cpu() -> bool:
    """Linux without mlx's CUDA backend installed runs on the CPU (macOS uses the GPU)."""
    if sys.platform != "linux":
        return False
    try:
        importlib.metadata.distribution("mlx-cuda-13")
    except importlib.metadata.PackageNotFoundError:
        return True
    return False


def machine_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors a .safetensors file declares (name -> {dtype, shape, ...}), from its JSON
    header; ValueError when it has none, OSError when it cannot be read."""
    with path.open("rb") as f:
        start = f.read(8)
        (size,) = struct.unpack("<Q", start) if len(start) == 8 else (-1,)
        if not 0 < size <= os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"{path.name} is not a safetensors file (no header)")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (its header is not a mapping)")
    return {name: info for name, info in header.items() if name != "__metadata__"}


def safetensors_bytes(path: Path, float32: bool) -> int:
    """Bytes of the tensors a .safetensors file declares, read from its JSON header."""
    total = 0
    for info in safetensors_header(path).values():
        count = 1
        for dim in info["shape"]:
            count *= dim
        width = DTYPE_BYTES.get(info["dtype"], 4)
        total += count * (4 if float32 and info["dtype"] in HALF else width)
    return total


def estimate_bytes(files: Sequence[Path], on_cpu: bool | None = None) -> int:
    """The memory the weights in `files` (.safetensors or .gguf) take once loaded."""
    float32 = runs_on_cpu() if on_cpu is None else on_cpu
    total = 0
    for path in files:
        if path.suffix == ".gguf":  # packed weights stay packed; the file is a close estimate
            total += path.stat().st_size
        else:
            total += safetensors_bytes(path, float32)
    return total


def kv_bytes_per_token(
    config: dict[str, Any], kv_bits: int | None, group_size: int = 64, on_cpu: bool | None = None
) -> int:
    """Bytes of keys and values one token of context holds across a model's layers (from its
    config.json; every layer counted as full attention, so sliding-window and linear-attention
    layers make this an upper bound). Keys and values are 16-bit (32 on Linux CPUs), or
    `kv_bits` per element plus a 16-bit (32) scale and bias per `group_size` elements."""
    text = config.get("text_config", config)  # multimodal configs nest the language model's
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
    elements = 2 * int(text["num_hidden_layers"]) * kv_heads * head_dim  # keys and values
    width = 4 if (runs_on_cpu() if on_cpu is None else on_cpu) else 2
    if kv_bits is None:
        return elements * width
    return elements * kv_bits // 8 + elements // group_size * 2 * width


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def bytes_text(n: int) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below."""
    return gib(n) if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"
