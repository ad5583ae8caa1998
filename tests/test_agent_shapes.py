"""The shapes coding agents send, through the app in-process: media on a text-only model, system
and developer messages mid-conversation, namespace and custom tools on the Responses API (on the
real engine: the model sees flat functions, the client gets its own names back), allowed_tools,
and the spec's default tool choice for small models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import real_app, scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[InProcessApp, ScriptedEngine]]:
    engine = ScriptedEngine()
    with scripted_app(write_spec(tmp_path / "s.yaml", "owner/model", name="tiny"), engine) as app:
        yield app, engine


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            "/v1/responses",
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0]",
        ),
        (
            "/v1/messages",
            {
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
                    {"role": "assistant", "content": "A picture."},
                    {"role": "user", "content": [{"type": "image", "source": {}}]},
                ],
            },
            "messages[2].content[0]",
        ),
    ],
)
def test_media_on_a_text_only_model_is_a_400_naming_the_model(
    scripted: tuple[InProcessApp, ScriptedEngine], path: str, body: dict[str, Any], param: str
) -> None:
    app, engine = scripted
    response = app.http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "model 'tiny' reads text only" in error["message"]
    assert error.get("param", param) == param
    assert engine.prompts == []


def test_system_and_developer_messages_anywhere_reach_the_engine(
    scripted: tuple[InProcessApp, ScriptedEngine],
) -> None:
    app, engine = scripted
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Again"},
    ]
    response = app.http.post("/v1/messages", json={"max_tokens": 5, "messages": messages})
    assert response.status_code == 200, response.text
    assert [(t.role, t.content) for t in engine.turns[-1]] == [
        ("user", "Hi"),
        ("system", "Be brief."),
        ("user", "Again"),
    ]
    items = [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": "More rules."},
    ]
    response = app.http.post("/v1/responses", json={"input": items})
    assert response.status_code == 200, response.text
    assert [t.role for t in engine.turns[-1]] == ["developer", "user", "developer"]


@pytest.fixture(scope="module")
def thinker(thinking_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    spec = write_spec(
        tmp_path_factory.mktemp("shapes") / "s.yaml",
        thinking_model_dir,
        name="thinker",
        reasoning={"effort": "low", "budgets": {"low": 2}},
        defaults={"max_tokens": 40, "temperature": 0.0},
    )
    with real_app(spec) as app:
        yield app


def test_a_namespace_tool_is_called_by_its_own_name(thinker: InProcessApp) -> None:
    tools = [
        {
            "type": "namespace",
            "name": "weather",
            "description": "Weather tools.",
            "tools": [{"type": "function", "name": "current", "parameters": CITY}],
        },
        {"type": "web_search"},
    ]
    body = {"input": "Weather in Paris?", "tools": tools, "tool_choice": "required"}
    response = thinker.http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["X-Unused-Fields"] == "tools[1] (web_search)"
    (call,) = [item for item in response.json()["output"] if item["type"] == "function_call"]
    assert (call["name"], call["namespace"]) == ("current", "weather")
    assert json.loads(call["arguments"])["city"] in ("Paris", "Rome")
    # Sent back, the call reaches the model under the flat name it was offered as.
    follow = {
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {k: call[k] for k in ("type", "call_id", "name", "arguments", "namespace")},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "18 C"},
        ],
        "tools": tools,
    }
    assert thinker.http.post("/v1/responses", json=follow).status_code == 200


def test_a_custom_tool_takes_free_text(thinker: InProcessApp) -> None:
    tools = [{"type": "custom", "name": "apply_patch", "description": "Applies a patch."}]
    body = {
        "input": "Patch it.",
        "tools": tools,
        "tool_choice": {"type": "custom", "name": "apply_patch"},
        "max_output_tokens": 30,
        "temperature": 1.0,
    }
    response = thinker.http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    calls = [item for item in response.json()["output"] if item["type"] == "custom_tool_call"]
    if response.json()["status"] == "completed":  # a random model may run out in its input
        (call,) = calls
        assert call["name"] == "apply_patch" and isinstance(call["input"], str)
    else:
        assert calls == []  # a call cut by the limit is never returned


def test_allowed_tools_limits_the_choice(thinker: InProcessApp) -> None:
    tools = [
        {"type": "function", "name": "a", "parameters": CITY},
        {"type": "function", "name": "b", "parameters": CITY},
    ]
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "b"}],
    }
    body = {"input": "Go.", "tools": tools, "tool_choice": choice}
    response = thinker.http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    names = [item["name"] for item in response.json()["output"] if item["type"] == "function_call"]
    assert names == ["b"]


def test_the_spec_can_choose_for_a_small_model(thinking_model_dir: Path, tmp_path: Path) -> None:
    """defaults.tool_choice: required forces one call in answer to a user message; after a tool
    result the model chooses (auto), so an agent's loop ends."""
    spec = write_spec(
        tmp_path / "s.yaml",
        thinking_model_dir,
        name="thinker",
        reasoning={"effort": "low", "budgets": {"low": 2}},
        defaults={"max_tokens": 40, "temperature": 0.0, "tool_choice": "required"},
    )
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    with real_app(spec) as app:
        first = app.http.post("/v1/chat/completions", json={"messages": ask, "tools": [tool]})
        choice = first.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        (call,) = choice["message"]["tool_calls"]
        result = {"role": "tool", "tool_call_id": call["id"], "content": "18 C"}
        history = [*ask, {"role": "assistant", "content": "", "tool_calls": [call]}, result]
        second = app.http.post(
            "/v1/chat/completions",
            json={"messages": history, "tools": [tool], "max_tokens": 6},
        )
        assert second.json()["choices"][0]["finish_reason"] != "tool_calls"


def test_a_streamed_namespace_call_names_its_tool_from_the_start(thinker: InProcessApp) -> None:
    from tests.test_wire_conformance import named_events

    namespace = {
        "type": "namespace",
        "name": "weather",
        "tools": [{"type": "function", "name": "current", "parameters": CITY}],
    }
    body = {"input": "Weather?", "tools": [namespace], "tool_choice": "required", "stream": True}
    events = named_events(thinker.http, "/v1/responses", body)
    items = [
        e["item"]
        for e in events
        if e["type"] in ("response.output_item.added", "response.output_item.done")
        and e["item"]["type"] == "function_call"
    ]
    assert len(items) == 2  # added, then done
    assert [(i["name"], i["namespace"]) for i in items] == [("current", "weather")] * 2
