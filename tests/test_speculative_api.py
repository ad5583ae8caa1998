"""Speculative decoding over HTTP, in-process on the real engine: a spec's `draft_model`
gives the model's own greedy text, mlx_lm.server's `draft_model` and `num_draft_tokens`
work within what the spec declares (anything else a 400 in the API's error shape), the
acceptance rate shows in /metrics, and `validate` refuses a draft of another vocabulary."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlxdeploy.bench.report import acceptance, draft_counts
from mlxdeploy.engine.draft_depth import PROBE
from mlxdeploy.engine.engine import MLXEngine
from mlxdeploy.spec.load import load_spec
from mlxdeploy.spec.problems import SpecError
from tests.adapters import louder_copy
from tests.conftest import TINY_CONFIG, make_tiny_model, real_app

PROMPT = "Once upon a time, in a lighthouse by the sea,"


@pytest.fixture(scope="module")
def root(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speculative-app")
    louder_copy(tiny_model_dir, root / "base")
    return root


def write_spec(root: Path, name: str, draft: str) -> Path:
    spec = {
        "models": [
            # Drafting for itself, every guess stands; a draft this large never pays, so
            # `fast` guesses at a fixed depth (whether it pays or not) and `auto` only probes.
            {
                "id": "fast",
                "model": "base",
                "draft_model": draft,
                "num_draft_tokens": 3,
                "draft_depth": "fixed",
            },
            {"id": "plain", "model": "base"},
            {"id": "auto", "model": "base", "draft_model": draft},
        ],
        "defaults": {"max_tokens": 20, "temperature": 0.0},
    }
    path = root / name
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def http(root: Path, cache_dir: Path) -> Iterator[httpx.Client]:
    with real_app(write_spec(root, "speculative.yaml", "base")) as app:
        yield app.http


def complete(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v1/completions", json={"prompt": PROMPT, **fields})


def text(http: httpx.Client, **fields: Any) -> str:
    response = complete(http, **fields)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def metric(http: httpx.Client, name: str, model: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'mlxdeploy_{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {model}")


def test_an_adaptive_draft_as_large_as_its_model_only_probes(http: httpx.Client) -> None:
    """A draft pass costs what a pass of the model costs: no depth pays, so each request
    guesses one token every PROBE steps at most, and its text is the model's."""
    assert text(http, model="auto") == text(http, model="plain")
    assert 0 < metric(http, "draft_tokens_total", "auto") <= 20 // PROBE
    assert metric(http, "draft_acceptance_rate", "auto") == 1.0


def test_drafted_text_is_the_models_own(http: httpx.Client) -> None:
    plain = text(http, model="plain")
    assert text(http, model="fast") == plain
    assert text(http, model="fast", draft_model="base", num_draft_tokens=2) == plain
    assert text(http, model="fast", num_draft_tokens=0) == plain
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12}
    answers = [
        http.post("/v1/chat/completions", json={**chat, "model": m}) for m in ("fast", "plain")
    ]
    assert answers[0].json()["choices"][0]["message"] == answers[1].json()["choices"][0]["message"]
    assert metric(http, "draft_tokens_total", "fast") > 0
    assert metric(http, "draft_acceptance_rate", "fast") == 1.0  # it drafts for itself
    assert metric(http, "draft_tokens_total", "plain") == 0


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        ("fast", {"draft_model": "other/draft"}, "draft_model"),
        ("fast", {"num_draft_tokens": 4}, "num_draft_tokens"),
        ("plain", {"draft_model": "base"}, "draft_model"),
        ("plain", {"num_draft_tokens": 1}, "num_draft_tokens"),
        ("fast", {"num_draft_tokens": -1}, "num_draft_tokens"),
    ],
)
def test_drafting_beyond_the_spec_is_a_400(
    http: httpx.Client, model: str, fields: dict[str, Any], param: str
) -> None:
    response = complete(http, model=model, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") + error["message"]


def test_no_drafting_asked_of_a_model_without_a_draft_passes(http: httpx.Client) -> None:
    assert text(http, model="plain", num_draft_tokens=0) == text(http, model="plain")


def test_validate_refuses_a_draft_of_another_vocabulary(root: Path) -> None:
    other = root / "other-vocab"
    if not other.exists():
        shutil.copytree(root / "base", other)
        tokenizer = json.loads((other / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        token = next(iter(vocab))
        vocab[token + "-renamed"] = vocab.pop(token)
        (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(SpecError, match="draft model's vocabulary"):
        load_spec(write_spec(root, "other.yaml", "other-vocab"))
    load_spec(write_spec(root, "same.yaml", "base"))


def test_validate_counts_the_draft_in_the_memory_budget(root: Path) -> None:
    """A budget that holds the model alone but not the model and its draft is a problem."""
    size = sum(p.stat().st_size for p in (root / "base").glob("*.safetensors"))
    path = write_spec(root, "budget.yaml", "base")
    spec = json.loads(path.read_text())
    spec["memory"] = {"budget": int(size * 1.5)}
    spec["models"] = spec["models"][:1]
    path.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match="memory budget"):
        load_spec(path)
    del spec["models"][0]["draft_model"]
    path.write_text(json.dumps(spec))
    load_spec(path)


def test_bench_reads_the_acceptance_from_metrics(http: httpx.Client) -> None:
    before = draft_counts(http.get("/metrics").text)
    text(http, model="fast")
    after = draft_counts(http.get("/metrics").text)
    assert after[0] > before[0] and acceptance(before, after) == 1.0
    assert acceptance(after, after) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"draft_model": "base"}, "each entry names its own draft_model"),
        ({"models": [{"id": "e", "model": "base", "task": "embed", "draft_model": "base"}],
          "apis": ["embeddings"]}, "generates nothing to draft for"),
    ],
)  # fmt: skip
def test_a_draft_where_it_cannot_run_is_a_spec_error(
    root: Path, change: dict[str, Any], message: str
) -> None:
    path = write_spec(root, "misplaced.yaml", "base")
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_a_model_whose_caches_cannot_roll_back_refuses_its_draft(
    root: Path, demo_dir: Path, cache_dir: Path
) -> None:
    """A sliding-window model fails to load with a draft, saying why; no request is served."""
    windowed = {**TINY_CONFIG, "model_type": "gemma3_text", "sliding_window": 8, "head_dim": 16,
                "sliding_window_pattern": 2, "query_pre_attn_scalar": 16}  # fmt: skip
    out = root / "windowed"
    out.mkdir(exist_ok=True)
    make_tiny_model(out, demo_dir, seed=2, config=windowed)
    path = root / "windowed.yaml"
    path.write_text(json.dumps({"model": "windowed", "draft_model": "base"}))
    loaded = load_spec(path)

    async def load() -> tuple[str, str | None]:
        engine = MLXEngine(loaded.catalog.models[0])
        engine.start(asyncio.get_running_loop())
        state = await asyncio.to_thread(engine.wait_loaded, 300)
        await asyncio.to_thread(engine.stop)
        return state, engine.error

    state, error = asyncio.run(load())
    assert state == "failed"
    assert error is not None and "cannot roll back" in error and "gemma3_text" in error
