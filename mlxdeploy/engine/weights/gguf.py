"""Load llama-architecture GGUF files into mlx-lm.

`convert_gguf` turns a GGUF file, once, into an HF-style model directory (config.json,
safetensors, tokenizer files) under a cache root; `mlx_lm.utils.load(dir)` loads the result.

Tensors come from `mx.load`, which keeps Q4_0, Q4_1 and Q8_0 packed in MLX's affine layout
(group size 32). Floats are stored as float32 on CPU, because float16 matmuls on Linux CPU are
about 30x slower: 0.35 tok/s for the demo model with float16 scales, measured as below.

Single-stream decode on the demo model (SmolLM2-135M-Instruct Q4_1: Q4_1 layers, Q8_0 tied
embeddings), 2-core x86_64 Linux CPU, mlx 0.32.4, greedy, 128 tokens after a 37-token chat
prompt, median of 3 runs after a warm-up:

    packed weights, float32 scales/biases   11.0 tok/s
    dequantized float32 weights              5.6 tok/s

so CPU keeps the weights packed (DEFAULT_CPU_DEQUANTIZE). Measured with:

    for deq in (False, True):
        model, tok = mlx_lm.load(str(convert_gguf(gguf, cache, dequantize=deq)))
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": "Write a story about a cat."}], add_generation_prompt=True)
        for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=128): pass
        print(deq, r.generation_tps)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# Bump when the output of a conversion changes, so old cache entries are not reused.
CONVERTER_VERSION = 1
GROUP_SIZE = 32
MAX_SHARD_BYTES = 5 << 30

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

# Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` values (llama-vocab.cpp).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PRE = ("default", "gpt-2", "gpt2")
DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell")
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx")
CONTROL, USER_DEFINED = 3, 4
# Chosen by measurement, see the module docstring.
DEFAULT_CPU_DEQUANTIZE = False


class GGUFError(Exception):
    """A GGUF file that cannot be converted; the message names the file and the reason."""


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: dict[str, tuple[int, tuple[int, ...], int]]  # name -> (type, shape, offset)
    data_start: int


@dataclass(frozen=True)
class Layout:
    """How converted weights are stored: packed or dequantized, and the float dtype."""

    dequantize: bool
    dtype: str  # "float32" | "float16" | "bfloat16"

    @property
    def mx_dtype(self) -> mx.Dtype:
        return getattr(mx, self.dtype)


def default_layout() -> Layout:
    """float32 on CPU (float16 is very slow there); packed float16 elsewhere."""
    if mx.default_device() == mx.cpu:
        return Layout(dequantize=DEFAULT_CPU_DEQUANTIZE, dtype="float32")
    return Layout(dequantize=False, dtype="float16")


def convert_gguf(
    path: Path,
    cache_root: Path,
    *,
    dequantize: bool | None = None,
    dtype: str | None = None,
) -> Path:
    """Convert a llama-architecture GGUF file once into an HF-style model dir under cache_root.

    The dir holds config.json, model safetensors, tokenizer.json, tokenizer_config.json and
    special_tokens_map.json, and loads with `mlx_lm.utils.load(dir)`. An existing conversion is
    reused when the file's resolved path, size and mtime, the converter version and the layout
    match. Writes go to a temp dir that is renamed into place, so a crash leaves no half cache.
    """
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise GGUFError(f"{path}: no such file")
    layout = _resolve_layout(dequantize, dtype)
    target = Path(cache_root) / cache_name(source, layout)
    if (target / "config.json").is_file():
        return target
    header = read_header(source)
    check_supported(source, header)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_model_dir(source, header, layout, staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _resolve_layout(dequantize: bool | None, dtype: str | None) -> Layout:
    default = default_layout()
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, but is {dtype!r}")
    return Layout(
        dequantize=default.dequantize if dequantize is None else dequantize,
        dtype=dtype or default.dtype,
    )


def cache_name(source: Path, layout: Layout) -> str:
    """The cache dir name: the file stem plus a hash of what the conversion depends on."""
    stat = source.stat()
    key = json.dumps(
        [
            str(source),
            stat.st_size,
            stat.st_mtime_ns,
            CONVERTER_VERSION,
            layout.dequantize,
            layout.dtype,
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{source.stem}-{digest}"


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished dir into place; a concurrent converter that won the race is fine."""
    if target.exists() and not (target / "config.json").is_file():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


# --- reading the GGUF header -------------------------------------------------------------


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


# --- weights -------------------------------------------------------------------------------


def write_model_dir(source: Path, header: GGUFHeader, layout: Layout, out: Path) -> None:
    """Write config, weights and tokenizer of a checked GGUF file into `out`."""
    weights = convert_weights(load_tensors(source, header), header.metadata, layout)
    config = model_config(header.metadata, weights, source)
    quantization = quantization_config(weights)
    if quantization:
        config["quantization"] = quantization
    save_weights(weights, out)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(source, header.metadata, out)


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
    tensors: dict[str, mx.array], metadata: dict[str, Any], layout: Layout
) -> dict[str, mx.array]:
    """Rename to mlx-lm's llama names, undo llama.cpp's q/k row permutation, set dtypes."""
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


# --- config --------------------------------------------------------------------------------


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


# --- tokenizer -----------------------------------------------------------------------------


def save_tokenizer(source: Path, metadata: dict[str, Any], out: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json from the metadata."""
    tokenizer = build_tokenizer(source, metadata)
    tokenizer.save(str(out / "tokenizer.json"))
    specials = special_tokens(metadata)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    if "llama.context_length" in metadata:
        config["model_max_length"] = int(metadata["llama.context_length"])
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False))


def special_tokens(metadata: dict[str, Any]) -> dict[str, str]:
    tokens = metadata["tokenizer.ggml.tokens"]
    keys = {
        "bos_token": "bos_token_id",
        "eos_token": "eos_token_id",
        "unk_token": "unknown_token_id",
        "pad_token": "padding_token_id",
    }
    found = {}
    for name, key in keys.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            found[name] = tokens[int(token_id)]
    return found


def build_tokenizer(source: Path, metadata: dict[str, Any]) -> Tokenizer:
    """A fast tokenizer equivalent to the one llama.cpp builds from the metadata."""
    kind = metadata.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in metadata:
        raise GGUFError(f"{source}: the file has no tokenizer (tokenizer.ggml.tokens is missing)")
    if len(_token_types(metadata)) != len(metadata["tokenizer.ggml.tokens"]):
        raise GGUFError(f"{source}: tokenizer.ggml.token_type and tokens differ in length")
    if kind == "gpt2":
        tokenizer = byte_level_tokenizer(source, metadata)
    elif kind == "llama":
        tokenizer = sentencepiece_tokenizer(source, metadata)
    else:
        raise GGUFError(
            f"{source}: unsupported tokenizer model {kind!r} (supported: 'gpt2', 'llama')"
        )
    add_special_tokens(tokenizer, metadata)
    post = bos_eos_processor(metadata)
    if post is not None:
        tokenizer.post_processor = post
    return tokenizer


def _token_types(metadata: dict[str, Any]) -> list[int]:
    tokens = metadata["tokenizer.ggml.tokens"]
    return list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))


def byte_level_tokenizer(source: Path, metadata: dict[str, Any]) -> Tokenizer:
    """Byte-level BPE (`tokenizer.ggml.model == "gpt2"`) with the file's pre-tokenizer."""
    if "tokenizer.ggml.merges" not in metadata:
        raise GGUFError(f"{source}: byte-level BPE tokenizer without tokenizer.ggml.merges")
    spelling = byte_alphabet()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for token_id, (token, kind) in enumerate(
        zip(metadata["tokenizer.ggml.tokens"], _token_types(metadata), strict=True)
    ):
        # Added tokens are stored as plain text; the rest must be in the byte alphabet.
        if kind not in (CONTROL, USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, token_id)
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tokenizer.pre_tokenizer = byte_level_pre_tokenizer(source, metadata)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (`bytes_to_unicode`)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_pre_tokenizer(source: Path, metadata: dict[str, Any]) -> Any:
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre in GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in LLAMA3_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    supported = ", ".join(GPT2_PRE + DIGITS_PRE + LLAMA3_PRE)
    raise GGUFError(f"{source}: unsupported pre-tokenizer {pre!r} (supported: {supported})")


def sentencepiece_tokenizer(source: Path, metadata: dict[str, Any]) -> Tokenizer:
    """SentencePiece BPE (`tokenizer.ggml.model == "llama"`): merges recovered from the scores,
    `<0xNN>` byte fallback, and a `▁` prefix when `add_space_prefix` is set (the default)."""
    tokens = metadata["tokenizer.ggml.tokens"]
    if "tokenizer.ggml.scores" not in metadata:
        raise GGUFError(f"{source}: sentencepiece tokenizer without tokenizer.ggml.scores")
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        vocab.setdefault(token, token_id)
    merges = sentencepiece_merges(tokens, metadata["tokenizer.ggml.scores"], _token_types(metadata))
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def sentencepiece_merges(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a normal token into two
    normal tokens, best score first (as transformers' `generate_merges` does)."""
    normal = {
        token: i for i, (token, kind) in enumerate(zip(tokens, types, strict=True)) if kind == 1
    }
    candidates = []
    for token, token_id in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                candidates.append(
                    (
                        scores[token_id],
                        len(left),
                        len(right),
                        -normal[left],
                        -normal[right],
                        left,
                        right,
                    )
                )
    candidates.sort(reverse=True)
    return [(left, right) for *_, left, right in candidates]


def add_special_tokens(tokenizer: Tokenizer, metadata: dict[str, Any]) -> None:
    """Control tokens (type 3) become special tokens, user-defined ones (type 4) added tokens,
    so both are matched whole in the text instead of being cut by BPE."""
    tokens = metadata["tokenizer.ggml.tokens"]
    types = _token_types(metadata)
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == CONTROL]
    user = [t for t, kind in zip(tokens, types, strict=True) if kind == USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def bos_eos_processor(metadata: dict[str, Any]) -> Any | None:
    """A post-processor adding BOS/EOS when the file asks for it (`add_bos_token`)."""
    tokens = metadata["tokenizer.ggml.tokens"]
    marks = {}
    for flag, key in (("add_bos_token", "bos_token_id"), ("add_eos_token", "eos_token_id")):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if metadata.get(f"tokenizer.ggml.{flag}", False) and token_id is not None:
            marks[flag] = tokens[int(token_id)], int(token_id)
    if not marks:
        return None
    bos = [marks["add_bos_token"][0]] if "add_bos_token" in marks else []
    eos = [marks["add_eos_token"][0]] if "add_eos_token" in marks else []
    return processors.TemplateProcessing(
        single=[*bos, "$A", *eos],
        pair=[*bos, "$A", *eos, *bos, "$B:1", *eos],
        special_tokens=list(dict.fromkeys(marks.values())),
    )
