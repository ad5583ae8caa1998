"""The shipped demo (configs/demo.yaml): a real SmolLM2 served by a real `mlxdeploy up`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.servers import RunningServer, start_server

pytestmark = pytest.mark.process  # every test here drives a real server process

DEMO_SPEC = Path(__file__).parent.parent / "configs" / "demo.yaml"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def demo(cache_dir: Path) -> Iterator[RunningServer]:
    with start_server(DEMO_SPEC) as server:
        yield server


@pytest.fixture(scope="module")
def client(demo: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=demo.api_url, api_key="unused", max_retries=0)


def test_demo_answers_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION)  # type: ignore[arg-type]
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"


def test_demo_stream_keeps_leading_spaces(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "List three colors, separated by spaces."}]
    kwargs = dict(model="smollm2-135m-instruct", messages=messages, max_tokens=40, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kwargs, stream=True)  # type: ignore[call-overload]
        if c.choices
    ]
    assert "".join(pieces) == whole
    assert any(p.startswith(" ") for p in pieces), "byte-level BPE pieces start with spaces"


def test_demo_role_mapping_request(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=8,
        extra_body={"role_mapping": {"user": "Question: ", "assistant": "Answer:"}},
    )
    assert reply.usage is not None and reply.usage.completion_tokens <= 8
