"""Tiny thinking models: random llama weights and SmolLM2's tokenizer, with
- Qwen3's thinking and tool-call tokens added and Qwen3's real chat template (ChatML, as
  SmolLM2's is);
- or gpt-oss's harmony markers added (special tokens) and gpt-oss's real chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.gguf_helpers import TINY_LLAMA

TEMPLATES = Path(__file__).parent / "data" / "templates"
# Qwen3's added tokens that SmolLM2's vocabulary lacks (special=False, as in Qwen3's own).
ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
HARMONY = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|call|>", "<|return|>"]
CONTEXT = 32768  # long enough for an agent's first request (~10k tokens with its tools)


def make_thinking_model(out: Path, demo_dir: Path, template: str = "qwen3-thinking") -> Path:
    """The model dir; `template` names a file in tests/data/templates (without .jinja): a
    gpt-oss one gets the harmony markers, with `<|return|>` ending the answer."""
    from transformers import AutoTokenizer

    from tests.conftest import make_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(demo_dir))
    if template.startswith("gpt-oss"):
        tokenizer.add_special_tokens({"additional_special_tokens": [*HARMONY, "<|constrain|>"]})
        tokenizer.eos_token = "<|return|>"
    else:
        tokenizer.add_tokens(ADDED)
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    tokenizer.save_pretrained(str(out))
    config: dict[str, Any] = {
        **TINY_LLAMA,
        "vocab_size": (len(tokenizer) + 63) // 64 * 64,
        "max_position_embeddings": CONTEXT,
        "tie_word_embeddings": True,
    }
    make_tiny_model(out, out, seed=3, config=config)
    return out


def token_id(model_dir: Path, text: str) -> int:
    """The id of one of the added tokens."""
    data = json.loads((model_dir / "tokenizer.json").read_text())
    return next(t["id"] for t in data["added_tokens"] if t["content"] == text)
