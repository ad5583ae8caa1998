"""A system prompt shared by requests with different questions is read once, on every cache
kind, and so is a conversation that grows: the prefix cache keeps the cache at the end of the
system prompt and of each prompt as entries of their own when the model's cache cannot be
trimmed back (sliding-window and linear-attention layers), so a later request reads only what
comes after them. The answers are the same as without the cache.

Tiny random models of the families people run most, with SmolLM2's tokenizer and chat
template, and a system prompt longer than their attention windows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxdeploy.engine import admission
from tests.conftest import TINY_CONFIG, make_tiny_model, real_app, write_spec
from tests.inprocess import InProcessApp

SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": TINY_CONFIG["vocab_size"],
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
FAMILIES: dict[str, dict[str, Any]] = {
    # sliding-window attention every other layer (RotatingKVCache)
    "gemma3_text": {**SMALL, "sliding_window": 32, "sliding_window_pattern": 2,
                    "query_pre_attn_scalar": 16},
    # sliding-window attention and mixture of experts
    "gpt_oss": {**SMALL, "sliding_window": 32, "num_local_experts": 2, "num_experts_per_tok": 1,
                "layer_types": ["sliding_attention", "full_attention"] * 2,
                "rope_theta": 150000.0, "swiglu_limit": 7.0},
    # linear attention (gated delta net state, ArraysCache) with full attention between
    "qwen3_5": {**SMALL, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
                "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                "linear_conv_kernel_dim": 4, "full_attention_interval": 2,
                "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
}  # fmt: skip
SYSTEM = " ".join(f"Rule {i}: answer briefly and cite rule {i}." for i in range(30))
QUESTIONS = ["What is the capital of France?", "Name a prime number.", "Say hello."]
GREEDY = {"temperature": 0.0, "max_tokens": 6}


def ask(app: InProcessApp, question: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    response = app.http.post("/v1/chat/completions", json={"messages": messages, **GREEDY})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(
    request: pytest.FixtureRequest, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[InProcessApp, InProcessApp]]:
    """The family's model served twice: with the prefix cache, and without it."""
    name = request.param
    model = make_tiny_model(
        tmp_path_factory.mktemp(name),
        demo_dir,
        seed=5,
        config={**FAMILIES[name], "model_type": name},
    )
    specs = tmp_path_factory.mktemp(f"{name}-specs")
    cached = write_spec(specs / "cached.yaml", model, name=name)
    uncached = write_spec(
        specs / "uncached.yaml", model, name=name, engine={"prompt_cache_bytes": 0}
    )
    with real_app(cached) as app, real_app(uncached) as plain:
        yield app, plain


def test_a_shared_system_prompt_is_read_once(family: tuple[InProcessApp, InProcessApp]) -> None:
    app, plain = family
    first = ask(app, QUESTIONS[0])
    system_tokens = first["usage"]["prompt_tokens"] - 20  # the question and markup: < 20
    for question in QUESTIONS[1:]:
        answer = ask(app, question)
        usage = answer["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert system_tokens <= cached < usage["prompt_tokens"], usage
        # The same answer as a model that reads the whole prompt.
        alone = ask(plain, question)
        assert answer["choices"][0]["message"] == alone["choices"][0]["message"]
        assert alone["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_growing_conversation_reads_only_its_new_turn(
    family: tuple[InProcessApp, InProcessApp],
) -> None:
    """The next turn re-sends the conversation: only the answer and the new message are read.
    The answer comes back as the client keeps it (a template that drops the thinking, or a
    client that edits, makes it differ from the tokens generated), so it is the cache kept at
    the end of the first prompt that serves."""
    app, plain = family
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Count to 3."}]
    first = app.http.post("/v1/chat/completions", json={"messages": history, **GREEDY}).json()
    history += [
        {"role": "assistant", "content": "1, 2, 3."},
        {"role": "user", "content": "And now count to 4, please."},
    ]
    second = app.http.post("/v1/chat/completions", json={"messages": history, **GREEDY}).json()
    usage = second["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == first["usage"]["prompt_tokens"] - 1
    alone = plain.http.post("/v1/chat/completions", json={"messages": history, **GREEDY}).json()
    assert second["choices"][0]["message"] == alone["choices"][0]["message"]


def test_a_long_shared_start_is_kept_in_blocks(
    family: tuple[InProcessApp, InProcessApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two texts share a long start but neither a system prompt nor a whole prompt: the
    second reads on from the last block of the first that it shares, and answers as a model
    that reads all of it."""
    monkeypatch.setattr(admission, "SNAPSHOT_BLOCK", 64)
    app, plain = family
    start = " ".join(f"Clause {i} of the shared document." for i in range(40))
    body = {"max_tokens": 4, "temperature": 0.0}
    first = app.http.post("/v1/completions", json={"prompt": start + " Part A ends.", **body})
    assert first.status_code == 200, first.text
    second = app.http.post(
        "/v1/completions", json={"prompt": start + " A different part B.", **body}
    ).json()
    usage = second["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    # ~400 shared tokens: the cache at the last 64-token block they share.
    assert cached >= 256 and cached % 64 == 0 and cached < usage["prompt_tokens"] - 4, usage
    alone = plain.http.post(
        "/v1/completions", json={"prompt": start + " A different part B.", **body}
    ).json()
    assert second["choices"][0]["text"] == alone["choices"][0]["text"]
