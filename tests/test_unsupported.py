"""No request field is silently dropped: a field that would change the answer and is not
implemented is a 400 `unsupported_parameter` naming it; labels, hints and default values pass
(tests/test_unused_fields.py: how the labels and hints are named, and the strict policy)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from mlxdeploy.api import unsupported
from mlxdeploy.api.chat.wire import ChatCompletionRequest
from mlxdeploy.api.completions.wire import CompletionRequest
from tests.conftest import scripted_app, write_spec
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "Hello"}]
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def assert_unsupported(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert f"'{param}'" in error["message"]
    return str(error["message"])


REFUSED_CHAT: list[tuple[str, Any]] = [
    ("functions", [TOOL["function"]]),
    ("function_call", {"name": "f"}),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("moderation", True),
    # no one's field at all
    ("temprature", 0.5),
]


@pytest.mark.parametrize(("field", "value"), REFUSED_CHAT)
def test_unimplemented_chat_fields_are_400(http: httpx.Client, field: str, value: Any) -> None:
    body = {"messages": USER, "max_tokens": 1, field: value}
    assert_unsupported(http.post(CHAT, json=body), field)


def test_the_message_names_every_refused_field_and_what_to_send(http: httpx.Client) -> None:
    body = {"messages": USER, "n": 2, "seed": 1, "modalities": ["audio"], "audio": {}}
    message = assert_unsupported(http.post(CHAT, json=body), "modalities")
    assert "'seed'" not in message and "'n'" not in message  # implemented
    assert "'audio'" in message and '["text"]' in message


ACCEPTED_CHAT: dict[str, Any] = {
    # labels
    "user": "u-1",
    "metadata": {"team": "a"},
    "store": False,
    "service_tier": "auto",
    "prompt_cache_key": "k",
    "safety_identifier": "s",
    "stream_options": None,
    # hints this server declines
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "verbosity": "low",
    # values that mean what this server does anyway
    "n": 1,
    "logprobs": False,
    "top_logprobs": 0,
    "tools": [],
    "tool_choice": "none",
    "parallel_tool_calls": True,
    "functions": [],
    "response_format": {"type": "text"},
    "modalities": ["text"],
    "seed": None,  # null is "not set"
    # mlx_lm.server extensions this server implements
    "repetition_penalty": 1.1,
    "repetition_context_size": 8,
}


def test_labels_hints_and_default_values_are_accepted(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 1, **ACCEPTED_CHAT}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("echo", True),
        ("best_of", 2),
        ("suffix", "end"),
        ("messages", USER),  # a chat field on the text route
    ],
)
def test_unimplemented_text_fields_are_400(http: httpx.Client, field: str, value: Any) -> None:
    body = {"prompt": "Once", "max_tokens": 1, field: value}
    assert_unsupported(http.post(TEXT, json=body), field)


def test_text_completion_default_values_are_accepted(http: httpx.Client) -> None:
    body = {
        "prompt": "Once",
        "max_tokens": 1,
        **{"echo": False, "best_of": 1, "suffix": None, "n": 1, "logprobs": None, "user": "u"},
    }
    response = http.post(TEXT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "text_completion"


def test_the_official_client_sees_the_code_and_param(tiny_app: InProcessApp) -> None:
    client = tiny_app.openai(api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=USER, extra_body={"moderation": True})
    assert (info.value.code, info.value.param) == ("unsupported_parameter", "moderation")


@pytest.mark.parametrize("path", [CHAT, TEXT])
def test_an_adapter_the_spec_does_not_declare_is_400(http: httpx.Client, path: str) -> None:
    """mlx_lm.server's `adapters` is implemented within what the spec declares (none here):
    never loaded on request, never silently dropped."""
    body = {"max_tokens": 1, "adapters": "adapters/", "prompt": "Once", "messages": USER}
    body.pop("messages" if path == TEXT else "prompt")
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("adapters", "adapter_not_found")
    assert "model 'tiny' has no adapter 'adapters/' (it declares no adapters)" in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 3}),
        (TEXT, {"prompt": "Once", "logprobs": 2}),
    ],
)
def test_logprobs_are_implemented_not_refused(http: httpx.Client, path: str, body: dict) -> None:
    response = http.post(path, json={**body, "max_tokens": 1})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["logprobs"] is not None


@pytest.mark.parametrize(("path", "body"), [(CHAT, {"messages": USER}), (TEXT, {"prompt": "Once"})])
def test_seed_is_implemented_not_refused(http: httpx.Client, path: str, body: dict) -> None:
    response = http.post(path, json={**body, "max_tokens": 1, "seed": 42})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", [{"type": "text"}, {"type": "json_object"}, JSON_SCHEMA])
@pytest.mark.parametrize(("path", "body"), [(CHAT, {"messages": USER}), (TEXT, {"prompt": "Once"})])
def test_response_format_is_implemented_not_refused(
    http: httpx.Client, path: str, body: dict, value: dict
) -> None:
    response = http.post(path, json={**body, "max_tokens": 1, "response_format": value})
    assert response.status_code == 200, response.text


def test_a_preset_route_refuses_them_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", tiny_model_dir, name="tiny", endpoints={"short": {}})
    with scripted_app(spec) as app:
        refused = app.http.post("/v1/endpoints/short", json={"messages": USER, "audio": {}})
        accepted = app.http.post("/v1/endpoints/short", json={"messages": USER, "n": 1})
    assert_unsupported(refused, "audio")
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize(
    ("model", "rules"),
    [(ChatCompletionRequest, unsupported.CHAT), (CompletionRequest, unsupported.TEXT)],
)
def test_rules_never_shadow_an_implemented_field(
    model: type[BaseModel], rules: Mapping[str, unsupported.Rule]
) -> None:
    """A rule for a field the model implements would never be consulted."""
    implemented = set(model.model_fields)
    assert not implemented & set(rules)
    assert set(unsupported.METADATA) <= set(rules)  # labels on every route


def test_a_body_of_many_unknown_fields_gets_a_short_message(http: httpx.Client) -> None:
    body = {"messages": USER, **{f"field{i}": i for i in range(1000)}}
    message = assert_unsupported(http.post(CHAT, json=body), "field0")
    assert "'field7'" in message and "'field8'" not in message
    assert message.endswith("and 992 more unsupported parameters")
