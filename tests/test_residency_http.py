"""Models served in turn under a memory budget, through HTTP: /v1/models and /v1/status show
where each model is, requests load their model and wait for it, evictions make room, the
operator's routes load, unload and pin, metrics count it all; real engines unload and load
again with the same answers; and a real `mlxdeploy up` serves three models that do not fit
together, under load, dropping nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlxdeploy.footprint import bytes_text, estimate_bytes
from mlxdeploy.spec.sources import parse_model_source, weight_files
from tests.conftest import TINY_CONFIG, make_tiny_model, real_app, scripted_app
from tests.inprocess import InProcessApp
from tests.scrape import scrape
from tests.scripted import ScriptedEngine
from tests.servers import start_server, stop_server

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Tell me about lighthouses."}]
ASK = {"messages": HELLO, "max_tokens": 8, "temperature": 0}


def weights_of(model_dir: Path) -> int:
    files = weight_files(parse_model_source(str(model_dir), model_dir))
    assert files is not None
    return estimate_bytes(files)


def rotation_spec(
    path: Path, dirs: list[Path], budget_models: float, *extra: str, **per_model: str
) -> Path:
    """Models a, b, c ... on `dirs`, loaded on demand, with a budget that holds
    `budget_models` of them; `per_model` adds a line to a model's entry."""
    budget = int(weights_of(dirs[0]) * budget_models)
    entries = "".join(
        f"  - id: {name}\n    model: {json.dumps(str(d))}\n    load: on_demand\n"
        + (f"    {per_model[name]}\n" if name in per_model else "")
        for name, d in zip("abcdef", dirs, strict=False)
    )
    text = f"memory:\n  budget: {budget}\n  load_timeout_seconds: 20\nmodels:\n{entries}"
    path.write_text(text + "".join(f"{line}\n" for line in extra))
    return path


@pytest.fixture(scope="module")
def third_tiny_model_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("third-tiny-llama"), demo_dir, seed=2)


@pytest.fixture(scope="module")
def three(
    tiny_model_dir: Path, other_tiny_model_dir: Path, third_tiny_model_dir: Path
) -> list[Path]:
    return [tiny_model_dir, other_tiny_model_dir, third_tiny_model_dir]


def scripted(dirs: list[Path], **fields: Any) -> list[ScriptedEngine]:
    size = weights_of(dirs[0])
    return [
        ScriptedEngine(model_id=name, state="unloaded", weight_bytes=size, **fields)
        for name in "abc"
    ]


def states(app: InProcessApp) -> dict[str, str]:
    return {card["id"]: card["state"] for card in app.http.get("/v1/models").json()["data"]}


# ------------------------------------------------------------------ scripted engines, HTTP


def test_models_shows_state_memory_and_context(tmp_path: Path, three: list[Path]) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three, 2.5, c="pin: true")
    with scripted_app(spec, *scripted(three)) as app:
        cards = app.http.get("/v1/models").json()["data"]
        assert [(c["id"], c["state"], c["load"], c["pinned"]) for c in cards] == [
            ("a", "unloaded", "on_demand", False),
            ("b", "unloaded", "on_demand", False),
            ("c", "unloaded", "on_demand", True),
        ]
        assert {c["memory_bytes"] for c in cards} == {weights_of(three[0])}  # from the headers
        assert {c["context_length"] for c in cards} == {TINY_CONFIG["max_position_embeddings"]}
        assert app.http.get("/health").json()["status"] == "ok"  # nothing to load at start
        assert app.http.post(CHAT, json={"model": "b", **ASK}).status_code == 200
        assert app.http.get("/v1/models/b").json()["state"] == "ready"


def test_requests_load_their_model_and_evict_the_least_recently_used(
    tmp_path: Path, three: list[Path]
) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three, 2.5)
    engines = scripted(three, load_seconds=0.2)
    with scripted_app(spec, *engines) as app:
        for name in ("a", "b", "c", "a"):
            reply = app.http.post(CHAT, json={"model": name, **ASK})
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == name
        assert states(app) == {"a": "ready", "b": "unloaded", "c": "ready"}
        assert [e.loaded for e in engines] == [2, 1, 1]
        assert [e.unloaded for e in engines] == [1, 1, 0]
        metrics = scrape(app.http)
        assert metrics.value("mlxdeploy_model_loads_total", model="a") == 2
        assert metrics.value("mlxdeploy_model_evictions_total", model="b") == 1
        assert metrics.value("mlxdeploy_model_load_seconds_total", model="a") >= 0.4
        assert metrics.value("mlxdeploy_model_resident_bytes", model="b") == 0
        assert metrics.value("mlxdeploy_model_resident_bytes", model="c") == weights_of(three[0])
        status = app.http.get("/v1/status").json()
        assert [(m["id"], m["loads"], m["evictions"]) for m in status["models"]] == [
            ("a", 2, 1),
            ("b", 1, 1),
            ("c", 1, 0),
        ]
        assert status["memory_used_bytes"] == 2 * weights_of(three[0])


def test_a_model_that_cannot_load_is_a_503_in_each_api(tmp_path: Path, three: list[Path]) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three[:1], 1.5)
    engine = ScriptedEngine(model_id="a", state="unloaded", load_error="its weights are gone")
    with scripted_app(spec, engine) as app:
        openai_reply = app.http.post(CHAT, json={"model": "a", **ASK})
        anthropic_reply = app.http.post(
            "/v1/messages", json={"model": "a", "max_tokens": 8, "messages": HELLO}
        )
        assert app.http.get("/health").json()["status"] == "ok"  # the others still serve
    assert openai_reply.status_code == 503 and int(openai_reply.headers["Retry-After"]) > 0
    error = openai_reply.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "model_unavailable"
    assert error["message"] == "model 'a' failed to load: its weights are gone"
    assert anthropic_reply.status_code == 529 and "Retry-After" in anthropic_reply.headers
    assert anthropic_reply.json()["error"]["type"] == "overloaded_error"
    assert anthropic_reply.json()["error"]["message"].startswith("model 'a' failed to load")
    assert engine.loaded == 1  # tried once, not by every request


def validate(spec: Path) -> list[str]:
    from typer.testing import CliRunner

    from mlxdeploy.cli import app

    result = CliRunner().invoke(app, ["validate", str(spec)])
    lines = result.output.splitlines()
    assert result.exit_code == (0 if lines == ["1 spec valid"] else 1), result.output
    return lines


def test_validate_checks_the_budget(tmp_path: Path, three: list[Path]) -> None:
    size = weights_of(three[0])
    fits = rotation_spec(tmp_path / "fits.yaml", three, 2.5, a="pin: true")
    assert validate(fits) == ["1 spec valid"]
    pinned = rotation_spec(tmp_path / "pinned.yaml", three, 1.5, a="pin: true", b="pin: true")
    assert validate(pinned) == [
        f"{pinned}:5:3: models: the pinned models' weights need about {bytes_text(2 * size)} "
        f"of memory together (a {bytes_text(size)}, b {bytes_text(size)}), the memory budget "
        f"is {bytes_text(int(size * 1.5))} (memory.budget)"
    ]
    beside = rotation_spec(tmp_path / "beside.yaml", three[:2], 1.5, a="pin: true")
    (line,) = validate(beside)
    assert line.startswith(f"{beside}:") and ": models[1].model: model 'b' needs about " in line
    assert line.endswith("(memory.budget): it can never be loaded")
    eager = rotation_spec(tmp_path / "eager.yaml", three, 1.5)
    eager.write_text(eager.read_text().replace("load: on_demand", "load: eager"))
    (line,) = validate(eager)
    assert ": models: the models' weights need about " in line
    assert line.endswith("or load some on demand (load: on_demand)")
    wrong = rotation_spec(tmp_path / "wrong.yaml", three, 1.5)
    wrong.write_text(wrong.read_text().replace(f"budget: {int(size * 1.5)}", "budget: 48 parsecs"))
    (line,) = validate(wrong)
    assert line.startswith(f"{wrong}:2:11: memory.budget: ")
    assert "expected a size such as 48GiB" in line


def test_a_model_is_not_unloaded_under_a_running_stream(tmp_path: Path, three: list[Path]) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three[:2], 1.5)
    spec.write_text(spec.read_text().replace("load_timeout_seconds: 20", "load_timeout_seconds: 1"))
    engines = scripted(three[:2], delay=0.5)
    with scripted_app(spec, *engines) as app:
        with app.http.stream("POST", CHAT, json={"model": "a", "stream": True, **ASK}) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # a is streaming
            refused = app.http.post(CHAT, json={"model": "b", **ASK})
            rest = [line for line in lines if line]
        assert refused.status_code == 503
        assert rest[-1] == "data: [DONE]"  # a's answer ran to its end
        assert engines[0].unloaded == 0
        assert app.http.post(CHAT, json={"model": "b", **ASK}).status_code == 200  # now it fits
        assert states(app) == {"a": "unloaded", "b": "ready"}


def test_the_operator_loads_unloads_and_pins(tmp_path: Path, three: list[Path]) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three, 2.5)
    with scripted_app(spec, *scripted(three)) as app:
        admin = "/v1/admin/models"
        loaded = app.http.post(f"{admin}/a/load")
        assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
        assert app.http.post(f"{admin}/a/pin").json()["pinned"] is True
        refused = app.http.post(f"{admin}/a/unload")
        assert refused.status_code == 409
        assert refused.json()["error"]["message"] == "model 'a' is pinned; unpin it first"
        app.http.post(f"{admin}/b/load")
        app.http.post(f"{admin}/c/load")  # b goes: a is pinned
        assert states(app) == {"a": "ready", "b": "unloaded", "c": "ready"}
        assert app.http.post(f"{admin}/a/unpin").json()["pinned"] is False
        unloaded = app.http.post(f"{admin}/a/unload")
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
        unknown = app.http.post(f"{admin}/a/reload")
        assert unknown.status_code == 404 and "the actions: load, unload" in unknown.text
        assert app.http.post(f"{admin}/nope/load").status_code == 404


def test_admin_routes_need_keys_off_loopback(
    tmp_path: Path, three: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three[:1], 1.5, "host: 0.0.0.0")
    with scripted_app(spec, *scripted(three[:1])) as app:
        refused = app.http.post("/v1/admin/models/a/load")
    assert refused.status_code == 403
    assert "admin routes need API keys" in refused.json()["error"]["message"]
    monkeypatch.setenv("RESIDENCY_KEYS", "k1")
    keyed = rotation_spec(
        tmp_path / "k.yaml", three[:1], 1.5, "host: 0.0.0.0", "auth: {api_keys_env: RESIDENCY_KEYS}"
    )
    with scripted_app(keyed, *scripted(three[:1])) as app:
        assert app.http.post("/v1/admin/models/a/load").status_code == 401
        allowed = app.http.post("/v1/admin/models/a/load", headers={"Authorization": "Bearer k1"})
    assert allowed.status_code == 200 and allowed.json()["state"] == "ready"


# ------------------------------------------------------------------------- real engines


def test_real_models_unload_and_load_again_with_the_same_answers(
    tmp_path: Path, three: list[Path]
) -> None:
    spec = rotation_spec(tmp_path / "s.yaml", three[:2], 1.5)
    with real_app(spec) as app:
        first = app.http.post(CHAT, json={"model": "a", **ASK})
        assert first.status_code == 200, first.text
        other = app.http.post(CHAT, json={"model": "b", **ASK})
        assert other.status_code == 200, other.text
        assert states(app) == {"a": "unloaded", "b": "ready"}
        engine_a = app.engines[0]
        assert engine_a.resident_bytes is None  # type: ignore[attr-defined]
        again = app.http.post(CHAT, json={"model": "a", **ASK})
        assert states(app) == {"a": "ready", "b": "unloaded"}
    answer = first.json()["choices"][0]["message"]["content"]
    assert again.json()["choices"][0]["message"]["content"] == answer
    assert other.json()["choices"][0]["message"]["content"] != answer  # other weights


def test_unloading_gives_the_memory_back(tiny_model_dir: Path, tmp_path: Path) -> None:
    import asyncio
    import gc

    import mlx.core as mx

    from mlxdeploy.engine.engine import MLXEngine
    from mlxdeploy.spec.load import load_spec

    spec = rotation_spec(tmp_path / "s.yaml", [tiny_model_dir], 1.5, "engine: {warmup: false}")
    model = load_spec(spec).catalog.models[0]
    engine = MLXEngine(model)
    loop = asyncio.new_event_loop()
    try:
        engine.start(loop, load=False)
        assert engine.state == "unloaded"
        engine.load()
        assert engine.wait_loaded(120) == "ready", engine.error
        assert engine.resident_bytes == weights_of(tiny_model_dir)
        gc.collect()
        loaded = mx.get_active_memory()
        engine.unload()
        assert engine.state == "unloaded" and engine.resident_bytes is None
        assert loaded - mx.get_active_memory() >= weights_of(tiny_model_dir) * 0.9
    finally:
        engine.stop()
        loop.close()


# ------------------------------------------------------------------- a real server process


@pytest.fixture
def rotating_server(tmp_path: Path, three: list[Path], cache_dir: Path) -> Iterator[Any]:
    spec = rotation_spec(tmp_path / "up.yaml", three, 2.5, "engine: {warmup: false}")
    with start_server(spec) as server:
        yield server
        assert stop_server(server) == 0


@pytest.mark.process
def test_three_models_that_do_not_fit_together_are_served_in_turn_under_load(
    rotating_server: Any,
) -> None:
    """Six clients ask the three models in turn, each from a different one: every request is
    answered, and the models were loaded and evicted to do it."""

    def client(start: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=rotating_server.base_url, timeout=120) as http:
            for i in range(6):
                model = "abc"[(start + i) % 3]
                codes.append(http.post(CHAT, json={"model": model, **ASK}).status_code)
        return codes

    with ThreadPoolExecutor(6) as pool:
        codes = [code for result in pool.map(client, range(6)) for code in result]
    assert codes == [200] * 36
    with httpx.Client(base_url=rotating_server.base_url, timeout=30) as http:
        status = http.get("/v1/status").json()
        metrics = http.get("/metrics").text
    loads = sum(m["loads"] for m in status["models"])
    evictions = sum(m["evictions"] for m in status["models"])
    assert evictions >= 1 and loads == evictions + sum(
        m["state"] == "ready" for m in status["models"]
    )
    assert status["memory_used_bytes"] <= status["memory_budget_bytes"]
    assert "mlxdeploy_model_evictions_total" in metrics
    log = Path(rotating_server.log_path).read_text()
    assert "unloading model" in log and "to make room for" in log
    assert " loaded in " in log
