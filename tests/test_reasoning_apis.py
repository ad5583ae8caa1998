"""Thinking as each API's own client sees it, on the real engine (the tiny thinking model of
tests/thinking.py, budgets of 6 tokens): the official `openai` client's Responses reasoning
items (summary, sealed `encrypted_content`, the streamed events in order, the sealed thinking
sent back with `store: false`), the official `anthropic` client's thinking blocks (signatures,
thinking_delta and signature_delta, `display: omitted`, thinking sent back, thinking
disabled, `context_management`), chat's `reasoning_content` (whole and streamed, effort and
`chat_template_kwargs`), and tool calls after thinking.

Thinking that does not come back as it was sealed (a tampered `encrypted_content`, a forged
signature) is left out and named in `X-Unused-Fields`, or is a 400 under `limits.unused_fields:
reject`. A model that does not think takes an effort as a hint.

A random model never closes its thinking by itself: the budget closes it, so every answer
thinks 6 tokens and then the end tag the budget forces (7 reasoning tokens)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest
from openai.types.responses import ResponseOutputMessage, ResponseReasoningItem

from mlxdeploy.api.unused import HEADER
from tests.conftest import real_app, scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine
from tests.test_messages import client as anthropic_client
from tests.test_wire_conformance import named_events, stream

MODEL = "thinker"
BUDGET = 6
THOUGHT_TOKENS = BUDGET + 1  # the budget, then the end tag it forces
SEAL_KEY = "0123456789abcdef0123"
REASONING = {"budgets": {"low": BUDGET, "medium": BUDGET, "high": BUDGET}, "seal_key": SEAL_KEY}
ASK = [{"role": "user", "content": "What is 2 + 2?"}]
THEN = {"role": "user", "content": "And 3 + 3?"}
GREEDY = {"temperature": 0.0}
CHAT = "/v1/chat/completions"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}


@pytest.fixture(scope="module")
def thinker(
    thinking_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApp]:
    spec = write_spec(
        tmp_path_factory.mktemp("reasoning-apis") / "thinker.yaml",
        thinking_model_dir,
        name=MODEL,
        reasoning=REASONING,
        defaults={"max_tokens": 16},
    )
    with real_app(spec) as app:
        yield app


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    """A scripted thinking model under `limits.unused_fields: reject`, with the same seal."""
    spec = write_spec(
        tmp_path_factory.mktemp("reasoning-strict") / "strict.yaml",
        "owner/model",
        name=MODEL,
        reasoning=REASONING,
        limits={"unused_fields": "reject"},
    )
    with scripted_app(spec, ScriptedEngine(model_id=MODEL, thoughts=("Hm", "m."))) as app:
        yield app


def unused(headers: Any) -> str:
    return str(headers.get(HEADER) or "")


# -- Responses, through the official openai client -------------------------------------------

REASONED = {
    "model": MODEL,
    "reasoning": {"effort": "low", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    **GREEDY,
}


def test_a_response_opens_with_a_summarized_sealed_reasoning_item(thinker: InProcessApp) -> None:
    response = thinker.openai().responses.create(input="What is 2 + 2?", **REASONED)
    item = response.output[0]
    assert isinstance(item, ResponseReasoningItem)
    assert item.summary[0].type == "summary_text" and item.summary[0].text
    assert item.content is not None and item.content[0].text == item.summary[0].text
    assert item.encrypted_content and item.summary[0].text not in item.encrypted_content
    assert isinstance(response.output[1], ResponseOutputMessage)
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == THOUGHT_TOKENS


def test_a_streamed_response_sends_the_summary_in_order(thinker: InProcessApp) -> None:
    events = list(
        thinker.openai().responses.create(input="What is 2 + 2?", stream=True, **REASONED)
    )
    kinds = [event.type for event in events]
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    first = kinds.index("response.reasoning_summary_text.delta")
    last = len(kinds) - 1 - kinds[::-1].index("response.reasoning_summary_text.delta")
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:first] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    assert set(kinds[first : last + 1]) == {"response.reasoning_summary_text.delta"}
    assert kinds[last + 1 : last + 5] == [
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",  # then the message
    ]
    added, done = events[2], events[last + 3]
    assert added.item.type == "reasoning" and done.item.type == "reasoning"
    assert events[last + 4].item.type == "message" and events[last + 4].output_index == 1
    assert events[last + 1].text == "".join(deltas) != ""
    completed = events[-1]  # incomplete: the answer ran into max_output_tokens
    assert completed.type in ("response.completed", "response.incomplete")
    item = completed.response.output[0]
    assert isinstance(item, ResponseReasoningItem)
    assert item.summary[0].text == done.item.summary[0].text == "".join(deltas)
    assert item.encrypted_content


def test_sealed_reasoning_comes_back_with_store_false(thinker: InProcessApp) -> None:
    """A client that keeps no state on the server sends the output back as input: the sealed
    thinking opens, and nothing is noted; a tampered one is left out and noted."""
    openai = thinker.openai()
    first = openai.responses.create(input=ASK, store=False, **REASONED)
    assert isinstance(first.output[0], ResponseReasoningItem)
    items = [item.model_dump(exclude_none=True) for item in first.output]
    raw = openai.responses.with_raw_response.create(
        input=[*ASK, *items, THEN], store=False, **REASONED
    )
    assert raw.status_code == 200
    assert "encrypted_content" not in unused(raw.headers)
    assert isinstance(raw.parse().output[0], ResponseReasoningItem)

    sealed = items[0]["encrypted_content"]
    tampered = {**items[0], "encrypted_content": sealed[:-8] + "AAAAAAAA"}
    raw = openai.responses.with_raw_response.create(
        input=[*ASK, tampered, *items[1:], THEN], store=False, **REASONED
    )
    assert raw.status_code == 200
    assert "input[1].encrypted_content (not ours)" in unused(raw.headers)


def test_tampered_reasoning_is_a_400_under_the_strict_policy(strict: InProcessApp) -> None:
    first = strict.http.post("/v1/responses", json={**REASONED, "input": "Hi", "store": False})
    assert first.status_code == 200, first.text
    item = first.json()["output"][0]
    assert item["type"] == "reasoning" and item["encrypted_content"]
    body = {**REASONED, "store": False, "input": [*ASK, item, THEN]}
    assert strict.http.post("/v1/responses", json=body).status_code == 200  # it opens
    forged = {**item, "encrypted_content": item["encrypted_content"][:-8] + "AAAAAAAA"}
    refused = strict.http.post("/v1/responses", json={**body, "input": [*ASK, forged, THEN]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input[1].encrypted_content"


# -- Messages, through the official anthropic client -----------------------------------------

THINKING = {"type": "enabled", "budget_tokens": BUDGET}


def create(app: InProcessApp, **body: Any) -> Any:
    """messages.create, raw: the message and its headers."""
    body.setdefault("messages", ASK)
    raw = anthropic_client(app).messages.with_raw_response.create(
        model=MODEL, max_tokens=16, extra_body=GREEDY, **body
    )
    assert raw.status_code == 200
    return raw


def thinking_tokens(message: anthropic.types.Message) -> int:
    details = message.usage.output_tokens_details
    assert details is not None
    return details.thinking_tokens


def test_a_message_opens_with_a_signed_thinking_block(thinker: InProcessApp) -> None:
    message = create(thinker, thinking=THINKING).parse()
    block = message.content[0]
    assert isinstance(block, anthropic.types.ThinkingBlock)
    assert block.thinking and block.signature and block.thinking not in block.signature
    assert all(not isinstance(b, anthropic.types.ThinkingBlock) for b in message.content[1:])
    assert thinking_tokens(message) == THOUGHT_TOKENS


def test_a_streamed_thinking_block_ends_with_its_signature(thinker: InProcessApp) -> None:
    with anthropic_client(thinker).messages.stream(
        model=MODEL, max_tokens=16, messages=ASK, thinking=THINKING, extra_body=GREEDY
    ) as streamed:
        events = list(streamed)
        message = streamed.get_final_message()
    raw = [e for e in events if e.type.startswith("content_block_") and e.index == 0]
    assert raw[0].type == "content_block_start" and raw[0].content_block.type == "thinking"
    assert raw[-1].type == "content_block_stop"
    deltas = [e.delta for e in raw if e.type == "content_block_delta"]
    assert {d.type for d in deltas[:-1]} == {"thinking_delta"}
    assert deltas[-1].type == "signature_delta"
    block = message.content[0]
    assert isinstance(block, anthropic.types.ThinkingBlock)
    assert block.thinking == "".join(d.thinking for d in deltas[:-1]) != ""
    assert block.signature == deltas[-1].signature


def test_omitted_thinking_is_an_empty_block_with_a_signature(thinker: InProcessApp) -> None:
    omitted = {**THINKING, "display": "omitted"}
    block = create(thinker, thinking=omitted).parse().content[0]
    assert isinstance(block, anthropic.types.ThinkingBlock)
    assert block.thinking == "" and block.signature
    events = named_events(
        thinker.http,
        "/v1/messages",
        {"model": MODEL, "max_tokens": 16, "messages": ASK, "thinking": omitted, **GREEDY},
    )
    first = [e for e in events if e.get("index") == 0]
    assert [e["type"] for e in first] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    assert first[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert first[1]["delta"]["type"] == "signature_delta" and first[1]["delta"]["signature"]


def test_thinking_sent_back_is_opened_and_a_forged_one_is_noted(thinker: InProcessApp) -> None:
    message = create(thinker, thinking=THINKING).parse()
    said = [block.model_dump(exclude_none=True) for block in message.content]
    assert said[0]["type"] == "thinking"
    history = [*ASK, {"role": "assistant", "content": said}, THEN]
    again = create(thinker, thinking=THINKING, messages=history)
    assert HEADER not in again.headers
    forged = [{**said[0], "signature": "forged"}, *said[1:]]
    history[1] = {"role": "assistant", "content": forged}
    noted = create(thinker, thinking=THINKING, messages=history)
    assert "messages[1].content[0] (unsigned)" in unused(noted.headers)


def test_context_management_clears_earlier_thinking(thinker: InProcessApp) -> None:
    message = create(thinker, thinking=THINKING).parse()
    said = [block.model_dump(exclude_none=True) for block in message.content]
    history = [*ASK, {"role": "assistant", "content": said}, THEN]
    edits = [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}]
    raw = anthropic_client(thinker).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=16,
        messages=history,
        thinking=THINKING,
        extra_body={**GREEDY, "context_management": {"edits": edits}},
    )
    assert raw.status_code == 200 and HEADER not in raw.headers
    assert isinstance(raw.parse().content[0], anthropic.types.ThinkingBlock)


def test_disabled_thinking_gives_no_thinking_block(thinker: InProcessApp) -> None:
    message = create(thinker, thinking={"type": "disabled"}).parse()
    assert message.content and all(block.type == "text" for block in message.content)
    assert thinking_tokens(message) == 0


def test_a_forged_signature_is_a_400_under_the_strict_policy(strict: InProcessApp) -> None:
    thinking = {"type": "thinking", "thinking": "I made this up.", "signature": "forged"}
    history = [*ASK, {"role": "assistant", "content": [thinking]}, THEN]
    body = {"model": MODEL, "max_tokens": 8, "messages": history, "thinking": THINKING}
    refused = strict.http.post("/v1/messages", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "messages[1].content[0]" in refused.json()["error"]["message"]


# Greedy, this random model thinks blank lines when it is offered the tool (trimmed away,
# so no reasoning_content): the tool calls are sampled, with a seed.
SAMPLED = {"temperature": 1.0, "seed": 3}


# -- chat completions -----------------------------------------------------------------------


def chat(app: InProcessApp, **body: Any) -> dict[str, Any]:
    response = app.http.post(CHAT, json={"model": MODEL, "messages": ASK, **GREEDY, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_chat_reasoning_content_whole_and_streamed(thinker: InProcessApp) -> None:
    whole = chat(thinker, reasoning_effort="low")
    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] and message["reasoning"] == message["reasoning_content"]
    assert whole["usage"]["completion_tokens_details"]["reasoning_tokens"] == THOUGHT_TOKENS
    body = {"model": MODEL, "messages": ASK, "reasoning_effort": "low", **GREEDY}
    chunks = stream(thinker.http, CHAT, body)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    thought = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert thought == "".join(d.get("reasoning") or "" for d in deltas)
    assert thought == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]


def test_chat_template_kwargs_turn_thinking_off(thinker: InProcessApp) -> None:
    answer = chat(thinker, chat_template_kwargs={"enable_thinking": False})
    message = answer["choices"][0]["message"]
    assert "reasoning_content" not in message and message["content"]
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_a_chat_template_kwarg_not_allowed_is_a_400(thinker: InProcessApp) -> None:
    body = {"model": MODEL, "messages": ASK, "chat_template_kwargs": {"foo": 1}}
    refused = thinker.http.post(CHAT, json=body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "chat_template_kwargs" and "foo" in error["message"]


def test_reasoning_content_sent_back_is_accepted(thinker: InProcessApp) -> None:
    said = {"role": "assistant", "content": "4.", "reasoning_content": "Two and two."}
    response = thinker.http.post(
        CHAT,
        json={"model": MODEL, "messages": [*ASK, said, THEN], "reasoning_effort": "low", **GREEDY},
    )
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers
    assert response.json()["choices"][0]["message"]["reasoning_content"]


def test_a_tool_call_follows_the_thinking(thinker: InProcessApp) -> None:
    answer = chat(
        thinker,
        tools=[WEATHER],
        tool_choice="required",
        reasoning_effort="low",
        max_tokens=64,
        **SAMPLED,
    )
    choice = answer["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls"
    assert message["reasoning_content"]
    assert not message["content"] or message["reasoning_content"] not in message["content"]
    assert "think>" not in (message["content"] or "")
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), CITY)
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == THOUGHT_TOKENS


def test_a_tool_call_cut_by_max_tokens_is_dropped(thinker: InProcessApp) -> None:
    answer = chat(
        thinker,
        tools=[WEATHER],
        tool_choice="required",
        reasoning_effort="low",
        max_tokens=THOUGHT_TOKENS + 3,
        **SAMPLED,
    )
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not choice["message"].get("tool_calls")
    assert choice["message"]["reasoning_content"]


# -- a model that does not think --------------------------------------------------------------


def test_an_effort_is_a_hint_to_a_model_that_does_not_think(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name=MODEL)
    with scripted_app(spec, ScriptedEngine(model_id=MODEL)) as app:
        response = app.http.post(
            CHAT, json={"model": MODEL, "messages": ASK, "reasoning_effort": "high"}
        )
    assert response.status_code == 200, response.text
    assert "reasoning_effort" in unused(response.headers)
    assert "reasoning_content" not in response.json()["choices"][0]["message"]
