"""configs/team: a base spec and the services extending it, validated and served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.spec import load_spec
from tests.conftest import real_app
from tests.inprocess import InProcessApp

TEAM = Path(__file__).parent.parent / "configs" / "team"


def serve_team_spec(name: str) -> Iterator[InProcessApp]:
    """A team service in-process on the real demo model (its default, TEAM_MODEL unset)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TEAM_MODEL", raising=False)
        env.delenv("TEAM_DRAFT_MODEL", raising=False)
        with real_app(TEAM / name) as served:
            yield served


# `demo_dir` converts the demo GGUF into the shared cache first: the gateway's two engines
# start together and would otherwise both convert it.
@pytest.fixture(scope="module")
def summarizer(demo_dir: Path) -> Iterator[InProcessApp]:
    yield from serve_team_spec("summarizer.yaml")


@pytest.fixture(scope="module")
def gateway(demo_dir: Path) -> Iterator[InProcessApp]:
    yield from serve_team_spec("gateway.yaml")


def test_the_team_layout_validates() -> None:
    specs = sorted(TEAM.glob("*.yaml"))
    assert [p.name for p in specs] == [
        "assistant.yaml",
        "base.yaml",
        "gateway.yaml",
        "summarizer.yaml",
    ]
    result = CliRunner().invoke(app, ["validate", *map(str, specs)])
    assert result.exit_code == 0, result.output


def test_services_share_the_base_and_differ_where_they_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEAM_MODEL", raising=False)
    assistant = load_spec(TEAM / "assistant.yaml").spec
    summarizer = load_spec(TEAM / "summarizer.yaml").spec
    assert assistant.model == summarizer.model
    assert (assistant.port, summarizer.port) == (8101, 8102)
    assert assistant.limits.max_tokens == summarizer.limits.max_tokens == 1024
    assert (assistant.defaults.max_tokens, summarizer.defaults.max_tokens) == (512, 120)
    assert summarizer.defaults.repetition_penalty == 1.1  # merged from the base
    assert summarizer.stop == ["\n\n"] and assistant.stop == []


def test_the_summarizer_serves(summarizer: InProcessApp) -> None:
    client = summarizer.openai(max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="summarizer", messages=question, max_tokens=40)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.completion_tokens <= 40


ARTICLE = (
    "Paris is the capital of France. It has about two million inhabitants and is known for "
    "the Eiffel Tower, which was finished in 1889."
)


def test_the_summarizer_serves_its_summarize_endpoint(summarizer: InProcessApp) -> None:
    reply = summarizer.http.post(
        "/v1/endpoints/summarize", json={"messages": [{"role": "user", "content": ARTICLE}]}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "summarize"
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] <= 96


def test_the_gateway_serves_two_models_and_an_endpoint(gateway: InProcessApp) -> None:
    client = gateway.openai(max_retries=0)
    assert [m.id for m in client.models.list()] == ["assistant", "drafts", "summarize"]
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = client.chat.completions.create(model="assistant", messages=question, max_tokens=40)
    assert "Paris" in (answer.choices[0].message.content or "")
    draft = client.chat.completions.create(model="drafts", messages=question, max_tokens=20)
    assert draft.model == "drafts" and draft.usage is not None
    assert 1 <= draft.usage.completion_tokens <= 20
    article = [{"role": "user", "content": ARTICLE}]
    summary = client.chat.completions.create(model="summarize", messages=article)
    assert summary.model == "summarize"
    assert "Paris" in (summary.choices[0].message.content or "")
    assert summary.usage is not None and summary.usage.completion_tokens <= 96


MACHINE = Path(__file__).parent.parent / "configs" / "machine" / "studio-64gb.yaml"


def test_the_one_machine_example_validates_and_says_what_it_serves() -> None:
    """A coder, a chat model with two adapters, a reasoner and an embedding model on one 64 GB
    machine: its form validates (the models are on the Hub, the adapters the team's own), and
    it names what stays in memory and what takes turns."""
    result = CliRunner().invoke(app, ["validate", "--no-weights", str(MACHINE)])
    assert result.exit_code == 0, result.output
    deployment = load_spec(MACHINE, require_weights=False)
    models = {m.id: m for m in deployment.catalog.models}
    assert [a.id for a in models["chat"].adapters] == ["support", "sql"]
    assert models["search"].task == "embed"
    pinned = {i for i, m in models.items() if m.residency.pin}
    on_demand = {i for i, m in models.items() if m.residency.load == "on_demand"}
    assert (pinned, on_demand) == ({"chat", "search"}, {"coder", "reasoner"})
    assert models["reasoner"].residency.idle_unload_seconds == 600
    assert models["coder"].residency.idle_unload_seconds == 1800  # memory's, for the rest
    assert deployment.spec.memory.budget == 0.6
    missing = CliRunner().invoke(app, ["validate", str(MACHINE)])  # the adapters must exist
    assert missing.exit_code == 1 and "no adapter directory at" in missing.output
