"""OpenAI's Responses API (/v1/responses): the official `openai` client's `responses.create`
and `responses.stream` on real inference (the tiny model; the demo model with a tool-rendering
template for tool calls and structured output), every response and stream event checked
against OpenAI's published schemas (tests/data/openai_responses_api.schema.json), the stored
conversation behind `previous_response_id`, and the 400s for what this server does not do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from mlxdeploy.api.responses.wire import (
    FunctionCallItem,
    FunctionCallOutput,
    InputMessage,
    turns_of,
)
from mlxdeploy.engine.api import ToolCall, Turn
from tests.conftest import DEMO_MODEL, real_app, scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine
from tests.test_tools import WEATHER_SCHEMA
from tests.test_wire_conformance import named_events, strict

SCHEMAS = Path(__file__).parent / "data" / "openai_responses_api.schema.json"
TEMPLATE = Path(__file__).parent.parent / "templates" / "chatml-tools.jinja"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": WEATHER_SCHEMA,
}
GREEDY = {"temperature": 0.0, "max_output_tokens": 12}


def merged(node: Any, schemas: dict[str, Any]) -> Any:
    """`node` with every `allOf` of object schemas merged into one object schema, so that
    closing objects (`strict`) closes the whole, not each part of it."""
    if isinstance(node, list):
        return [merged(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: merged(value, schemas) for key, value in node.items()}
    parts = [_part(part, schemas) for part in out.pop("allOf", [])]
    if parts and all("properties" in part for part in parts):
        out.setdefault("type", "object")
        out["properties"] = {k: v for part in parts for k, v in part["properties"].items()}
        out["required"] = sorted({name for part in parts for name in part.get("required", [])})
    elif parts:
        out["allOf"] = parts
    return out


def _part(part: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    ref = part.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return merged(schemas[ref.rsplit("/", 1)[1]], schemas)
    return part


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schemas = json.loads(SCHEMAS.read_text())["components"]["schemas"]
    return {"components": strict({"schemas": merged(schemas, schemas)})}


def assert_valid(document: dict[str, Any], name: str, payload: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(
        {**document, "$ref": f"#/components/schemas/{name}"}
    )
    errors = sorted(validator.iter_errors(payload), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def events(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    return named_events(http, "/v1/responses", body)


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    path = tmp_path_factory.mktemp("responses") / "demo-tools.yaml"
    write_spec(path, DEMO_MODEL, name="demo", chat_template=str(TEMPLATE))
    with real_app(path) as app:
        yield app


# -- whole and streamed, on real inference ---------------------------------------------


def test_create_answers_with_a_message_and_usage(
    tiny_app: InProcessApp, document: dict[str, Any]
) -> None:
    raw = tiny_app.http.post("/v1/responses", json={"input": "Hello there", **GREEDY})
    assert raw.status_code == 200
    assert_valid(document, "Response", raw.json())
    response = tiny_app.openai().responses.create(model="tiny", input="Hello there", **GREEDY)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == "tiny" and response.temperature == 0.0
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.output_text == message.content[0].text  # the SDK's convenience
    assert response.output_text == raw.json()["output"][0]["content"][0]["text"]  # greedy
    usage = response.usage
    assert usage is not None and usage.total_tokens == usage.input_tokens + usage.output_tokens
    if response.status == "incomplete":  # the tiny model rarely ends on its own in 12 tokens
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert usage.output_tokens == 12
    else:
        assert response.status == "completed" and usage.output_tokens <= 12


def test_stream_events_come_in_order_and_join_to_the_whole_text(
    tiny_app: InProcessApp, document: dict[str, Any]
) -> None:
    body = {"input": [{"role": "user", "content": "Tell me a story"}], **GREEDY}
    whole = tiny_app.http.post("/v1/responses", json=body).json()
    streamed = events(tiny_app.http, body)
    for event in streamed:
        assert_valid(document, "ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in streamed] == list(range(len(streamed)))
    kinds = [e["type"] for e in streamed]
    last = "response.incomplete" if whole["status"] == "incomplete" else "response.completed"
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        last,
    ]
    text = "".join(e["delta"] for e in streamed if e["type"] == "response.output_text.delta")
    assert text == whole["output"][0]["content"][0]["text"]
    assert streamed[-1]["response"]["output"][0]["content"][0]["text"] == text
    assert streamed[-1]["response"]["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    assert streamed[0]["response"]["status"] == "in_progress"


def test_the_sdk_stream_helper_gets_the_final_response(tiny_app: InProcessApp) -> None:
    """A format that ends (a boolean) makes the answer complete: the SDK's helper wants
    `response.completed`."""
    client = tiny_app.openai()
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema}}
    with client.responses.stream(
        model="tiny", input="Hello", text=fmt, temperature=0.0, max_output_tokens=40
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    jsonschema.validate(json.loads(final.output_text), schema)
    assert client.responses.retrieve(final.id).output_text == final.output_text  # stored


# -- tools and structured output (the demo model, constrained decoding) --------------------


def test_a_tool_round_trip_through_previous_response_id(
    demo: InProcessApp, document: dict[str, Any]
) -> None:
    client = demo.openai()
    first = client.responses.create(
        model="demo",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0.0,
        max_output_tokens=80,
    )
    assert_valid(document, "Response", first.to_dict())  # what the server sent
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)
    assert calls[0].name == "get_weather" and calls[0].call_id

    second = client.responses.create(
        model="demo",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": c.call_id, "output": "18 C"} for c in calls
        ],
        tools=[WEATHER_TOOL],
        temperature=0.0,
        max_output_tokens=24,
    )
    assert second.previous_response_id == first.id
    assert second.output and second.output[0].type in ("message", "function_call")
    assert second.usage is not None and first.usage is not None
    # The first exchange is part of the second prompt: its question, the calls, the results.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_a_named_function_is_the_one_called_and_streams_its_arguments(
    demo: InProcessApp, document: dict[str, Any]
) -> None:
    streamed = events(
        demo.http,
        {
            "input": "Weather in Rome?",
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "temperature": 0.0,
            "max_output_tokens": 80,
        },
    )
    for event in streamed:
        assert_valid(document, "ResponseStreamEvent", event)
    pieces = [e["delta"] for e in streamed if e["type"] == "response.function_call_arguments.delta"]
    done = [e for e in streamed if e["type"] == "response.function_call_arguments.done"]
    assert pieces and done and done[0]["arguments"] == "".join(pieces)
    jsonschema.validate(json.loads(done[0]["arguments"]), WEATHER_SCHEMA)
    final = streamed[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["output"][-1]["arguments"] == done[0]["arguments"]


def test_json_schema_output_validates(demo: InProcessApp) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = demo.openai().responses.create(
        model="demo",
        input="Make up a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
        temperature=0.0,
        max_output_tokens=60,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"


# -- state: the conversation behind previous_response_id ------------------------------


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[InProcessApp, ScriptedEngine]]:
    engine = ScriptedEngine()
    spec = write_spec(
        tmp_path / "s.yaml", "owner/model", name="tiny", limits={"stored_responses": 2}
    )
    with scripted_app(spec, engine) as app:
        yield app, engine


def test_previous_response_id_continues_the_conversation(
    scripted: tuple[InProcessApp, ScriptedEngine],
) -> None:
    app, engine = scripted
    first = app.http.post("/v1/responses", json={"input": "Hi", "instructions": "Be brief"}).json()
    app.http.post(
        "/v1/responses", json={"input": "And then?", "previous_response_id": first["id"]}
    ).raise_for_status()
    assert engine.turns[-1] == [  # instructions are not carried over (OpenAI's rule)
        Turn("user", "Hi"),
        Turn("assistant", "Hello, world."),
        Turn("user", "And then?"),
    ]


def test_store_false_keeps_nothing_and_the_store_is_bounded(
    scripted: tuple[InProcessApp, ScriptedEngine],
) -> None:
    app, _ = scripted
    unstored = app.http.post("/v1/responses", json={"input": "Hi", "store": False}).json()
    assert app.http.get(f"/v1/responses/{unstored['id']}").status_code == 404
    refused = app.http.post(
        "/v1/responses", json={"input": "x", "previous_response_id": unstored["id"]}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "previous_response_id"
    ids = [app.http.post("/v1/responses", json={"input": str(i)}).json()["id"] for i in range(3)]
    assert app.http.get(f"/v1/responses/{ids[0]}").status_code == 404  # limit 2: oldest gone
    assert app.http.get(f"/v1/responses/{ids[2]}").json()["id"] == ids[2]
    deleted = app.http.delete(f"/v1/responses/{ids[2]}")
    assert deleted.json() == {"id": ids[2], "object": "response", "deleted": True}
    assert app.http.get(f"/v1/responses/{ids[2]}").status_code == 404
    assert (
        app.http.delete(f"/v1/responses/{ids[2]}").json()["error"]["type"]
        == "invalid_request_error"
    )


def test_input_items_become_the_chat_format_turns() -> None:
    items = [
        InputMessage(role="developer", content="Use tools"),
        InputMessage(role="user", content=[{"type": "input_text", "text": "Weather?"}]),
        FunctionCallItem(type="function_call", call_id="c1", name="get_weather", arguments="{}"),
        FunctionCallItem(type="function_call", call_id="c2", name="get_time", arguments="{}"),
        FunctionCallOutput(type="function_call_output", call_id="c2", output="noon"),
        FunctionCallOutput(type="function_call_output", call_id="c1", output="sunny"),
    ]
    assert turns_of(items) == [
        Turn("developer", "Use tools"),
        Turn("user", "Weather?"),
        Turn(
            "assistant",
            "",
            (ToolCall("c1", "get_weather", "{}"), ToolCall("c2", "get_time", "{}")),
        ),
        Turn("tool", "noon", tool_call_id="c2", name="get_time"),
        Turn("tool", "sunny", tool_call_id="c1", name="get_weather"),
    ]


def test_a_failed_generation_streams_response_failed(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny")
    with scripted_app(spec, engine) as app:
        engine.abort("the engine went away")
        streamed = events(app.http, {"input": "Hi"})
    assert [e["type"] for e in streamed] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert streamed[-1]["response"]["error"]["message"] == "the engine went away"


# -- what is refused, in OpenAI's error shape --------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "reasoning": {"effort": "enormous"}}, "reasoning"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "frobnicate": 1}, "frobnicate"),
        (
            {"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"},
            "tool_choice",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": []}, "input"),
        (
            {
                "input": "x",
                "text": {
                    "format": {"type": "json_schema", "name": "n", "schema": {"type": "nonsense"}}
                },
            },
            "text.format",
        ),
    ],
)
def test_what_this_server_does_not_do_is_a_400_naming_it(
    scripted: tuple[InProcessApp, ScriptedEngine], body: dict[str, Any], param: str
) -> None:
    app, engine = scripted
    response = app.http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"] or "").startswith(param), error
    assert engine.prompts == []  # nothing was generated


def test_apis_turn_the_responses_routes_off(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny", apis=["chat"])
    with scripted_app(spec) as app:
        assert app.http.post("/v1/responses", json={"input": "x"}).status_code == 404
        assert app.http.get("/v1/responses/resp_1").status_code == 404
        assert (
            app.http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
            ).status_code
            == 200
        )
