"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens): the official
`anthropic` client's `messages.create`, `messages.stream` and `count_tokens` on real inference
(the tiny model; the demo model with a tool-rendering template for tool use), every message,
stream event and error checked against Anthropic's published schemas
(tests/data/anthropic_messages.schema.json), and auth by `x-api-key` or Bearer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from mlxdeploy.engine.api import ToolCall, Turn
from tests.conftest import DEMO_MODEL, real_app, scripted_app, write_spec
from tests.inprocess import BASE_URL, InProcessApp
from tests.scripted import ScriptedEngine
from tests.test_tools import WEATHER_SCHEMA
from tests.test_wire_conformance import named_events, strict

SCHEMAS = Path(__file__).parent / "data" / "anthropic_messages.schema.json"
TEMPLATE = Path(__file__).parent.parent / "templates" / "chatml-tools.jinja"
KEYS_ENV = "MESSAGES_TEST_KEYS"
KEY = "sk-messages-test"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": WEATHER_SCHEMA,
}
HELLO = [{"role": "user", "content": "Hello there"}]
# The newest SDK no longer offers the sampling fields as arguments; older clients send them.
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return {"components": strict(json.loads(SCHEMAS.read_text())["components"])}


def assert_valid(document: dict[str, Any], name: str, payload: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(
        {**document, "$ref": f"#/components/schemas/{name}"}
    )
    errors = sorted(validator.iter_errors(payload), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def client(app: InProcessApp, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", "none")
    return anthropic.Anthropic(
        base_url=BASE_URL, http_client=app.httpx2_client(timeout=120), max_retries=0, **kwargs
    )


def events(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    return named_events(http, "/v1/messages", body)


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    path = tmp_path_factory.mktemp("messages") / "demo-tools.yaml"
    write_spec(path, DEMO_MODEL, name="demo", chat_template=str(TEMPLATE))
    with real_app(path) as app:
        yield app


# -- text, whole and streamed, on real inference ------------------------------------------


def test_create_answers_with_text_a_stop_reason_and_usage(
    tiny_app: InProcessApp, document: dict[str, Any]
) -> None:
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 10}
    raw = tiny_app.http.post("/v1/messages", json={**body, **GREEDY})
    assert raw.status_code == 200
    assert_valid(document, "Message", raw.json())
    message = client(tiny_app).messages.create(**body, extra_body=GREEDY)
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.model == "tiny"
    assert message.content[0].type == "text"
    assert message.content[0].text == raw.json()["content"][0]["text"]  # greedy
    assert message.stop_reason in ("end_turn", "max_tokens")
    if message.stop_reason == "max_tokens":
        assert message.usage.output_tokens == 10
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    counted = client(tiny_app).messages.count_tokens(model="tiny", messages=HELLO)
    assert counted.input_tokens == prompt


def test_stream_events_come_in_order_and_join_to_the_whole_text(
    tiny_app: InProcessApp, document: dict[str, Any]
) -> None:
    body = {"messages": HELLO, "max_tokens": 10, "temperature": 0.0}
    whole = tiny_app.http.post("/v1/messages", json=body).json()
    streamed = events(tiny_app.http, body)
    kinds = [e["type"] for e in streamed]
    deltas = kinds.count("content_block_delta")
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for event, name in zip(streamed, STREAM_SCHEMAS, strict=False):
        assert_valid(document, STREAM_SCHEMAS.get(event["type"], name), event)
    text = "".join(e["delta"]["text"] for e in streamed if e["type"] == "content_block_delta")
    assert text == whole["content"][0]["text"]
    assert streamed[-2]["delta"]["stop_reason"] == whole["stop_reason"]
    assert streamed[-2]["usage"]["output_tokens"] == whole["usage"]["output_tokens"]


STREAM_SCHEMAS = {
    "message_start": "MessageStartEvent",
    "content_block_start": "ContentBlockStartEvent",
    "ping": "Ping",
    "content_block_delta": "ContentBlockDeltaEvent",
    "content_block_stop": "ContentBlockStopEvent",
    "message_delta": "MessageDeltaEvent",
    "message_stop": "MessageStopEvent",
}


def test_output_config_format_is_json_that_fits(tiny_app: InProcessApp) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    message = client(tiny_app).messages.create(
        model="tiny",
        messages=HELLO,
        max_tokens=40,
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), schema)


def test_the_sdk_stream_helper_gets_the_final_message(tiny_app: InProcessApp) -> None:
    with client(tiny_app).messages.stream(
        model="tiny", messages=HELLO, max_tokens=10, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens >= 1


def test_a_stop_sequence_ends_the_text_and_is_named(tiny_app: InProcessApp) -> None:
    """Greedy decoding says the same words twice: the second time, one of them stops it."""
    first = client(tiny_app).messages.create(
        messages=HELLO, max_tokens=10, extra_body=GREEDY, model="tiny"
    )
    text = first.content[0].text
    word = text.strip().split()[-1] if text.strip() else text
    assert word, "the tiny model said nothing to stop on"
    stopped = client(tiny_app).messages.create(
        messages=HELLO, max_tokens=10, extra_body=GREEDY, model="tiny", stop_sequences=[word]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    said = stopped.content[0].text if stopped.content else ""
    assert text.startswith(said) and word not in said


# -- tools (the demo model, constrained decoding) ----------------------------------------


def test_a_tool_use_and_tool_result_round_trip(
    demo: InProcessApp, document: dict[str, Any]
) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    claude = client(demo)
    first = claude.messages.create(
        model="demo",
        messages=ask,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=80,
        extra_body=GREEDY,
    )
    assert_valid(document, "Message", first.to_dict())
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER_SCHEMA)
    second = claude.messages.create(
        model="demo",
        messages=[
            *ask,
            {"role": "assistant", "content": [b.to_dict() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": u.id, "content": "18 degrees"}
                    for u in uses
                ],
            },
        ],
        tools=[WEATHER_TOOL],
        max_tokens=24,
        extra_body=GREEDY,
    )
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) > (
        first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    )


def test_any_tool_streams_input_json_deltas(demo: InProcessApp, document: dict[str, Any]) -> None:
    streamed = events(
        demo.http,
        {
            "messages": [{"role": "user", "content": "Weather in Rome?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "any"},
            "max_tokens": 80,
            "temperature": 0.0,
        },
    )
    for event in streamed:
        assert_valid(document, STREAM_SCHEMAS[event["type"]], event)
    starts = [e for e in streamed if e["type"] == "content_block_start"]
    assert starts[-1]["content_block"]["type"] == "tool_use"
    tool_index = starts[-1]["index"]
    pieces = [
        e["delta"]["partial_json"]
        for e in streamed
        if e["type"] == "content_block_delta" and e["index"] == tool_index
    ]
    jsonschema.validate(json.loads("".join(pieces)), WEATHER_SCHEMA)
    assert streamed[-2]["delta"]["stop_reason"] == "tool_use"


def test_content_blocks_become_the_chat_format_turns(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny")
    with scripted_app(spec, engine) as app:
        response = app.http.post(
            "/v1/messages",
            json={
                "max_tokens": 5,
                "system": [{"type": "text", "text": "Be brief."}],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": "Looking."},
                            {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "P"}},
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                            {"type": "text", "text": "Thanks"},
                        ],
                    },
                ],
            },
        )
    assert response.status_code == 200, response.json()
    assert engine.turns[-1] == [
        Turn("system", "Be brief."),
        Turn("user", "Weather?"),
        Turn("assistant", "Looking.", (ToolCall("t1", "w", '{"c": "P"}'),)),
        Turn("tool", "sunny", tool_call_id="t1", name="w"),
        Turn("user", "Thanks"),
    ]


# -- errors in Anthropic's shape, auth ---------------------------------------------------


def test_a_missing_max_tokens_is_anthropics_400(
    tiny_app: InProcessApp, document: dict[str, Any]
) -> None:
    # The SDK's messages.create refuses to send this; its own request path sends it as written.
    with pytest.raises(anthropic.BadRequestError) as raised:
        client(tiny_app).post(
            "/v1/messages",
            body={"model": "tiny", "messages": HELLO},
            cast_to=anthropic.types.Message,
        )
    body = raised.value.response.json()
    assert_valid(document, "ErrorResponse", body)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"max_tokens": 5, "messages": HELLO, "frobnicate": True},
        {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
        {"max_tokens": 5, "messages": HELLO, "tool_choice": {"type": "any"}},
        {"max_tokens": 5, "messages": HELLO, "temperature": 1.5},
        {"max_tokens": 5, "messages": [*HELLO, {"role": "assistant", "content": "The answer is"}]},
        {
            "max_tokens": 5,
            "messages": HELLO,
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}},
        },
        {
            "max_tokens": 5,
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
            ],
        },
    ],
)
def test_what_this_server_does_not_do_is_a_400_in_anthropics_shape(
    tmp_path: Path, document: dict[str, Any], body: dict[str, Any]
) -> None:
    engine = ScriptedEngine()
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny")
    with scripted_app(spec, engine) as app:
        response = app.http.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert_valid(document, "ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert engine.prompts == []


def test_unknown_routes_and_busy_servers_answer_in_anthropics_shape(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny")
    with scripted_app(spec, ScriptedEngine(state="loading")) as app:
        missing = app.http.post("/v1/messages/batches", json={})
        loading = app.http.post("/v1/messages", json={"max_tokens": 5, "messages": HELLO})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert loading.status_code == 529 and loading.json()["error"]["type"] == "overloaded_error"
    for response in (missing, loading):
        assert_valid(document, "ErrorResponse", response.json())


@pytest.mark.parametrize("auth", [True, False])
def test_both_apis_with_auth_on_and_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: dict[str, Any], auth: bool
) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY)
    fields: dict[str, Any] = {"auth": {"api_keys_env": KEYS_ENV}} if auth else {}
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny", **fields)
    with scripted_app(spec) as app:
        by_x_api_key = client(app, api_key=KEY).messages.create(
            model="tiny", messages=HELLO, max_tokens=5
        )
        by_bearer = client(app, api_key=None, auth_token=KEY).messages.create(
            model="tiny", messages=HELLO, max_tokens=5
        )
        responses = app.openai(api_key=KEY).responses.create(model="tiny", input="Hi")
        anonymous = app.http.post("/v1/messages", json={"max_tokens": 5, "messages": HELLO})
        anonymous_responses = app.http.post("/v1/responses", json={"input": "Hi"})
    assert by_x_api_key.content[0].text == by_bearer.content[0].text == "Hello, world."
    assert responses.output_text == "Hello, world."
    if auth:
        assert anonymous.status_code == 401
        assert_valid(document, "ErrorResponse", anonymous.json())
        assert anonymous.json()["error"]["type"] == "authentication_error"
        assert anonymous_responses.status_code == 401
        assert anonymous_responses.json()["error"]["code"] == "invalid_api_key"  # OpenAI's shape
    else:
        assert anonymous.status_code == anonymous_responses.status_code == 200


def test_metrics_label_the_new_routes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny")
    with scripted_app(spec) as app:
        app.http.post("/v1/messages", json={"max_tokens": 5, "messages": HELLO})
        app.http.post("/v1/messages/count_tokens", json={"messages": HELLO})
        app.http.post("/v1/responses", json={"input": "Hi"})
        metrics = app.http.get("/metrics").text
    for route in ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses"):
        assert f'route="{route}",status="200"' in metrics, route
