"""/v1/completions through the app (real inference) with the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.inprocess import InProcessApp

PROMPT = "Once upon a time, in a lighthouse by the sea,"


@pytest.fixture(scope="module")
def client(tiny_app: InProcessApp) -> openai.OpenAI:
    return tiny_app.openai(api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def test_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 6
    assert reply.usage.prompt_tokens > 5


def test_streamed_text_joins_to_the_whole_text(client: openai.OpenAI) -> None:
    kwargs = dict(model="tiny", prompt=[PROMPT], max_tokens=12, temperature=0)
    whole = client.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    )
    assert all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "model": "other"}, "model"),
    ],
)
def test_bad_text_completion_requests(http: httpx.Client, body: dict, param: str) -> None:
    response = http.post("/v1/completions", json=body)
    assert response.status_code in (400, 404)
    assert response.json()["error"]["param"] == param


def test_a_prompt_longer_than_the_context(http: httpx.Client) -> None:
    body = {"prompt": "word " * 3000, "max_tokens": 1}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
