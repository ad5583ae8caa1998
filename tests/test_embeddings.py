"""Embeddings (task: embed): vectors from the real engine on a tiny random decoder, checked
against a direct forward pass of mlx-lm's own model code; the HTTP contract of
POST /v1/embeddings; an embedding model's and a chat model's routes refusing each other."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load

from mlxdeploy.spec import SpecError, load_spec
from mlxdeploy.spec.settings import spec_json_schema
from tests.conftest import real_app, scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine, scripted_vector, unit
from tests.servers import start_server

pytestmark = pytest.mark.usefixtures("clean_env")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "Embeddings are vectors; similar texts have similar vectors, and this one is longer.",
]
HIDDEN = 64  # tests/gguf_helpers.TINY_LLAMA's hidden_size
CONTEXT = 2048  # tests/conftest.TINY_CONFIG's max_position_embeddings


def embed_spec(path: Path, model: Path, **engine: Any) -> Path:
    """An embedding model and a chat model of the same weights."""
    spec = {
        "models": [
            {"id": "embedder", "model": str(model), "task": "embed"},
            {"id": "chat", "model": str(model)},
        ],
        "engine": engine,
    }
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def app(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    spec = embed_spec(tmp_path_factory.mktemp("embed") / "embed.yaml", tiny_model_dir)
    with real_app(spec) as served:
        yield served


@pytest.fixture(scope="module")
def direct(tiny_model_dir: Path) -> Any:
    """mlx-lm's model and tokenizer, loaded by mlx-lm itself."""
    return load(str(tiny_model_dir))


def forward(direct: Any, tokens: Sequence[int]) -> np.ndarray:
    """The model card's recipe, unbatched: the transformer's last hidden state, L2-normalised."""
    model, _ = direct
    hidden = model.model(mx.array([list(tokens)]))[0, -1].astype(mx.float32)
    vector = np.asarray(hidden, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def vectors(response: Any) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return [np.asarray(item["embedding"]) for item in data]


def post(app: InProcessApp, **body: Any) -> Any:
    return app.http.post("/v1/embeddings", json={"model": "embedder", **body})


# -- vectors -------------------------------------------------------------------------------


def test_a_text_matches_a_direct_forward_pass(app: InProcessApp, direct: Any) -> None:
    response = post(app, input=TEXTS[0])
    tokens = direct[1].encode(TEXTS[0])
    [vector] = vectors(response)
    assert vector.shape == (HIDDEN,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(vector, forward(direct, tokens), atol=2e-6)
    body = response.json()
    assert body["object"] == "list" and body["model"] == "embedder"
    assert body["data"][0]["object"] == "embedding"
    assert body["usage"] == {"prompt_tokens": len(tokens), "total_tokens": len(tokens)}


def test_a_batch_of_mixed_lengths_matches_each_input_alone(app: InProcessApp, direct: Any) -> None:
    tokens = [direct[1].encode(text) for text in TEXTS]
    assert len({len(t) for t in tokens}) == len(TEXTS)  # padding is at stake
    batched = vectors(post(app, input=TEXTS))
    for vector, ids in zip(batched, tokens, strict=True):
        np.testing.assert_allclose(vector, forward(direct, ids), atol=2e-6)
    alone = [vectors(post(app, input=text))[0] for text in TEXTS]
    np.testing.assert_allclose(np.stack(batched), np.stack(alone), atol=2e-6)
    assert not np.allclose(batched[0], batched[2], atol=1e-3)  # the inputs do differ


def test_concurrent_requests_each_get_their_own_vectors(app: InProcessApp, direct: Any) -> None:
    texts = [f"{text} ({n})" for n in range(3) for text in TEXTS]
    with ThreadPoolExecutor(len(texts)) as pool:
        replies = list(pool.map(lambda text: post(app, input=[text, "Hi"]), texts))
    for text, reply in zip(texts, replies, strict=True):
        first, second = vectors(reply)
        np.testing.assert_allclose(first, forward(direct, direct[1].encode(text)), atol=2e-6)
        np.testing.assert_allclose(second, forward(direct, direct[1].encode("Hi")), atol=2e-6)


def test_token_ids_are_read_as_given(app: InProcessApp, direct: Any) -> None:
    tokens = [direct[1].encode(text) for text in TEXTS]
    from_ids = vectors(post(app, input=tokens))
    np.testing.assert_allclose(np.stack(from_ids), np.stack(vectors(post(app, input=TEXTS))))
    [one] = vectors(post(app, input=tokens[2]))  # one input as a flat list of ids
    np.testing.assert_allclose(one, forward(direct, tokens[2]), atol=2e-6)
    assert post(app, input=tokens[2]).json()["usage"]["prompt_tokens"] == len(tokens[2])


def test_dimensions_truncate_and_normalise_again(app: InProcessApp, direct: Any) -> None:
    full = forward(direct, direct[1].encode(TEXTS[0]))
    [short] = vectors(post(app, input=TEXTS[0], dimensions=16))
    assert short.shape == (16,)
    np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=2e-6)
    [whole] = vectors(post(app, input=TEXTS[0], dimensions=HIDDEN))
    np.testing.assert_allclose(whole, full, atol=2e-6)


def test_base64_is_little_endian_float32_of_the_same_vector(app: InProcessApp) -> None:
    floats = vectors(post(app, input=TEXTS[:2]))
    encoded = post(app, input=TEXTS[:2], encoding_format="base64").json()["data"]
    for item, vector in zip(encoded, floats, strict=True):
        raw = base64.b64decode(item["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert list(decoded) == vector.tolist()  # exactly: both are the float32 values


def test_the_openai_client_embeds(app: InProcessApp, direct: Any) -> None:
    client = app.openai(max_retries=0)
    # The client asks for base64 unless told otherwise, and decodes it itself.
    reply = client.embeddings.create(model="embedder", input=TEXTS)
    assert [item.index for item in reply.data] == [0, 1, 2]
    for item, text in zip(reply.data, TEXTS, strict=True):
        expected = forward(direct, direct[1].encode(text))
        np.testing.assert_allclose(item.embedding, expected, atol=2e-6)
    floats = client.embeddings.create(
        model="embedder", input="Hi", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8
    assert reply.usage.prompt_tokens == sum(len(direct[1].encode(t)) for t in TEXTS)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "must not be empty"),
        ({"input": ["a", ""]}, "input", "input[1] is an empty string"),
        ({"input": ["a", 1]}, "input", "not a mix"),
        ({"input": [[1, 2], []]}, "input", "input[1] is an empty list"),
        ({"input": [1, -2]}, "input", "integers >= 0"),
        ({"input": [1, True]}, "input", "integers >= 0"),
        ({"input": {"text": "a"}}, "input", "a list of token-id lists"),
        ({"input": ["a"] * 2049}, "input", "at most 2048"),
        ({"input": [[1, 2], [49152]]}, "input[1]", "not in the model's vocabulary"),
        ({"input": [5] * (CONTEXT + 1)}, "input", "maximum context length is 2048"),
        ({"input": "a", "dimensions": HIDDEN + 1}, "dimensions", "have 64"),
        ({"input": "a", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"input": "a", "temperature": 0.5}, "temperature", "unsupported parameter"),
        ({}, "input", "Field required"),
    ],
)
def test_bad_requests_are_a_400_naming_the_field(
    app: InProcessApp, body: dict[str, Any], param: str, says: str
) -> None:
    response = app.http.post("/v1/embeddings", json={"model": "embedder", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]


def test_an_input_as_long_as_the_context_is_read(app: InProcessApp) -> None:
    response = post(app, input=[5] * CONTEXT)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == CONTEXT


def test_generation_routes_refuse_an_embedding_model(app: InProcessApp) -> None:
    chat = {"model": "embedder", "messages": [{"role": "user", "content": "hi"}]}
    for path, body in (
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"model": "embedder", "prompt": "hi"}),
        ("/v1/responses", {"model": "embedder", "input": "hi"}),
    ):
        response = app.http.post(path, json=body)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == "model" and error["code"] == "model_not_supported"
        assert "'embedder' is an embedding model" in error["message"]
        assert "POST /v1/embeddings" in error["message"]
    anthropic = app.http.post("/v1/messages", json={**chat, "max_tokens": 8})
    assert anthropic.status_code == 400
    assert anthropic.json()["type"] == "error"  # Anthropic's own shape on its route
    assert anthropic.json()["error"]["type"] == "invalid_request_error"
    assert "is an embedding model" in anthropic.json()["error"]["message"]


def test_a_chat_model_has_no_embeddings(app: InProcessApp) -> None:
    response = app.http.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model"
    assert "'chat' generates text and has no embeddings" in error["message"]
    assert "task: embed" in error["message"]


def test_without_model_each_route_takes_the_first_model_of_its_task(app: InProcessApp) -> None:
    embedded = app.http.post("/v1/embeddings", json={"input": "hi"})
    assert embedded.status_code == 200 and embedded.json()["model"] == "embedder"
    chat = app.http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200 and chat.json()["model"] == "chat"


def test_models_lists_the_embedding_model(app: InProcessApp) -> None:
    ids = [card["id"] for card in app.http.get("/v1/models").json()["data"]]
    assert ids == ["embedder", "chat"]
    assert app.http.get("/v1/models/embedder").status_code == 200


def test_metrics_count_the_route_and_the_tokens_read(app: InProcessApp) -> None:
    post(app, input="counted")
    text = app.http.get("/metrics").text
    assert 'mlxdeploy_http_requests_total{route="/v1/embeddings",status="200"}' in text
    tokens = [line for line in text.splitlines() if line.startswith("mlxdeploy_prompt_tokens")]
    embedder = next(line for line in tokens if 'model="embedder"' in line)
    assert float(embedder.rsplit(" ", 1)[1]) > 0


# -- a real server process -------------------------------------------------------------------


@pytest.mark.process
def test_the_openai_client_against_mlxdeploy_up(
    tiny_model_dir: Path, tmp_path: Path, direct: Any
) -> None:
    from openai import OpenAI

    spec = embed_spec(tmp_path / "embed.yaml", tiny_model_dir)
    with start_server(spec) as server:
        client = OpenAI(base_url=server.api_url, api_key="none", max_retries=0)
        reply = client.embeddings.create(model="embedder", input=TEXTS, dimensions=32)
        for item, text in zip(reply.data, TEXTS, strict=True):
            full = forward(direct, direct[1].encode(text))
            np.testing.assert_allclose(item.embedding, full[:32] / np.linalg.norm(full[:32]),
                                       atol=2e-6)  # fmt: skip
        assert reply.model == "embedder" and len(reply.data[0].embedding) == 32
        listed = [model.id for model in client.models.list()]
        assert listed == ["embedder", "chat"]
    assert "POST /v1/embeddings" in server.log()  # the access log


# -- the end-of-text token Qwen3-Embedding pools at -------------------------------------------

# Qwen3-Embedding's tokenizer.json appends <|endoftext|> to every text (a TemplateProcessing
# post-processor, which its model card's code relies on): the vector is the hidden state there.
APPEND_END_OF_TEXT = {
    "type": "TemplateProcessing",
    "single": [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
    ],
    "pair": [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}},
    ],
    "special_tokens": {
        "<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}
    },
}


@pytest.fixture(scope="module")
def end_of_text_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a tokenizer that appends <|endoftext|> (id 0), as Qwen3-Embedding's."""
    out = tmp_path_factory.mktemp("end-of-text")
    for item in tiny_model_dir.iterdir():
        (out / item.name).symlink_to(item)
    (out / "tokenizer.json").unlink()
    tokenizer = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    processors = [tokenizer["post_processor"], APPEND_END_OF_TEXT]
    tokenizer["post_processor"] = {"type": "Sequence", "processors": processors}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return out


def test_a_tokenizer_that_appends_end_of_text_is_pooled_there(
    end_of_text_dir: Path, tmp_path: Path, direct: Any
) -> None:
    spec = embed_spec(tmp_path / "eot.yaml", end_of_text_dir)
    plain = direct[1].encode(TEXTS[0])
    with real_app(spec) as served:
        response = post(served, input=TEXTS[0])
    assert response.json()["usage"]["prompt_tokens"] == len(plain) + 1
    [vector] = vectors(response)
    np.testing.assert_allclose(vector, forward(direct, [*plain, 0]), atol=2e-6)
    assert not np.allclose(vector, forward(direct, plain), atol=1e-3)


# -- guards, on a scripted engine ---------------------------------------------------------------

SCRIPTED = {
    "models": [
        {"id": "embedder", "model": "owner/embedding-model", "task": "embed"},
        {"id": "chat", "model": "owner/chat-model"},
    ]
}


def scripted(
    tmp_path: Path, embedder: ScriptedEngine | None = None, **fields: Any
) -> contextlib.AbstractContextManager[InProcessApp]:
    path = tmp_path / "scripted.yaml"
    path.write_text(json.dumps({**SCRIPTED, **fields}))
    embedder = embedder or ScriptedEngine(model_id="embedder", embedding_size=8)
    return scripted_app(path, embedder, ScriptedEngine(model_id="chat"))


def test_the_engine_gets_token_lists_and_the_request_id(tmp_path: Path) -> None:
    engine = ScriptedEngine(model_id="embedder", embedding_size=8)
    with scripted(tmp_path, engine) as app:
        response = app.http.post(
            "/v1/embeddings",
            json={"model": "embedder", "input": ["ab", "c"], "dimensions": 4},
            headers={"X-Request-ID": "embed-1"},
        )
        ids = app.http.post("/v1/embeddings", json={"input": [[7, 8], [9]]})
    assert response.status_code == 200, response.text
    assert ids.status_code == 200, ids.text
    assert engine.embedded == [[[97, 98], [99]], [[7, 8], [9]]]  # token ids as sent
    assert engine.labels[0] == "embed-1"
    data = response.json()["data"]
    expected = unit(scripted_vector([97, 98], 8)[:4])
    assert data[0]["embedding"] == pytest.approx(expected, rel=1e-6)
    assert response.json()["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_keys_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_TEST_KEYS", "sesame")
    with scripted(tmp_path, auth={"api_keys_env": "EMBED_TEST_KEYS"}) as app:
        body = {"model": "embedder", "input": "hi"}
        refused = app.http.post("/v1/embeddings", json=body)
        allowed = app.http.post(
            "/v1/embeddings", json=body, headers={"Authorization": "Bearer sesame"}
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert allowed.status_code == 200


def test_a_full_model_answers_429_with_retry_after(tmp_path: Path) -> None:
    engine = ScriptedEngine(model_id="embedder", embedding_size=8, delay=2.0)
    engine_settings = {"max_batch_size": 1, "max_queue": 0}
    with scripted(tmp_path, engine, engine=engine_settings) as app:
        body = {"model": "embedder", "input": "hi"}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(app.http.post, "/v1/embeddings", json=body)
            deadline = time.monotonic() + 10
            while not engine.embedded and time.monotonic() < deadline:
                time.sleep(0.01)
            busy = app.http.post("/v1/embeddings", json=body)
            assert first.result().status_code == 200
        after = app.http.post("/v1/embeddings", json=body)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200  # the slot was given back


def test_a_body_over_the_limit_is_a_413(tmp_path: Path) -> None:
    with scripted(tmp_path, limits={"max_body_bytes": 1024}) as app:
        response = app.http.post(
            "/v1/embeddings", json={"model": "embedder", "input": ["word"] * 400}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_slow_model_times_out_with_a_504(tmp_path: Path) -> None:
    engine = ScriptedEngine(model_id="embedder", embedding_size=8, delay=5.0)
    with scripted(tmp_path, engine, limits={"request_timeout_seconds": 0.2}) as app:
        response = app.http.post("/v1/embeddings", json={"model": "embedder", "input": "hi"})
        assert app.http.post("/v1/embeddings", json={"input": "x"}).status_code == 504
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "request_timeout"


def test_user_is_accepted_as_a_label(tmp_path: Path) -> None:
    with scripted(tmp_path) as app:
        response = app.http.post(
            "/v1/embeddings", json={"model": "embedder", "input": "hi", "user": "u-1"}
        )
    assert response.status_code == 200
    assert "user" in response.headers["X-Unused-Fields"]


def test_a_model_still_loading_is_a_503(tmp_path: Path) -> None:
    engine = ScriptedEngine(model_id="embedder", embedding_size=8, state="loading")
    with scripted(tmp_path, engine) as app:
        response = app.http.post("/v1/embeddings", json={"model": "embedder", "input": "hi"})
    assert response.status_code == 503
    assert engine.embedded == []


def test_apis_can_leave_embeddings_out(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "chat.yaml", "owner/model", apis=["chat"])
    with scripted_app(path) as app:
        response = app.http.post("/v1/embeddings", json={"input": "hi"})
    assert response.status_code == 404


# -- the spec ------------------------------------------------------------------------------------


def problems_of(path: Path, text: str) -> list[str]:
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return [str(problem) for problem in info.value.problems]


def test_task_is_a_model_key_and_defaults_to_generate(tmp_path: Path) -> None:
    single = tmp_path / "single.yaml"
    single.write_text("model: owner/embedding-model\ntask: embed\n")
    assert [m.task for m in load_spec(single).catalog.models] == ["embed"]
    several = tmp_path / "several.yaml"
    several.write_text(
        "task: embed\nmodels:\n  - {id: a, model: owner/a}\n"
        "  - {id: b, model: owner/b, task: generate}\n"
    )
    assert [m.task for m in load_spec(several).catalog.models] == ["embed", "generate"]
    plain = write_spec(tmp_path / "plain.yaml", "owner/model")
    assert load_spec(plain).catalog.models[0].task == "generate"
    assert load_spec(plain).spec.apis[-1] == "embeddings"  # served by default


def test_task_takes_generate_or_embed(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path / "s.yaml", "model: owner/m\ntask: rerank\n")
    assert problem.startswith(f"{tmp_path / 's.yaml'}:2:7: task: ")
    assert "'generate' or 'embed'" in problem


def test_an_endpoint_cannot_run_on_an_embedding_model(tmp_path: Path) -> None:
    text = "model: owner/m\nname: vectors\ntask: embed\nendpoints:\n  ask: {}\n"
    [problem] = problems_of(tmp_path / "s.yaml", text)
    assert "endpoints.ask.model: 'vectors' is an embedding model (task: embed)" in problem


def test_an_embedding_model_needs_the_embeddings_api(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path / "s.yaml", "model: owner/m\ntask: embed\napis: [chat]\n")
    assert "apis: 'owner/m' is an embedding model (task: embed): add embeddings" in problem


def test_an_embedding_model_is_not_distributed(tmp_path: Path) -> None:
    text = "model: owner/m\ntask: embed\ndistributed: {ranks: 2}\n"
    [problem] = problems_of(tmp_path / "s.yaml", text)
    assert "distributed: a distributed spec serves a generation model" in problem


def test_the_schema_offers_task_and_the_embeddings_api() -> None:
    schema = spec_json_schema()
    entry = schema["$defs"]["ModelEntry"]["properties"]["task"]
    assert {"enum": ["generate", "embed"], "type": "string"} in entry["anyOf"]
    assert schema["properties"]["task"]["default"] == "generate"
    assert "embeddings" in schema["properties"]["apis"]["items"]["enum"]
    assert "embed_batch_tokens" in schema["$defs"]["EngineSettings"]["properties"]


def test_the_example_spec_serves_an_embedding_model() -> None:
    spec = Path(__file__).parent.parent / "configs" / "embeddings.yaml"
    catalog = load_spec(spec, require_weights=False).catalog
    assert [(m.id, m.task) for m in catalog.models] == [
        ("qwen3-embedding-0.6b", "embed"),
        ("smollm2-135m-instruct", "generate"),
    ]
