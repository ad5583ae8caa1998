"""configs/team: a base spec and two services extending it, validated and served."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.spec import load_spec
from tests.servers import start_server

TEAM = Path(__file__).parent.parent / "configs" / "team"


def test_the_team_layout_validates() -> None:
    specs = sorted(TEAM.glob("*.yaml"))
    assert [p.name for p in specs] == ["assistant.yaml", "base.yaml", "summarizer.yaml"]
    result = CliRunner().invoke(app, ["validate", *map(str, specs)])
    assert result.exit_code == 0, result.output


def test_services_share_the_base_and_differ_where_they_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEAM_MODEL", raising=False)
    assistant, summarizer = load_spec(TEAM / "assistant.yaml"), load_spec(TEAM / "summarizer.yaml")
    assert assistant.model == summarizer.model
    assert (assistant.port, summarizer.port) == (8101, 8102)
    assert assistant.limits.max_tokens == summarizer.limits.max_tokens == 1024
    assert (assistant.defaults.max_tokens, summarizer.defaults.max_tokens) == (512, 120)
    assert summarizer.defaults.repetition_penalty == 1.1  # merged from the base
    assert summarizer.stop == ["\n\n"] and assistant.stop == []


def test_the_summarizer_serves(cache_dir: Path) -> None:
    with start_server(TEAM / "summarizer.yaml") as server:
        client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model="summarizer", messages=question, max_tokens=40)
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.usage is not None and reply.usage.completion_tokens <= 40
