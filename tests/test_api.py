"""The HTTP contract of the app (real inference on the tiny model): error shapes, health,
models, SSE framing."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.inprocess import InProcessApp
from tests.scrape import scrape

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """Every error is an OpenAI error body with the right status; never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_health_is_ok(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "running": 0,
        "models": [{"id": "tiny", "status": "ok", "running": 0}],
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": "10"}, "max_tokens"),
        ({"messages": USER, "max_tokens": 10**30}, "max_tokens"),
        ({"messages": USER, "temperature": -0.5}, "temperature"),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "top_p": 1.5}, "top_p"),
        ({"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
        ({"messages": USER, "repetition_context_size": 0}, "repetition_context_size"),
        ({"messages": USER, "stop": 5}, "stop"),
        ({"messages": USER, "stop": [""]}, "stop"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "stream_options": {"include_usage": "no"}}, None),
        ({"messages": USER, "role_mapping": {"bogus": "x"}}, None),
    ],
)
def test_bad_fields_are_400_with_the_param(
    http: httpx.Client, body: dict, param: str | None
) -> None:
    error = assert_error(http.post(CHAT, json=body), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"[1, 2]", b"null", b"\xff\xfe", b'{"messages": [}']
)
def test_invalid_json_is_400(http: httpx.Client, raw: bytes) -> None:
    assert_error(http.post(CHAT, content=raw, headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize(
    "model", ["/etc/passwd", "http://127.0.0.1:9/weights.gguf", "mistralai/Mistral-7B-v0.1"]
)
def test_a_request_cannot_load_a_model_the_spec_does_not_declare(
    http: httpx.Client, model: str
) -> None:
    error = assert_error(http.post(CHAT, json={"model": model, "messages": USER}), 404, "model")
    assert error["code"] == "model_not_found"
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny"]


def test_unknown_model_is_404(http: httpx.Client) -> None:
    error = assert_error(http.post(CHAT, json={"model": "nope", "messages": USER}), 404, "model")
    assert error["code"] == "model_not_found"
    assert_error(http.get("/v1/models/nope"), 404)


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)


def test_stop_word_ends_with_stop(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 30, "temperature": 0}
    text = http.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    if len(text) < 4:
        pytest.skip("the random model produced too little text to pick a stop word from")
    word = text[2:4]
    reply = http.post(CHAT, json={**body, "stop": word}).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["choices"][0]["message"]["content"] == text[: text.index(word)]


def test_max_tokens_ends_with_length(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 3, "temperature": 0, "stop": []}
    reply = http.post(CHAT, json=body).json()
    if reply["choices"][0]["finish_reason"] == "length":
        assert reply["usage"]["completion_tokens"] == 3


def test_sse_framing(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 5, "stream": True, "temperature": 0}
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1] if line.startswith("data: ")]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_role_mapping_request_field_is_used(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 1, "temperature": 0}
    templated = http.post(CHAT, json=body).json()["usage"]["prompt_tokens"]
    mapped = http.post(
        CHAT, json={**body, "role_mapping": {"user": "Q: ", "assistant": "A:"}}
    ).json()["usage"]["prompt_tokens"]
    assert mapped != templated


def test_disconnect_frees_the_slot(http: httpx.Client) -> None:
    # Under the default limits.max_tokens, and far more than the stream lives here.
    body = {"messages": USER, "max_tokens": 4000, "stream": True, "temperature": 0, "stop": []}
    received = 0
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                assert '"finish_reason":null' in line.replace(" ", "")
                received += 1
            if received >= 5:
                assert http.get("/health").json()["running"] == 1
                assert scrape(http).value("mlxdeploy_batch_size", model="tiny") == 1
                break
    deadline = time.monotonic() + 10
    while http.get("/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/health").json()["running"] == 0
    assert scrape(http).value("mlxdeploy_batch_size", model="tiny") == 0
