"""Requests that share a prefix reuse its KV cache, and usage says how much was reused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp

SYSTEM = "You are a meticulous assistant for a shipping company. " * 8


def chat(http: httpx.Client, turns: list[dict[str, str]]) -> dict:
    body = {"messages": turns, "max_tokens": 4, "temperature": 0}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def cached(reply: dict) -> int:
    return int(reply["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_a_shared_system_prompt_is_served_from_the_cache(tiny_app: InProcessApp) -> None:
    system = f"{uuid.uuid4().hex} {SYSTEM}"  # new to this engine, whatever ran before
    first = chat(
        tiny_app.http,
        [{"role": "system", "content": system}, {"role": "user", "content": "Where is order 1?"}],
    )
    second = chat(
        tiny_app.http,
        [{"role": "system", "content": system}, {"role": "user", "content": "Cancel order 2."}],
    )
    assert cached(first) < 10  # at most the template's opening tokens, from earlier requests
    # Everything up to the user's words is shared: the system prompt's ~80 tokens at least.
    assert 80 <= cached(second) < second["usage"]["prompt_tokens"]


def test_a_conversation_reuses_its_earlier_turns(tiny_app: InProcessApp) -> None:
    turns = [{"role": "user", "content": "Remember the number 7. " * 10}]
    first = chat(tiny_app.http, turns)
    turns += [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Which number?"},
    ]
    second = chat(tiny_app.http, turns)
    assert cached(second) >= first["usage"]["prompt_tokens"] - 1


@pytest.fixture(scope="module")
def uncached(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    spec = write_spec(
        tmp_path_factory.mktemp("nocache") / "spec.yaml",
        tiny_model_dir,
        engine={"prompt_cache_bytes": 0},
    )
    with real_app(spec) as app:
        yield app.http


def test_a_zero_budget_turns_the_cache_off(uncached: httpx.Client) -> None:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    chat(uncached, turns)
    assert cached(chat(uncached, turns)) == 0
