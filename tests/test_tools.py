"""Tool calling: real inference on the demo model (SmolLM2 with templates/chatml-tools.jinja),
the call splitter and the call grammar on the demo's real tokenizer, and every way a tool
request can be wrong.

The demo model does not call tools on its own, so calls come from constrained decoding
(`tool_choice` required or a named function): every call these tests see parses and validates
against its tool's schema because the grammar made it so."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from mlxdeploy.engine.api import (
    Text,
    Tool,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
    ToolUse,
    Turn,
)
from mlxdeploy.engine.tool_calls import CallSplitter
from mlxdeploy.engine.tool_formats import load_format
from mlxdeploy.engine.tool_grammar import tool_grammar
from mlxdeploy.spec.load import SpecError, load_spec
from tests.conftest import DEMO_MODEL, real_app, write_spec
from tests.inprocess import InProcessApp
from tests.test_wire_conformance import assert_valid, load_document, stream

CHAT = "/v1/chat/completions"
TEMPLATE = Path(__file__).parent.parent / "templates" / "chatml-tools.jinja"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now", "parameters": TIME_SCHEMA},
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 80}


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    path = tmp_path_factory.mktemp("tools") / "demo-tools.yaml"
    write_spec(path, DEMO_MODEL, name="demo", chat_template=str(TEMPLATE))
    with real_app(path) as app:
        yield app


def chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post(CHAT, json={"messages": ASK, **GREEDY, **body})
    assert response.status_code == 200, response.text
    return response.json()


def assert_valid_calls(calls: list[dict[str, Any]]) -> None:
    """Every call parses and matches its tool's schema (there is at least one)."""
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


# -- real inference on the demo model ---------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, True])
def test_required_gives_schema_valid_calls(demo: InProcessApp, parallel: bool) -> None:
    body = chat(
        demo.http,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=parallel,
        max_tokens=160,
    )
    choice = body["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] in ("tool_calls", "length")
    calls = message["tool_calls"]
    assert_valid_calls(calls if choice["finish_reason"] == "tool_calls" else calls[:1])
    assert message["content"] is None
    if not parallel:
        assert choice["finish_reason"] == "tool_calls" and len(message["tool_calls"]) == 1
    assert_valid(load_document(), "CreateChatCompletionResponse", body)


def test_a_named_function_is_the_one_called(demo: InProcessApp) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    body = chat(demo.http, tools=[WEATHER, TIME], tool_choice=named)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_time"]
    assert_valid_calls(calls)


def test_streamed_calls_join_to_the_whole_answer(demo: InProcessApp) -> None:
    request = {"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False}
    whole = chat(demo.http, **request)["choices"][0]
    chunks = stream(demo.http, CHAT, {"messages": ASK, **GREEDY, **request})
    document = load_document()
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        assert_valid(document, "CreateChatCompletionStreamResponse", chunk)
        delta = chunk["choices"][0]["delta"]
        assert "content" not in delta or delta["content"] == ""  # never the call markup
        for piece in delta.get("tool_calls", []):
            if "id" in piece:  # the first chunk of a call: id, type and name
                assert piece["index"] not in calls
                calls[piece["index"]] = {
                    "id": piece["id"],
                    "type": piece["type"],
                    "function": {"name": piece["function"]["name"], "arguments": ""},
                }
            else:
                assert set(piece["function"]) == {"arguments"}
            calls[piece["index"]]["function"]["arguments"] += piece["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    streamed = [calls[i] for i in sorted(calls)]
    for call in streamed + whole["message"]["tool_calls"]:
        call.pop("id")
    assert streamed == whole["message"]["tool_calls"]
    assert sum(len(c["choices"][0]["delta"].get("tool_calls", [])) for c in chunks) > 2


def test_the_openai_client_completes_a_round_trip(demo: InProcessApp) -> None:
    """call -> the tool's result as a tool message -> an answer that uses it."""
    client = demo.openai()
    messages: list[Any] = list(ASK)
    first = client.chat.completions.create(
        model="demo", messages=messages, tools=[WEATHER], tool_choice="required", **GREEDY
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    result = {"temperature": 18, "unit": "celsius"}
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    final = client.chat.completions.create(
        model="demo", messages=messages, tools=[WEATHER], **GREEDY
    )
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and answer.message.content
    assert not answer.message.tool_calls
    # The call and its result were part of the prompt the model answered.
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens


def test_tool_choice_none_answers_in_text(demo: InProcessApp) -> None:
    body = chat(demo.http, tools=[WEATHER], tool_choice="none", max_tokens=12)
    message = body["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message


# -- what reaches the chat template -------------------------------------------------------------
def test_calls_and_results_reach_the_template(demo_dir: Path) -> None:
    from transformers import AutoTokenizer

    from mlxdeploy.engine.prompt import template_prompt

    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    tokenizer.chat_template = TEMPLATE.read_text()
    turns = [
        Turn("user", "Weather in Paris?"),
        Turn("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        Turn("tool", '{"temperature": 18}', tool_call_id="call_1", name="get_weather"),
    ]
    tool = Tool("get_weather", "The weather", json.dumps(WEATHER_SCHEMA))
    prompt = template_prompt(tokenizer, turns, [tool])
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt  # the definitions
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in (
        prompt
    )
    assert '<tool_response>\n{"temperature": 18}\n</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


# -- the splitter ---------------------------------------------------------------------------------
def split(format_name: str, text: str, seed: int) -> list[Any]:
    rng = random.Random(seed)
    splitter = CallSplitter(load_format(format_name), [Tool("get_weather"), Tool("f")])
    events: list[Any] = []
    at = 0
    while at < len(text):
        size = rng.randint(1, 6)
        events += splitter.feed(text[at : at + size])
        at += size
    return events + splitter.finish()


def joined(events: list[Any]) -> tuple[str, list[tuple[str, str]]]:
    content = "".join(e.text for e in events if isinstance(e, Text))
    names = [e.name for e in events if isinstance(e, ToolCallStarted)]
    arguments = ["" for _ in names]
    for e in events:
        if isinstance(e, ToolCallArguments):
            arguments[e.index] += e.text
    return content, list(zip(names, arguments, strict=True))


@pytest.mark.parametrize("seed", range(20))
def test_json_tools_calls_stream_out_of_any_split(seed: int) -> None:
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city":"Par}is","q":{"a":"\\"}"}}}\n'
        '</tool_call>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    )
    events = split("json_tools", text, seed)
    assert joined(events) == (
        "Let me check.\n",
        [("get_weather", '{"city":"Par}is","q":{"a":"\\"}"}}'), ("f", "{}")],
    )
    assert sum(isinstance(e, ToolCallArguments) for e in events) >= 2  # in pieces


def test_a_format_without_a_shape_is_parsed_whole() -> None:
    text = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    content, calls = joined(split("qwen3_coder", text, 0))
    assert content == "" and calls == [("get_weather", '{"city": "Paris"}')]


def test_mistral_calls_end_with_their_arguments() -> None:
    text = '[TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]get_weather[ARGS]{"b": [2]}'
    assert joined(split("mistral", text, 3)) == (
        "",
        [("f", '{"a": 1}'), ("get_weather", '{"b": [2]}')],
    )


def test_text_without_calls_is_all_content() -> None:
    text = "No calls here, not even <tool_ or a < sign at the end <"
    assert joined(split("json_tools", text, 1)) == (text, [])


# -- the grammar, on the demo's real tokenizer --------------------------------------------------
@pytest.fixture(scope="module")
def grammars(demo_dir: Path) -> Any:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from mlxdeploy.engine.constraints import Grammars

    tokenizer = load_tokenizer(demo_dir)
    return tokenizer, Grammars(tokenizer, 49152)


def consumed(grammars: Any, use: ToolUse, text: str) -> tuple[int, int, bool]:
    """(tokens the grammar accepts, tokens in text, whether the answer may end there)."""
    from mlxdeploy.engine.api import SamplingParams

    tokenizer, built = grammars
    params = SamplingParams(80, 0.0, 1.0, 1.0, 20, (), tools=use)
    guide = built.guide(params, load_format("json_tools"))
    tokens = tokenizer.encode(text, add_special_tokens=False)
    accepted = guide.matcher.try_consume_tokens(tokens)
    return accepted, len(tokens), guide.matcher.is_accepting()


TOOLS = (
    Tool("get_weather", None, json.dumps(WEATHER_SCHEMA)),
    Tool("get_time", None, json.dumps(TIME_SCHEMA)),
)
CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris","unit":"celsius"}}'
    "\n</tool_call>"
)


def test_auto_leaves_text_free_and_constrains_an_opened_call(grammars: Any) -> None:
    auto = ToolUse(TOOLS, "auto", parallel=False)
    prose = "Any text at all: {not json} <b>bold</b>"
    accepted, total, ends = consumed(grammars, auto, prose)
    assert (accepted, ends) == (total, True)
    accepted, total, ends = consumed(grammars, auto, "Sure. " + CALL)
    assert (accepted, ends) == (total, True)
    bad = 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city":3'
    accepted, total, _ = consumed(grammars, auto, bad)
    assert accepted < total  # once opened, the call must match its schema
    unknown = 'Sure. <tool_call>\n{"name": "rm_rf", "arguments": {}}'
    accepted, total, _ = consumed(grammars, auto, unknown)
    assert accepted < total


def test_required_and_named_allow_only_calls(grammars: Any) -> None:
    required = ToolUse(TOOLS, "required", parallel=True)
    assert consumed(grammars, required, "Hello")[0] == 0
    accepted, total, ends = consumed(grammars, required, CALL + "\n" + CALL)
    assert (accepted, ends) == (total, True)
    named = ToolUse(TOOLS, "get_time", parallel=True)
    assert consumed(grammars, named, CALL)[0] < len(CALL)  # get_weather is not the named one
    single = ToolUse(TOOLS, "required", parallel=False)
    accepted, total, _ = consumed(grammars, single, CALL + "\n" + CALL)
    assert accepted < total  # one call, then only the end


def test_the_grammar_of_a_shaped_format_compiles() -> None:
    lark = tool_grammar(load_format("mistral"), ToolUse(TOOLS, "required"), None, json.dumps)
    assert '"get_weather[ARGS]"' in lark and "%json" in lark


# -- requests that are wrong --------------------------------------------------------------------
def error_of(http: httpx.Client, **body: Any) -> tuple[int, dict[str, Any]]:
    response = http.post(CHAT, json={"messages": ASK, "max_tokens": 4, **body})
    return response.status_code, response.json()["error"]


def test_a_model_without_tool_support_names_itself_and_what_to_set(
    tiny_app: InProcessApp,
) -> None:
    status, error = error_of(tiny_app.http, tools=[WEATHER])
    assert status == 400 and error["param"] == "tools"
    assert "'tiny'" in error["message"] and "tool_parser" in error["message"]
    assert "chat_template" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "not in tools",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools", "pattern"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
            "tools",
            "invalid JSON schema",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools", "function"),
        ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice", ""),
        ({"parallel_tool_calls": "yes", "tools": [WEATHER]}, "parallel_tool_calls", ""),
    ],
)
def test_bad_tool_fields_are_400s_naming_the_field(
    demo: InProcessApp, body: dict[str, Any], param: str, words: str
) -> None:
    status, error = error_of(demo.http, **body)
    assert status == 400 and error["type"] == "invalid_request_error"
    assert (error["param"] or "").startswith(param), error
    assert words in error["message"]


def test_the_deprecated_functions_api_is_refused(demo: InProcessApp) -> None:
    status, error = error_of(demo.http, functions=[WEATHER["function"]])
    assert status == 400 and error["param"] == "functions"
    assert "tools" in error["message"]


# -- the spec -------------------------------------------------------------------------------------
def test_validate_rejects_an_unknown_tool_parser_and_lists_the_known(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", DEMO_MODEL, tool_parser="hermes")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    (problem,) = [str(p) for p in caught.value.problems]
    assert "tool_parser" in problem and "'hermes'" in problem
    assert "json_tools" in problem and "mistral" in problem


def test_a_tool_parser_in_the_spec_reaches_its_model(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", DEMO_MODEL, tool_parser="mistral")
    assert load_spec(spec).catalog.models[0].tool_parser == "mistral"


def test_a_forced_call_needs_a_format_that_can_be_constrained(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """qwen3_coder writes calls as XML-like parameters: auto reads them, required cannot force
    them, and says so rather than answering without a call."""
    spec = write_spec(
        tmp_path / "s.yaml",
        tiny_model_dir,
        name="tiny",
        tool_parser="qwen3_coder",
        chat_template=str(TEMPLATE),
    )
    with real_app(spec) as app:
        status, error = error_of(app.http, tools=[WEATHER], tool_choice="required")
        auto = app.http.post(CHAT, json={"messages": ASK, "max_tokens": 3, "tools": [WEATHER]})
    assert status == 400 and error["param"] == "tool_choice"
    assert "qwen3_coder" in error["message"] and "auto" in error["message"]
    assert auto.status_code == 200, auto.text
