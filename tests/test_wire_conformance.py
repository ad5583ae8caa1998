"""Real responses validate against OpenAI's published OpenAPI document (its response schemas,
trimmed into tests/data/openai_responses.schema.json; the file names the commit).

Two readings make the check stricter or exact rather than looser:
- the document is OpenAPI 3.1 but still writes the 3.0 keyword `nullable: true`, which JSON
  Schema ignores; it is read as "or null", as the document means it;
- every object the schemas describe is closed (`additionalProperties: false`), so a field this
  server sends that OpenAI does not define fails too."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.inprocess import InProcessApp

SCHEMAS = Path(__file__).parent / "data" / "openai_responses.schema.json"
USER = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
PROMPT = "Once upon a time, in a lighthouse by the sea,"


def strict(node: Any) -> Any:
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        # `properties` maps field names to schemas: a field may be named `nullable`.
        key: {name: strict(schema) for name, schema in value.items()}
        if key == "properties"
        else strict(value)
        for key, value in node.items()
    }
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def load_document() -> dict[str, Any]:
    document = json.loads(SCHEMAS.read_text())
    return {"components": strict(document["components"])}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {**document, "$ref": f"#/components/schemas/{name}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def assert_valid(document: dict[str, Any], name: str, payload: dict[str, Any]) -> None:
    errors = sorted(validator(document, name).iter_errors(payload), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def text_stream_document(document: dict[str, Any]) -> dict[str, Any]:
    """OpenAI streams text completions as `CreateCompletionResponse` objects whose
    `finish_reason` is null until the last one, which the schema does not write down."""
    relaxed = copy.deepcopy(document)
    choice = relaxed["components"]["schemas"]["CreateCompletionResponse"]["properties"]["choices"]
    finish = choice["items"]["properties"]["finish_reason"]
    choice["items"]["properties"]["finish_reason"] = {"anyOf": [finish, {"type": "null"}]}
    return relaxed


def named_events(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream of named events (the Responses and Messages APIs'), each checked to name its
    `type` on its `event:` line."""
    out = []
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == kind
                out.append(event)
    return out


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def test_the_trimmed_schemas_are_closed_over_their_refs() -> None:
    document = json.loads(SCHEMAS.read_text())
    assert len(document["source"]["commit"]) == 40
    names = set(document["components"]["schemas"])
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(document["components"])}
    assert refs <= names and set(document["roots"]) <= names


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_the_check_can_fail(document: dict[str, Any]) -> None:
    """The rules this test file relies on are in force: a null role, an unknown field."""
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    choice = {"index": 0, "finish_reason": None, "delta": {"content": "a"}}
    good = {**chunk, "choices": [choice]}
    assert_valid(document, "CreateChatCompletionStreamResponse", good)
    checker = validator(document, "CreateChatCompletionStreamResponse")
    assert not checker.is_valid({**chunk, "choices": [{**choice, "delta": {"role": None}}]})
    assert not checker.is_valid({**good, "extra": 1})
    message = {"role": "assistant", "content": "a"}  # `refusal` is required
    whole = {**chunk, "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
    assert not validator(document, "CreateChatCompletionResponse").is_valid(whole)


def test_a_chat_completion(http: httpx.Client, document: dict[str, Any]) -> None:
    body = {"messages": USER, "max_tokens": 8, "temperature": 0}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert_valid(document, "CreateChatCompletionResponse", response.json())


@pytest.mark.parametrize("include_usage", [False, True])
def test_every_chat_chunk(
    http: httpx.Client, document: dict[str, Any], include_usage: bool
) -> None:
    body = {"messages": USER, "max_tokens": 8, "temperature": 0}
    whole = http.post("/v1/chat/completions", json=body).json()
    chunks = stream(
        http, "/v1/chat/completions", {**body, "stream_options": {"include_usage": include_usage}}
    )
    for chunk in chunks:
        assert_valid(document, "CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant" and not any("role" in d for d in deltas[1:])
    text = "".join(d.get("content", "") for d in deltas)
    assert text == whole["choices"][0]["message"]["content"]
    assert (chunks[-1]["usage"] is not None) == include_usage


def test_a_text_completion(http: httpx.Client, document: dict[str, Any]) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert_valid(document, "CreateCompletionResponse", response.json())


@pytest.mark.parametrize("include_usage", [False, True])
def test_every_text_chunk(
    http: httpx.Client, document: dict[str, Any], include_usage: bool
) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    chunks = stream(
        http, "/v1/completions", {**body, "stream_options": {"include_usage": include_usage}}
    )
    relaxed = text_stream_document(document)
    for chunk in chunks:
        assert_valid(relaxed, "CreateCompletionResponse", chunk)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert ("usage" in chunks[-1]) == include_usage


LOGPROBS_CHAT = {"messages": USER, "max_tokens": 8, "temperature": 0, "logprobs": True}


@pytest.mark.parametrize("top", [0, 3])
def test_a_chat_completion_with_logprobs(
    http: httpx.Client, document: dict[str, Any], top: int
) -> None:
    response = http.post("/v1/chat/completions", json={**LOGPROBS_CHAT, "top_logprobs": top})
    assert response.status_code == 200
    payload = response.json()
    assert_valid(document, "CreateChatCompletionResponse", payload)
    assert payload["choices"][0]["logprobs"]["content"]


def test_every_chat_chunk_with_logprobs(http: httpx.Client, document: dict[str, Any]) -> None:
    chunks = stream(http, "/v1/chat/completions", {**LOGPROBS_CHAT, "top_logprobs": 2})
    for chunk in chunks:
        assert_valid(document, "CreateChatCompletionStreamResponse", chunk)
    assert any(c["choices"] and c["choices"][0]["logprobs"] for c in chunks)


@pytest.mark.parametrize("n", [0, 2])
def test_a_text_completion_with_logprobs(
    http: httpx.Client, document: dict[str, Any], n: int
) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": n}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200
    payload = response.json()
    assert_valid(document, "CreateCompletionResponse", payload)
    assert payload["choices"][0]["logprobs"]["tokens"]


def test_every_text_chunk_with_logprobs(http: httpx.Client, document: dict[str, Any]) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    chunks = stream(http, "/v1/completions", body)
    relaxed = text_stream_document(document)
    for chunk in chunks:
        assert_valid(relaxed, "CreateCompletionResponse", chunk)
    assert any(c["choices"] and c["choices"][0]["logprobs"] for c in chunks)


def test_every_object_names_the_build_that_answered(http: httpx.Client) -> None:
    """`system_fingerprint`: the same on the whole answer and every chunk, and it names the
    versions of mlxdeploy, mlx-lm and mlx."""
    import importlib.metadata

    body = {"messages": USER, "max_tokens": 4}
    whole = http.post("/v1/chat/completions", json=body).json()
    chunks = stream(http, "/v1/chat/completions", body)
    text = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).json()
    prints = {whole["system_fingerprint"], text["system_fingerprint"]}
    prints |= {chunk["system_fingerprint"] for chunk in chunks}
    (fingerprint,) = prints
    assert f"mlx{importlib.metadata.version('mlx')}" in fingerprint
    assert f"mlx-lm{importlib.metadata.version('mlx-lm')}" in fingerprint
