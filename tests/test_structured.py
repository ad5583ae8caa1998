"""Structured outputs (`response_format`) through real inference on the tiny random model.

The tiny model's raw output is noise: every valid JSON document it produces comes from the
constraint, which makes these strong tests of it. A complete constrained answer parses and
validates against its schema, whole or streamed, alone or in a batch of mixed requests; an
answer that max_tokens cuts is a prefix with finish_reason "length"; a schema the grammar
compiler refuses is a 400 naming response_format."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import mlx.core as mx
import pytest

from mlxdeploy.engine.api import Constraint, PromptRejected, SamplingParams
from mlxdeploy.engine.constraints import Grammars, Guide
from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MAX_TOKENS = 400
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS}

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ORDER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999},
        "customer": PERSON,
        "items": {
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                    "price": {
                        "type": "number",
                        "minimum": 0.5,
                        "maximum": 99.5,
                        "multipleOf": 0.25,
                    },
                },
                "required": ["sku", "price"],
                "additionalProperties": False,
            },
        },
        "gift": {"type": "boolean"},
    },
    "required": ["id", "customer", "items", "gift"],
    "additionalProperties": False,
}
TAGS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tags": {
            "type": "array",
            "items": {"enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 4,
        },
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "level": {"type": "integer", "minimum": 3, "maximum": 7},
    },
    "required": ["tags", "score", "level"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "order": ORDER, "tags": TAGS}


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def schema_format(name: str, schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": strict},
    }


def chat(http: httpx.Client, content: str = "Describe a user", **fields: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": content}], **GREEDY, **fields}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return {"text": choice["message"]["content"], "finish": choice["finish_reason"]}


def text(http: httpx.Client, content: str = "Once upon a time", **fields: Any) -> dict[str, Any]:
    response = http.post(TEXT, json={"prompt": content, **GREEDY, **fields})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return {"text": choice["text"], "finish": choice["finish_reason"]}


def valid(answer: dict[str, Any], schema: dict[str, Any]) -> Any:
    assert answer["finish"] == "stop", answer
    document = json.loads(answer["text"])
    jsonschema.validate(document, schema)
    return document


ROUTES = pytest.mark.parametrize("complete", [chat, text])


@ROUTES
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_answers_validate(http: httpx.Client, complete: Any, name: str) -> None:
    schema = SCHEMAS[name]
    valid(complete(http, response_format=schema_format(name, schema)), schema)


def streamed(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    parts, finish = [], None
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[len("data: ") :])["choices"][0]
            parts.append(choice["delta"].get("content") if path == CHAT else choice["text"])
            finish = choice["finish_reason"] or finish
    return {"text": "".join(p for p in parts if p), "finish": finish}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_streamed_deltas_join_into_the_whole_answer(http: httpx.Client, name: str) -> None:
    schema, fmt = SCHEMAS[name], schema_format(name, SCHEMAS[name])
    chat_body = {"messages": [{"role": "user", "content": "Describe a user"}], **GREEDY}
    for path, body, whole in (
        (CHAT, chat_body, chat(http, response_format=fmt)),
        (TEXT, {"prompt": "Once upon a time", **GREEDY}, text(http, response_format=fmt)),
    ):
        answer = streamed(http, path, {**body, "response_format": fmt})
        assert valid(answer, schema) == valid(whole, schema)
        assert answer["text"] == whole["text"]


def test_sampled_answers_validate_too(http: httpx.Client) -> None:
    for seed in range(4):
        fmt = schema_format("p", PERSON)
        valid(chat(http, temperature=1.0, seed=seed, response_format=fmt), PERSON)


def test_json_object_gives_a_json_object(http: httpx.Client) -> None:
    answer = text(http, response_format={"type": "json_object"})
    assert isinstance(valid(answer, {"type": "object"}), dict)
    # The same prompt without the constraint is not JSON: the object comes from the constraint.
    with pytest.raises(ValueError):
        json.loads(text(http)["text"])


def test_a_schema_without_a_schema_is_any_json_object(http: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "anything"}}
    assert isinstance(valid(text(http, response_format=fmt), {"type": "object"}), dict)


def test_text_format_is_free_text(http: httpx.Client) -> None:
    assert chat(http, response_format={"type": "text"}, max_tokens=16) == chat(http, max_tokens=16)


@ROUTES
def test_max_tokens_cuts_the_document_with_length(http: httpx.Client, complete: Any) -> None:
    answer = complete(http, max_tokens=5, response_format=schema_format("order", ORDER))
    assert answer["finish"] == "length"
    assert answer["text"].startswith('{"id":')  # a prefix of a valid document
    with pytest.raises(ValueError):
        json.loads(answer["text"])


def test_mixed_concurrent_requests(http: httpx.Client) -> None:
    """16 at once: constrained requests with different schemas on both routes, and free ones.
    Each constrained answer validates; each free greedy answer equals what it gives alone."""
    free = {"max_tokens": 24}
    prompts = [f"Tell me about the number {i}" for i in range(6)]
    alone = [text(http, p, **free)["text"] for p in prompts]
    calls: list[Any] = []
    for i, name in enumerate(sorted(SCHEMAS) * 3 + ["person"]):
        route = chat if i % 2 else text
        calls.append((name, route, {"response_format": schema_format(name, SCHEMAS[name])}))
    calls += [(None, text, {"content": p, **free}) for p in prompts]
    assert len(calls) == 16
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda c: c[1](http, **c[2]), calls))
    for (name, _, _), answer in zip(calls[:10], answers[:10], strict=True):
        valid(answer, SCHEMAS[name])
    assert [a["text"] for a in answers[10:]] == alone


BAD_SCHEMAS = [{"type": "nope"}, {"type": "integer", "minimum": "x"}, {"minimum": "x"}]


@pytest.mark.parametrize("schema", BAD_SCHEMAS)
def test_an_invalid_schema_is_a_400(http: httpx.Client, schema: dict[str, Any]) -> None:
    body = {"prompt": "x", "max_tokens": 1, "response_format": schema_format("bad", schema)}
    response = http.post(TEXT, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "invalid JSON schema" in error["message"]


JS = "response_format.json_schema"
BAD_SHAPES: list[tuple[Any, str]] = [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format"),
    ({"type": "json_object", "json_schema": {"name": "x"}}, "response_format"),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, JS + ".name"),
    (schema_format("has space", {}), JS + ".name"),
    (schema_format("x" * 65, {}), JS + ".name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, JS + ".schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}, JS + ".strict"),
    ({"type": "json_schema", "json_schema": {"name": "x", "extra": 1}}, JS + ".extra"),
    ({"type": "json_object", "schema": {}}, "response_format.schema"),
    ("json_object", "response_format"),
]


@pytest.mark.parametrize(("value", "param"), BAD_SHAPES)
def test_bad_shapes_are_400_naming_the_field(http: httpx.Client, value: Any, param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    response = http.post(CHAT, json={**body, "response_format": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_openai_client(tiny_app: InProcessApp) -> None:
    client = tiny_app.openai()
    completion = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Describe a user"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        response_format=schema_format("person", PERSON),
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


VOCAB = 49152


@pytest.fixture(scope="module")
def grammars(tiny_model_dir: Path) -> Grammars:
    from mlx_lm.utils import load_tokenizer

    return Grammars(load_tokenizer(tiny_model_dir), VOCAB)  # as the engine loads it


def guide_of(grammars: Grammars, schema: str) -> Guide:
    params = SamplingParams(8, 0.0, 1.0, 1.0, 20, (), constraint=Constraint(schema))
    guide = grammars.guide(params, None)
    assert guide is not None
    return guide


def allowed(logits: mx.array) -> list[int]:
    values: list[float] = logits[0].tolist()  # type: ignore[assignment]
    return [i for i, v in enumerate(values) if v != float("-inf")]


def test_the_guide_masks_the_first_token_and_follows_the_sampled_ones(grammars: Grammars) -> None:
    guide = guide_of(grammars, '{"enum": ["yes"]}')
    tokenizer = grammars._tokenizer
    logits = mx.zeros((1, VOCAB + 64))  # wider than the vocabulary: the padding is masked
    prompt = mx.array([5, 6, 7])
    first = allowed(guide(prompt, logits))
    assert first and all(
        tokenizer.decode([t]) and '"yes"'.startswith(tokenizer.decode([t])) for t in first
    )
    history = prompt
    for token in tokenizer.encode('"yes"'):
        history = mx.concatenate([history, mx.array([token])])
        mask = allowed(guide(history, logits))
    assert mask == [tokenizer.eos_token_id]  # the document is complete: only the end is left
    assert guide.error is None


def test_a_refused_token_ends_the_answer_and_is_reported(grammars: Grammars) -> None:
    guide = guide_of(grammars, '{"type": "integer"}')
    logits = mx.zeros((1, VOCAB))
    guide(mx.array([1]), logits)
    letter = grammars._tokenizer.encode("a")[0]
    assert allowed(guide(mx.array([1, letter]), logits)) == [grammars._tokenizer.eos_token_id]
    assert guide.error


def test_the_engine_rejects_a_schema_it_cannot_compile(grammars: Grammars) -> None:
    for schema in ('{"type": "nope"}', "not json"):
        with pytest.raises(PromptRejected, match="response_format"):
            guide_of(grammars, schema)


def test_the_llguidance_tokenizer_is_built_once_per_model(grammars: Grammars) -> None:
    guide_of(grammars, '{"type": "object"}')
    built = grammars._llt()
    guide_of(grammars, '{"type": "integer"}')
    assert grammars._llt() is built


# An endpoint preset's response_format: requests that set none get it; a request's own
# (type text included: free text) wins.
PRESET_PATH = "/v1/people"


@pytest.fixture(scope="module")
def preset_http(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = write_spec(
        tmp_path_factory.mktemp("preset") / "spec.yaml",
        tiny_model_dir,
        name="tiny",
        endpoints={
            "people": {"path": PRESET_PATH, "response_format": schema_format("person", PERSON)}
        },
    )
    with real_app(spec) as app:
        yield app.http


def test_a_preset_answers_in_its_schema_at_its_path_and_as_a_model(preset_http: Any) -> None:
    http = preset_http
    messages = [{"role": "user", "content": "Describe a user"}]
    response = http.post(PRESET_PATH, json={"messages": messages, **GREEDY})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    valid({"text": choice["message"]["content"], "finish": choice["finish_reason"]}, PERSON)
    valid(chat(http, model="people"), PERSON)
    valid(text(http, model="people"), PERSON)


@ROUTES
def test_a_requests_own_response_format_wins_over_the_presets(
    preset_http: Any, complete: Any
) -> None:
    http = preset_http
    own = valid(complete(http, model="people", response_format=schema_format("tags", TAGS)), TAGS)
    assert set(own) == {"tags", "score", "level"}
    free = complete(http, model="people", response_format={"type": "text"})
    assert free == complete(http, model="tiny")  # the model's own free text, unconstrained
    assert free["text"] != complete(http, model="people")["text"]


def test_one_mask_covers_a_batch_of_guided_and_free_rows(grammars: Grammars) -> None:
    """The decode step masks all guided rows at once: a free row is untouched, a guided row
    gets what its guide alone allows, a failed guide allows only the end."""
    from mlxdeploy.engine.constraints import mask_guided_rows

    alone, guided, failed = (guide_of(grammars, '{"enum": ["yes"]}') for _ in range(3))
    for guide in (alone, guided, failed):
        guide.advance(-1)  # the first call: nothing sampled yet
    failed.error = "refused"
    logits = mx.zeros((3, VOCAB + 64))
    masked = mask_guided_rows(logits, [(1, guided), (2, failed)])
    assert allowed(masked[0:1]) == list(range(VOCAB + 64))
    assert allowed(masked[1:2]) == allowed(mask_guided_rows(logits[:1], [(0, alone)]))
    assert 0 < len(allowed(masked[1:2])) < VOCAB
    assert allowed(masked[2:3]) == [grammars._tokenizer.eos_token_id]
