"""The GGUF header: metadata and tensor table, read without touching tensor data, and the check
that a file is a dense llama whose tensor types MLX can read."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# ggml tensor type ids (ggml.h) -> names, for error messages.
# fmt: off
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    39: "MXFP4",
}
# fmt: on
BF16 = 30
# What mx.load reads correctly; BF16 is read here instead (mx.load narrows it to float16).
SUPPORTED_TYPES = {0, 1, 2, 3, 8, BF16}

# GGUF metadata value types -> struct format (scalars) or numpy dtype (arrays).
# fmt: off
SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}
# fmt: on
STRING_TYPE, ARRAY_TYPE = 8, 9

GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)")


class GGUFError(Exception):
    """A GGUF file that cannot be converted; the message names the file and the reason."""


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: dict[str, tuple[int, tuple[int, ...], int]]  # name -> (type, shape, offset)
    data_start: int


class _HeaderReader:
    """Sequential little-endian reads that fail cleanly past the end of the file."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size

    def read(self, count: int) -> bytes:
        if count > self.size - self.handle.tell():
            raise EOFError("truncated header")
        return self.handle.read(count)

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type == STRING_TYPE:
            return self.string()
        if value_type == ARRAY_TYPE:
            return self.array(self.scalar("<I"), self.scalar("<Q"))
        if value_type not in SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {value_type}")
        return self.scalar(SCALAR_FORMATS[value_type])

    def array(self, item_type: int, count: int) -> list[Any]:
        if item_type in SCALAR_FORMATS:
            dtype = np.dtype(SCALAR_FORMATS[item_type].replace("?", "b1"))
            return np.frombuffer(self.read(count * dtype.itemsize), dtype=dtype).tolist()
        return [self.value(item_type) for _ in range(count)]


def read_header(path: Path) -> GGUFHeader:
    """Metadata and tensor table of a GGUF file, without reading tensor data."""
    try:
        with open(path, "rb") as handle:
            reader = _HeaderReader(handle, os.fstat(handle.fileno()).st_size)
            return _read_header(reader)
    except (OSError, EOFError, ValueError, struct.error) as error:
        raise GGUFError(f"{path}: not a readable GGUF file ({error})") from None


def _read_header(reader: _HeaderReader) -> GGUFHeader:
    magic = reader.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    version = reader.scalar("<I")
    if version not in GGUF_VERSIONS:
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = reader.scalar("<Q"), reader.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    tensors = {}
    for _ in range(n_tensors):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        tensors[name] = (reader.scalar("<I"), tuple(reversed(dims)), reader.scalar("<Q"))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-reader.handle.tell() // alignment) * alignment
    return GGUFHeader(metadata, tensors, data_start)


def check_supported(source: Path, header: GGUFHeader) -> None:
    """Raise GGUFError unless this is a dense llama with tensor types MLX can read."""
    arch = header.metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{source}: unsupported architecture {arch!r} (supported: 'llama')")
    if header.metadata.get("llama.expert_count", 0):
        raise GGUFError(f"{source}: mixture-of-experts llama models are not supported")
    for name, (tensor_type, _, _) in header.tensors.items():
        if tensor_type not in SUPPORTED_TYPES:
            type_name = GGML_TYPE_NAMES.get(tensor_type, f"type {tensor_type}")
            raise GGUFError(
                f"{source}: tensor {name} has unsupported type {type_name} "
                "(supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
            )
        if hf_name(name) is None:
            hint = " (llama 3.1-style rope scaling)" if name.startswith("rope_freqs") else ""
            raise GGUFError(f"{source}: unsupported tensor {name}{hint} for a llama model")


def hf_name(gguf_name: str) -> str | None:
    """mlx-lm's llama parameter name for a GGUF tensor name, or None if it has none."""
    module, _, suffix = gguf_name.rpartition(".")
    if module in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[module]}.{suffix}"
    match = LAYER_NAME.fullmatch(module)
    if match and match[2] in LAYER_TENSORS:
        return f"model.layers.{match[1]}.{LAYER_TENSORS[match[2]]}.{suffix}"
    return None
