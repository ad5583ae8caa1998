"""Thinking models, through the real engine on a tiny random model with Qwen3's real chat
template (tests/thinking.py): the thinking is split from the answer exactly, streamed and
whole, in all three APIs; budgets and effort close it; tool calls follow it.

A random model never closes its thinking by itself, so every answer here thinks until its
budget closes it (or max_tokens ends it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlxdeploy.engine.api import Event, Finished, Reasoning, SamplingParams, Text, Turn
from mlxdeploy.engine.engine import MLXEngine
from mlxdeploy.spec import Deployment, load_spec
from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
ASK = [{"role": "user", "content": "What is 2 + 2?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 24}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def thinking(
    thinking_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApp]:
    spec = write_spec(
        tmp_path_factory.mktemp("thinking") / "thinking.yaml",
        thinking_model_dir,
        name="thinker",
        reasoning={"budgets": {"low": 6, "medium": 10}},
    )
    with real_app(spec) as app:
        yield app


def chat(app: InProcessApp, **body: Any) -> dict[str, Any]:
    response = app.http.post(CHAT, json={"messages": ASK, **GREEDY, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_thinking_is_split_from_the_answer(thinking: InProcessApp) -> None:
    answer = chat(thinking, reasoning_effort="low")
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] and message["reasoning"] == message["reasoning_content"]
    assert "<think>" not in message["content"] and "</think>" not in message["content"]
    details = answer["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] == 6 + 1  # the budget, then the end tag it forced
    assert answer["usage"]["completion_tokens"] == GREEDY["max_tokens"]


def test_the_split_is_exact(thinking_model_dir: Path, tmp_path: Path) -> None:
    """Thinking plus answer is the raw text, the tags and the blank space around them aside:
    the same greedy answer with the thinking kept in the text (as /v1/completions keeps it)."""
    spec = load_spec(write_spec(tmp_path / "s.yaml", thinking_model_dir))
    apart, raw = asyncio.run(both_ways(spec))
    thoughts = "".join(e.text for e in apart if isinstance(e, Reasoning))
    answer = "".join(e.text for e in apart if isinstance(e, Text))
    text = "".join(e.text for e in raw if isinstance(e, Text))
    assert not any(isinstance(e, Reasoning) for e in raw)
    thought, tag, rest = text.partition("</think>")
    assert tag and thoughts and answer
    assert (thought.strip(), rest.lstrip()) == (thoughts, answer)
    ends = [e for e in apart if isinstance(e, Finished)]
    assert ends[0].reasoning_tokens == 5 + 1


async def both_ways(deployment: Deployment) -> tuple[list[Event], list[Event]]:
    engine = MLXEngine(deployment.catalog.models[0])
    engine.start(asyncio.get_running_loop())
    assert await asyncio.to_thread(engine.wait_loaded, 300) == "ready"
    try:
        assert engine.thinks
        prompt = engine.prepare([Turn("user", "What is 2 + 2?")], None)
        params = SamplingParams(
            max_tokens=20, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
            repetition_context_size=20, stop=(), thinking_budget=5,
        )  # fmt: skip
        runs = []
        for apart in (True, False):
            run = replace(params, thinking_apart=apart)
            runs.append([event async for event in engine.generate(prompt, run)])
        return runs[0], runs[1]
    finally:
        engine.stop()
