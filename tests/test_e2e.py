"""End to end: a real `mlxdeploy up` process driven by the official openai and anthropic
clients."""

from __future__ import annotations

import openai
import pytest

from tests.servers import RunningServer

pytestmark = pytest.mark.process  # every test here drives a real server process

MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
# A format that ends after a few tokens, so that the answer completes.
VERDICT = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(tiny_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.api_url, api_key="unused", max_retries=0)


def test_non_streaming_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert reply.object == "chat.completion"
    assert reply.model == "tiny"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_streaming_joins_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_models_lists_the_deployment(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_bad_request_raises_bad_request_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            temperature=-1,  # type: ignore[arg-type]
        )
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert body["param"] == "temperature"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)  # type: ignore[arg-type]


def test_responses_stream_through_a_real_server(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="tiny",
        input="Tell me a story about a lighthouse.",
        text={"format": {"type": "json_schema", "name": "verdict", "schema": VERDICT}},
        temperature=0.0,
        max_output_tokens=48,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_messages_stream_through_a_real_server(tiny_server: RunningServer) -> None:
    import anthropic

    claude = anthropic.Anthropic(base_url=tiny_server.base_url, api_key="unused", max_retries=0)
    with claude.messages.stream(
        model="tiny", messages=MESSAGES, max_tokens=12, extra_body={"temperature": 0.0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = claude.messages.create(
        model="tiny", messages=MESSAGES, max_tokens=12, extra_body={"temperature": 0.0}
    )
    assert final.content[0].text == text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
