"""A fast tokenizer equivalent to the one llama.cpp builds from a GGUF file's metadata, and the
tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) written from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .header import GGUFError

# Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` values (llama-vocab.cpp).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PRE = ("default", "gpt-2", "gpt2")
DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell")
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx")
CONTROL, USER_DEFINED = 3, 4


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
