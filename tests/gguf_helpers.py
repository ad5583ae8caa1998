"""Writing tiny llama models to GGUF the way llama.cpp's converter does, for test_gguf.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten
from mlx_lm.models import llama

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
}

# HF name pieces -> llama.cpp's GGUF names (written out independently of the module under test).
GGUF_GLOBALS = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
GGUF_LAYER_PARTS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


@dataclass
class Vocab:
    """The `tokenizer.ggml.*` metadata of a GGUF file."""

    model: str
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    merges: list[str] | None = None
    scores: list[float] | None = None
    ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_level_vocab(pre: str = "smollm", add_bos: bool = False) -> Vocab:
    """A small byte-level BPE vocab: 3 control tokens, 256 bytes, a few merges, one user token."""
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "4 2"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = [*control, *byte_alphabet(), *merged, "<tool call>"]
    types = [3] * len(control) + [1] * (256 + len(merged)) + [4]
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return Vocab(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        types=types,
        merges=merges,
        ids={"bos": 1, "eos": 2, "unk": 0, "pad": 2},
        add_bos=add_bos,
        chat_template=template,
    )


def sentencepiece_vocab() -> Vocab:
    """A small SentencePiece vocab (llama.cpp's "llama" model) with `<0xNN>` byte tokens."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pieces = {
        "▁": -1.0, "h": -2.0, "e": -2.1, "l": -2.2, "o": -2.3, "w": -2.4, "r": -2.5, "d": -2.6,
        "he": -3.0, "ll": -3.1, "▁he": -3.2, "llo": -3.3, "▁hello": -3.4,
        "or": -3.5, "▁w": -3.6, "▁wor": -3.7, "ld": -3.8, "▁world": -3.9,
    }  # fmt: skip
    tokens = [*specials, *byte_tokens, *pieces]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * (3 + 256) + list(pieces.values())
    return Vocab(
        model="llama",
        tokens=tokens,
        types=types,
        scores=scores,
        ids={"bos": 1, "eos": 2, "unk": 0},
        add_bos=True,
        add_space_prefix=True,
    )


def tiny_llama(vocab_size: int, tie: bool, seed: int = 0) -> tuple[llama.Model, dict]:
    """A random 2-layer llama; norms are randomized too so swapped norms change the logits."""
    config = {**TINY_LLAMA, "vocab_size": vocab_size, "tie_word_embeddings": tie}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    for name, value in weights.items():
        if value.ndim == 1:
            weights[name] = 1.0 + 0.2 * mx.random.normal(value.shape)
        elif "embed_tokens" in name:
            weights[name] = 0.5 * mx.random.normal(value.shape)
    model.load_weights(list(weights.items()))
    mx.eval(model.parameters())
    return model, config


def numpy_weights(model: llama.Model) -> dict[str, np.ndarray]:
    flat = dict(tree_flatten(model.parameters()))
    return {name: np.array(value, dtype=np.float32) for name, value in flat.items()}


def gguf_name(hf_name: str) -> str:
    module, _, suffix = hf_name.rpartition(".")
    if module in GGUF_GLOBALS:
        return f"{GGUF_GLOBALS[module]}.{suffix}"
    _, _, layer, part = module.split(".", 3)
    return f"blk.{layer}.{GGUF_LAYER_PARTS[part]}.{suffix}"


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """`LlamaModel.permute` from llama.cpp's convert_hf_to_gguf.py."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def encode_tensor(
    value: np.ndarray, type_name: str
) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """(data, raw_dtype) for GGUFWriter.add_tensor; 1-D tensors stay F32 as in llama.cpp."""
    if value.ndim == 1 or type_name == "F32":
        return value.astype(np.float32), None
    if type_name == "F16":
        return value.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType[type_name]
    return quantize(value, qtype), qtype


def with_storage_error(value: np.ndarray, type_name: str) -> np.ndarray:
    """The values a reader gets back after storing `value` as `type_name`."""
    data, raw = encode_tensor(value, type_name)
    if raw is None:
        return data.astype(np.float32)
    return dequantize(data, raw).reshape(value.shape).astype(np.float32)


def write_llama_gguf(
    path: Path,
    weights: dict[str, np.ndarray],
    config: dict,
    vocab: Vocab,
    type_name: str = "F32",
    overrides: dict[str, str] | None = None,
    arch: str = "llama",
) -> Path:
    """Write HF-named llama weights as llama.cpp does: renamed, q/k rows permuted."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    write_vocab(writer, vocab)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    for name, value in weights.items():
        if "q_proj" in name:
            value = llama_cpp_permute(value, n_head, n_head)
        elif "k_proj" in name:
            value = llama_cpp_permute(value, n_head, n_kv)
        target = gguf_name(name)
        data, raw = encode_tensor(value, (overrides or {}).get(target, type_name))
        writer.add_tensor(target, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for key, token_id in vocab.ids.items():
        setters[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


def vocab_metadata(vocab: Vocab) -> dict:
    """The same vocab as the metadata dict `read_header` returns."""
    meta = {
        "tokenizer.ggml.model": vocab.model,
        "tokenizer.ggml.tokens": vocab.tokens,
        "tokenizer.ggml.token_type": vocab.types,
        "tokenizer.ggml.add_bos_token": vocab.add_bos,
    }
    names = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
    meta.update({f"tokenizer.ggml.{names[k]}_token_id": v for k, v in vocab.ids.items()})
    optional = {
        "pre": vocab.pre,
        "merges": vocab.merges,
        "scores": vocab.scores,
        "add_space_prefix": vocab.add_space_prefix,
    }
    meta.update({f"tokenizer.ggml.{k}": v for k, v in optional.items() if v is not None})
    return meta
