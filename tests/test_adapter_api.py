"""Adapters over HTTP, in-process on the real engine: each adapter a model id of its own,
mlx_lm.server's `adapters` field within what the spec declares (anything else a 400 in the
API's error shape), requests for the base model and its adapters answered in one batch, and
prompts cached apart per adapter."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mlx_lm.utils import load

from mlxdeploy.engine.adapters import Selection
from tests.adapters import ATTENTION, MIXED_KEYS, louder_copy, make_adapter
from tests.conftest import real_app
from tests.inprocess import InProcessApp

PROMPT = "Once upon a time, in a lighthouse by the sea,"


@pytest.fixture(scope="module")
def root(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory and two adapters of it, side by side, as a team's repo holds them."""
    root = tmp_path_factory.mktemp("adapter-app")
    model_dir = louder_copy(tiny_model_dir, root / "base")
    model = load(str(model_dir))[0]
    make_adapter(root / "adapters" / "support", model, keys=ATTENTION, rank=4, seed=1)
    make_adapter(root / "adapters" / "sql", model, keys=MIXED_KEYS, rank=8, kind="dora", seed=2)
    return root


def write_spec(root: Path, name: str, adapters: list[dict[str, Any]]) -> Path:
    spec = {
        "models": [
            {"id": "base", "model": "base", "adapters": adapters},
            {"id": "plain", "model": "base"},
        ],
        "defaults": {"max_tokens": 12, "temperature": 0.0},
        "endpoints": {"ticket": {"model": "support", "system_prompt": "You answer tickets."}},
    }
    path = root / name
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


ADAPTERS = [
    {"id": "support", "path": "adapters/support", "description": "Support answers"},
    {"id": "sql", "path": "adapters/sql/"},
]


@pytest.fixture(scope="module")
def app(root: Path, cache_dir: Path) -> Iterator[InProcessApp]:
    with real_app(write_spec(root, "batched.yaml", ADAPTERS)) as app:
        yield app


@pytest.fixture(scope="module")
def http(app: InProcessApp) -> httpx.Client:
    return app.http


def complete(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = http.post("/v1/completions", json={"prompt": PROMPT, **fields})
    assert response.status_code == 200, response.text
    return dict(response.json())


def text(http: httpx.Client, **fields: Any) -> str:
    return str(complete(http, **fields)["choices"][0]["text"])


def test_models_lists_each_adapter_with_its_model(http: httpx.Client) -> None:
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert list(cards) == ["base", "plain", "support", "sql", "ticket"]
    assert (cards["support"]["parent"], cards["support"]["description"]) == (
        "base",
        "Support answers",
    )
    assert cards["ticket"]["parent"] == "support"


def test_each_adapter_answers_as_itself_by_id_or_by_the_adapters_field(
    http: httpx.Client, root: Path
) -> None:
    answers = {name: text(http, model=name) for name in ("base", "support", "sql")}
    assert len(set(answers.values())) == 3, answers  # each adapter changes the answer
    assert text(http, model="plain") == answers["base"]  # the same weights, another engine
    by_field = complete(http, model="base", adapters="support")
    assert (by_field["model"], by_field["choices"][0]["text"]) == ("support", answers["support"])
    assert text(http, adapters="sql") == answers["sql"]  # no model: the first model's
    assert text(http, model="base", adapters="adapters/sql") == answers["sql"]  # as written
    assert (
        text(http, model="base", adapters=str(root / "adapters" / "support"))
        == (answers["support"])
    )
    assert text(http, model="sql", adapters="sql") == answers["sql"]


def test_requests_for_the_model_and_its_adapters_share_batches(
    app: InProcessApp, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each answer is the answer it gets alone; some forward pass held rows of all three."""
    alone = {name: text(http, model=name, max_tokens=24) for name in ("base", "support", "sql")}
    seen: list[frozenset[int]] = []
    original = Selection._set

    def recorded(selection: Selection, adapters: Any, shape: Any) -> None:
        original(selection, adapters, shape)
        seen.append(selection.present)

    monkeypatch.setattr(Selection, "_set", recorded)
    names = ["base", "support", "sql"] * 3
    with ThreadPoolExecutor(len(names)) as pool:
        together = list(pool.map(lambda name: text(http, model=name, max_tokens=24), names))
    assert together == [alone[name] for name in names]
    assert frozenset({0, 1, 2}) in seen


def test_a_preset_runs_on_its_adapter(http: httpx.Client) -> None:
    def chat(**fields: Any) -> str:
        response = http.post("/v1/chat/completions", json=fields)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    user = [{"role": "user", "content": "My order is late."}]
    system = [{"role": "system", "content": "You answer tickets."}]
    expected = chat(model="support", messages=system + user)
    assert chat(model="ticket", messages=user) == expected
    assert chat(model="base", messages=system + user) != expected
    assert chat(model="ticket", adapters="support", messages=user) == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "base", "adapters": "legal"},
         "model 'base' has no adapter 'legal' (its adapters: sql, support)"),
        ({"model": "plain", "adapters": "support"},
         "model 'plain' has no adapter 'support' (it declares no adapters)"),
        ({"model": "support", "adapters": "sql"},
         "'support' runs adapter 'support'; send its model's id to choose another"),
        ({"model": "base", "adapters": "../adapters/support"}, "has no adapter"),
    ],
)  # fmt: skip
def test_adapters_the_spec_does_not_declare_are_400(
    app: InProcessApp, fields: dict[str, Any], message: str
) -> None:
    client = app.openai(api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            prompt=PROMPT, model=fields["model"], extra_body={"adapters": fields["adapters"]}
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("adapters", "adapter_not_found")
    assert message in error["message"]


def test_the_messages_api_has_no_adapters_field(http: httpx.Client) -> None:
    body = {"model": "base", "max_tokens": 4, "adapters": "support",
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert "adapters" in response.json()["error"]["message"]


def test_prompts_are_cached_apart_per_adapter(http: httpx.Client) -> None:
    prompt = "A long shared start about lighthouses and keepers and ships. " * 3

    def cached(model: str) -> int:
        usage = complete(http, model=model, prompt=prompt, max_tokens=2)["usage"]
        return int(usage["prompt_tokens_details"]["cached_tokens"])

    cached("support")
    assert cached("sql") == 0 and cached("base") == 0
    assert cached("base") > 0 and cached("support") > 0  # each finds its own


def test_a_fused_adapter_is_served_by_its_model_and_its_own_id(
    root: Path, http: httpx.Client, cache_dir: Path
) -> None:
    plain = text(http, model="base")
    fused_spec = write_spec(root, "fused.yaml", [{**ADAPTERS[0], "fuse": True}])
    with real_app(fused_spec) as app:
        by_base, by_id = text(app.http, model="base"), text(app.http, model="support")
        assert text(app.http, model="base", adapters="support") == by_base
        assert text(app.http, model="plain") == plain
    assert by_base == by_id != plain


def test_the_warm_up_runs_a_row_of_an_adapter_beside_the_models(
    root: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[frozenset[int]] = []
    original = Selection._set

    def recorded(selection: Selection, adapters: Any, shape: Any) -> None:
        original(selection, adapters, shape)
        seen.append(selection.present)

    monkeypatch.setattr(Selection, "_set", recorded)
    monkeypatch.setenv("MLXDEPLOY_ENGINE__WARMUP", "true")
    spec = write_spec(root, "warm.yaml", ADAPTERS)
    with caplog.at_level(logging.INFO, logger="mlxdeploy.engine"), real_app(spec):
        lines = [r.getMessage() for r in caplog.records if r.name == "mlxdeploy.engine"]
    assert any(line.startswith("model base warmed up in") for line in lines), lines
    assert not [line for line in lines if "warm-up" in line and "failed" in line]
    assert any({0, 1} <= present for present in seen)  # a step mixed the model and an adapter


def test_the_example_spec_serves_the_demo_model_with_its_adapters(
    demo_dir: Path, cache_dir: Path
) -> None:
    spec = Path(__file__).parent.parent / "configs" / "adapters.yaml"
    with real_app(spec) as app:
        cards = [card["id"] for card in app.http.get("/v1/models").json()["data"]]
        assert cards == ["smollm", "support", "sql", "ticket"]
        answers = {name: text(app.http, model=name, max_tokens=16) for name in cards[:3]}
    assert len(set(answers.values())) == 3, answers
