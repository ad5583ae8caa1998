"""gpt-oss's harmony channels count as thinking: the analysis channel is split from the final
answer, a call message becomes a tool call, and a budget closes the analysis.

The splitter is driven with the real tokenizer's tokens of written harmony answers; the engine
runs a tiny random model with gpt-oss's real chat template, whose prompt opens the analysis
channel (tests/data/templates/gpt-oss-analysis.jinja: the template's own generation prompt,
`<|start|>assistant`, followed by the analysis channel's header)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxdeploy.engine.api import Event, Reasoning, ToolCallArguments, ToolCallStarted
from mlxdeploy.engine.harmony import HarmonyTokens
from mlxdeploy.engine.text import fast_decode
from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp
from tests.thinking import make_thinking_model


@pytest.fixture(scope="module")
def harmony_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_thinking_model(tmp_path_factory.mktemp("harmony"), demo_dir, "gpt-oss-analysis")


@pytest.fixture(scope="module")
def tokenizer(harmony_dir: Path) -> Any:
    from mlx_lm.tokenizer_utils import load

    return load(harmony_dir)


def split(tokenizer: Any, prompt_tail: str, answer: str, cut: bool = False) -> tuple[Any, ...]:
    """(thinking, answer text, calls, splitter) of an answer written out in harmony."""
    markers = HarmonyTokens.of(tokenizer)
    assert markers is not None
    prompt = tokenizer.encode(prompt_tail, add_special_tokens=False)
    splitter = markers.splitter(prompt, fast_decode(tokenizer))
    events: list[Event] = []
    shown: list[int] = []
    for token in tokenizer.encode(answer, add_special_tokens=False):
        out = splitter.feed(token)
        if out is None:
            shown.append(token)
        else:
            events += out
    events += splitter.finish(cut=cut)
    thinking = "".join(e.text for e in events if isinstance(e, Reasoning))
    calls = [e for e in events if isinstance(e, ToolCallStarted | ToolCallArguments)]
    return thinking, tokenizer.decode(shown), calls, splitter


def test_the_analysis_channel_is_the_thinking(tokenizer: Any) -> None:
    answer = (
        "<|channel|>analysis<|message|>The user greets me.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello there!"
    )
    thinking, shown, calls, splitter = split(tokenizer, "<|start|>assistant", answer)
    assert (thinking, shown, calls) == ("The user greets me.", "Hello there!", [])
    assert splitter.tokens == len(tokenizer.encode("The user greets me.", add_special_tokens=False))


def test_a_call_message_is_a_tool_call(tokenizer: Any) -> None:
    answer = (
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
        '{"city": "Paris"}'
    )
    thinking, shown, calls, splitter = split(tokenizer, "<|start|>assistant", answer)
    assert thinking == "Need the weather." and shown == ""
    started, arguments = calls
    assert isinstance(started, ToolCallStarted) and started.name == "get_weather"
    assert isinstance(arguments, ToolCallArguments)
    assert json.loads(arguments.text) == {"city": "Paris"}
    assert splitter.calls == 1


def test_a_call_cut_by_the_limit_is_dropped(tokenizer: Any) -> None:
    answer = '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"city": "Pa'
    _, shown, calls, splitter = split(tokenizer, "<|start|>assistant", answer, cut=True)
    assert calls == [] and shown == "" and splitter.calls == 0


def test_a_prompt_that_opens_the_analysis_starts_inside_it(tokenizer: Any) -> None:
    tail = "<|start|>assistant<|channel|>analysis<|message|>"
    answer = "Thinking.<|end|><|start|>assistant<|channel|>final<|message|>Done."
    thinking, shown, _, _ = split(tokenizer, tail, answer)
    assert (thinking, shown) == ("Thinking.", "Done.")


@pytest.fixture(scope="module")
def gpt_oss(harmony_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    spec = write_spec(
        tmp_path_factory.mktemp("harmony-spec") / "s.yaml",
        harmony_dir,
        name="gpt-oss",
        reasoning={"effort": "low", "budgets": {"low": 5}},
        defaults={"max_tokens": 16, "temperature": 0.0},
    )
    with real_app(spec) as app:
        yield app


def test_the_engine_splits_a_harmony_answer_and_bounds_its_analysis(gpt_oss: InProcessApp) -> None:
    ask = {"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "low"}
    response = gpt_oss.http.post("/v1/chat/completions", json=ask)
    assert response.status_code == 200, response.text
    answer = response.json()
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"]  # the analysis the prompt opened
    # The budget closed the analysis (its five tokens; the forced <|end|> is a marker).
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5
    assert "<|end|>" not in (message.get("content") or "")


def test_a_system_message_the_template_would_leave_out_reaches_the_model(tokenizer: Any) -> None:
    """gpt-oss's template renders only the first system (or developer) message: a later one
    (Claude Code and Codex send them mid-conversation) is given to the model as a user
    message instead of being lost."""
    from mlxdeploy.engine.api import Turn
    from mlxdeploy.engine.prompt import template_prompt

    turns = [Turn("user", "Hi"), Turn("developer", "Answer in French."), Turn("user", "Again")]
    prompt = template_prompt(tokenizer, turns)
    assert "<|start|>user<|message|>Answer in French.\n\nAgain<|end|>" in prompt
    alone = template_prompt(tokenizer, [Turn("developer", "Rules."), Turn("user", "Hi")])
    assert "# Instructions\n\nRules." in alone  # the first one is the template's own
