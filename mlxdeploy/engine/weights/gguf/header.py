"""What the engine can convert of a GGUF file (mlxdeploy/gguf_header.py reads the header): the check
that a file is a dense llama whose tensor types MLX can read, and its tensors' mlx-lm names."""

from __future__ import annotations

import re
from pathlib import Path

from ....gguf_header import (  # noqa: F401  (the engine's GGUF names, in one place)
    GGUF_MAGIC,
    GGUF_VERSIONS,
    GGUFError,
    GGUFHeader,
    read_header,
)

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
