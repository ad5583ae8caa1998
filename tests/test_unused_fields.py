"""Fields a request sends that its answer does not use: labels and hints are accepted and named
in `X-Unused-Fields` and the access line, on every API, whole and streamed, success and error;
`limits.unused_fields: reject` makes the hints 400s in each API's own shape; unknown fields are
400s under both policies. A max_tokens above `limits.max_tokens` is clamped (the answer ends
there as at any max_tokens) or, under `limits.max_tokens_exceeded: reject`, a 400."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlxdeploy.api.errors import InvalidRequest
from mlxdeploy.api.unsupported import CHAT, MESSAGES, RESPONSES, TEXT
from mlxdeploy.api.unused import HEADER, SCOPE_KEY, UnusedFields
from mlxdeploy.serve.logs import ACCESS_LOGGER, access_fields, render_access
from tests.conftest import scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine
from tests.test_logs import under_hypercorn

USER = [{"role": "user", "content": "Hi"}]
CAP = 2  # limits.max_tokens: the scripted answer has 4 pieces, so a clamped one ends early


def spec(tmp_path: Path, **limits: Any) -> Path:
    fields: dict[str, Any] = {"limits": {"max_tokens": CAP, **limits}}
    return write_spec(tmp_path / "s.yaml", "owner/model", name="tiny", **fields)


@pytest.fixture
def lenient(tmp_path: Path) -> Iterator[tuple[InProcessApp, ScriptedEngine]]:
    engine = ScriptedEngine()
    with scripted_app(spec(tmp_path), engine) as app:
        yield app, engine


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[tuple[InProcessApp, ScriptedEngine]]:
    engine = ScriptedEngine()
    path = spec(tmp_path, unused_fields="reject", max_tokens_exceeded="reject")
    with scripted_app(path, engine) as app:
        yield app, engine


# Per API: its path, a minimal body, one label and one hint it accepts, and one field that
# changes the answer and is refused.
APIS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {"messages": USER, "max_tokens": 1},
        {"metadata": {"team": "a"}, "prompt_cache_key": "k"},
        {"prediction": {"type": "content", "content": "x"}, "verbosity": "low"},
        {"audio": {"voice": "alloy"}},
    ),
    "completions": (
        "/v1/completions",
        {"prompt": "Once", "max_tokens": 1},
        {"user": "u-1", "safety_identifier": "s"},
        {},  # completions decline no hint (draft_model and num_draft_tokens are implemented)
        {"echo": True},
    ),
    "responses": (
        "/v1/responses",
        {"input": "Hi", "max_output_tokens": 1},
        {"prompt_cache_key": "k", "client_metadata": {"x": "y"}},
        {"truncation": "auto"},
        {"background": True},
    ),
    "messages": (
        "/v1/messages",
        {"messages": USER, "max_tokens": 1},
        {"metadata": {"user_id": "u"}, "cache_control": {"type": "ephemeral"}},
        {"inference_geo": "us", "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
        {"container": "c-1"},
    ),
}


def unused(response: httpx.Response) -> list[str]:
    value = response.headers.get(HEADER)
    return [] if value is None else value.split(", ")


def post(app: InProcessApp, path: str, body: dict[str, Any], stream: bool) -> httpx.Response:
    """The response, its body read (a stream to its end)."""
    if not stream:
        return app.http.post(path, json=body)
    with app.http.stream("POST", path, json={**body, "stream": True}) as response:
        response.read()
    return response


def assert_unsupported(response: httpx.Response, api: str, param: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    if api == "messages":  # Anthropic's shape
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert (body["error"]["code"], body["error"]["param"]) == ("unsupported_parameter", param)
    assert f"'{param}'" in body["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", list(APIS))
def test_labels_and_hints_are_accepted_and_named(
    lenient: tuple[InProcessApp, ScriptedEngine], api: str, stream: bool
) -> None:
    app, engine = lenient
    path, body, labels, hints, _ = APIS[api]
    response = post(app, path, {**body, **labels, **hints}, stream)
    assert response.status_code == 200, response.text
    assert unused(response) == [*labels, *hints]  # in the order the body has them
    assert len(engine.prompts) == 1


@pytest.mark.parametrize("api", list(APIS))
def test_a_body_with_nothing_unused_has_no_header(
    lenient: tuple[InProcessApp, ScriptedEngine], api: str
) -> None:
    app, _ = lenient
    path, body, labels, hints, _ = APIS[api]
    nulls = dict.fromkeys([*labels, *hints])  # null is "not set"
    response = app.http.post(path, json={**body, **nulls})
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers


@pytest.mark.parametrize("api", [api for api, fields in APIS.items() if fields[3]])
def test_strict_makes_hints_a_400_in_the_apis_own_shape(
    strict: tuple[InProcessApp, ScriptedEngine], api: str
) -> None:
    app, engine = strict
    path, body, labels, hints, _ = APIS[api]
    first = next(iter(hints))
    assert_unsupported(app.http.post(path, json={**body, **labels, **hints}), api, first)
    accepted = app.http.post(path, json={**body, **labels})  # labels pass either way
    assert accepted.status_code == 200, accepted.text
    assert unused(accepted) == list(labels)
    assert len(engine.prompts) == 1


@pytest.mark.parametrize("policy", ["lenient", "strict"])
@pytest.mark.parametrize("api", list(APIS))
def test_fields_that_change_the_answer_and_unknown_ones_are_a_400(
    request: pytest.FixtureRequest, policy: str, api: str
) -> None:
    app, engine = request.getfixturevalue(policy)
    path, body, labels, _, changes = APIS[api]
    field = next(iter(changes))
    assert_unsupported(app.http.post(path, json={**body, **changes}), api, field)
    misspelt = {**body, **labels, "temprature": 0.5}  # not a hint: a misspelling
    assert_unsupported(app.http.post(path, json=misspelt), api, "temprature")
    assert engine.prompts == []


def test_values_that_mean_this_servers_behaviour_are_not_named(
    lenient: tuple[InProcessApp, ScriptedEngine],
) -> None:
    app, _ = lenient
    body = {"input": "Hi", "truncation": "disabled", "background": False, "store": False}
    response = app.http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers  # store is implemented on this route


@pytest.mark.parametrize("policy", ["lenient", "strict"])
def test_text_verbosity_is_a_hint_on_responses(request: pytest.FixtureRequest, policy: str) -> None:
    app, _ = request.getfixturevalue(policy)
    body = {"input": "Hi", "user": "u", "text": {"verbosity": "low", "format": {"type": "text"}}}
    response = app.http.post("/v1/responses", json=body)
    if policy == "strict":
        assert_unsupported(response, "responses", "text.verbosity")
    else:
        assert response.status_code == 200, response.text
        assert unused(response) == ["user", "text.verbosity"]


def test_an_error_after_parsing_still_names_them(tmp_path: Path) -> None:
    engine = ScriptedEngine(state="loading")
    with scripted_app(spec(tmp_path), engine) as app:
        response = app.http.post(
            "/v1/chat/completions", json={"messages": USER, "user": "u", "verbosity": "low"}
        )
    assert response.status_code == 503
    assert unused(response) == ["user", "verbosity"]


def test_count_tokens_names_them_too(lenient: tuple[InProcessApp, ScriptedEngine]) -> None:
    app, _ = lenient
    body = {"messages": USER, "cache_control": {"type": "ephemeral"}}
    response = app.http.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 200, response.text
    assert unused(response) == ["cache_control"]


def test_a_preset_route_names_them(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny", endpoints={"short": {}})
    with scripted_app(path) as app:
        response = app.http.post("/v1/endpoints/short", json={"messages": USER, "store": True})
    assert response.status_code == 200, response.text
    assert unused(response) == ["store"]


# -- max_tokens above the deployment's limit ------------------------------------------------

# A body asking for more than CAP on each API, and the field as that API names it.
ABOVE: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 100}, "max_tokens"),
    (
        "/v1/chat/completions",
        {"messages": USER, "max_completion_tokens": 100},
        "max_completion_tokens",
    ),
    ("/v1/completions", {"prompt": "Once", "max_tokens": 100}, "max_tokens"),
    ("/v1/responses", {"input": "Hi", "max_output_tokens": 100}, "max_output_tokens"),
    ("/v1/messages", {"messages": USER, "max_tokens": 100}, "max_tokens"),
]


def ended_at_max_tokens(path: str, answer: dict[str, Any]) -> bool:
    if path == "/v1/responses":
        return answer["status"] == "incomplete" and answer["incomplete_details"] == {
            "reason": "max_output_tokens"
        }
    if path == "/v1/messages":
        return bool(answer["stop_reason"] == "max_tokens")
    return bool(answer["choices"][0]["finish_reason"] == "length")


@pytest.mark.parametrize(("path", "body", "field"), ABOVE)
def test_max_tokens_above_the_limit_is_clamped(
    lenient: tuple[InProcessApp, ScriptedEngine], path: str, body: dict[str, Any], field: str
) -> None:
    app, engine = lenient
    response = app.http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert ended_at_max_tokens(path, response.json())
    assert engine.params[-1].max_tokens == CAP
    assert unused(response) == [f"{field} (clamped to {CAP})"]


def stream_lines(response: httpx.Response) -> list[dict[str, Any]]:
    lines = response.text.splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def test_a_clamped_stream_ends_with_length(lenient: tuple[InProcessApp, ScriptedEngine]) -> None:
    app, _ = lenient
    response = post(app, "/v1/chat/completions", {"messages": USER, "max_tokens": 100}, True)
    assert response.status_code == 200
    assert unused(response) == [f"max_tokens (clamped to {CAP})"]
    reasons = [c["finish_reason"] for e in stream_lines(response) for c in e["choices"]]
    assert reasons[-1] == "length"
    messages = post(app, "/v1/messages", {"messages": USER, "max_tokens": 100}, True)
    deltas = [e for e in stream_lines(messages) if e["type"] == "message_delta"]
    assert deltas[-1]["delta"]["stop_reason"] == "max_tokens"


def test_max_tokens_at_the_limit_is_not_named(lenient: tuple[InProcessApp, ScriptedEngine]) -> None:
    app, _ = lenient
    response = app.http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": CAP})
    assert response.status_code == 200
    assert HEADER not in response.headers


@pytest.mark.parametrize(("path", "body", "field"), ABOVE)
def test_max_tokens_above_the_limit_is_a_400_when_the_spec_says_reject(
    strict: tuple[InProcessApp, ScriptedEngine], path: str, body: dict[str, Any], field: str
) -> None:
    app, engine = strict
    response = app.http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert str(CAP) in response.json()["error"]["message"]
    if path != "/v1/messages":
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("integer_above_max_value", field)
    assert engine.prompts == []


# -- the access log ------------------------------------------------------------------------


def test_the_access_line_names_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    path = write_spec(
        tmp_path / "s.yaml",
        tmp_path / "model",
        name="tiny",
        server={"access_log": True},
        limits={"max_tokens": CAP},
    )
    body = {"messages": USER, "metadata": {"a": "b"}, "max_tokens": 100}
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER), under_hypercorn(path) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            named = http.post("/v1/chat/completions", json=body)
            plain = http.post("/v1/chat/completions", json={"messages": USER})
    assert unused(named) == ["metadata", f"max_tokens (clamped to {CAP})"]
    lines = {vars(r)["request_id"]: r for r in caplog.records if r.name == ACCESS_LOGGER}
    line = lines[named.headers["x-request-id"]]
    assert vars(line)["unused"] == "metadata,max_tokens"
    assert line.getMessage().endswith(" unused=metadata,max_tokens")
    other = lines[plain.headers["x-request-id"]]
    assert "unused" not in vars(other) and "unused=" not in other.getMessage()


def test_a_client_gone_before_the_response_still_logs_them() -> None:
    record = UnusedFields()
    record.note("metadata")
    scope: dict[str, Any] = {"method": "POST", "path": "/v1/messages", SCOPE_KEY: record}
    fields = access_fields(scope, None, 0.25)  # type: ignore[arg-type]
    assert fields["unused"] == "metadata"
    assert render_access(scope, fields).endswith("id=- unused=metadata")  # type: ignore[arg-type]


# -- the record ------------------------------------------------------------------------------


def test_the_record_names_paths_with_their_details() -> None:
    record = UnusedFields()
    record.note("tools[3]", "web_search, preview\n")  # no comma or newline reaches the header
    record.note("metadata")
    record.note("tools[3]", "again")  # the first note stays
    assert record.paths() == ["tools[3]", "metadata"]
    assert record.header() == "tools[3] (web_search? preview?), metadata"


def test_a_declined_hint_is_a_400_only_when_strict() -> None:
    lenient = UnusedFields()
    lenient.decline("defer_loading", "deferred tool loading is not supported")
    assert lenient.paths() == ["defer_loading"]
    with pytest.raises(InvalidRequest) as raised:
        UnusedFields(strict=True).decline("defer_loading", "deferred tool loading is not supported")
    assert (raised.value.param, raised.value.code) == ("defer_loading", "unsupported_parameter")


def test_a_long_record_is_counted_not_listed() -> None:
    record = UnusedFields()
    for index in range(40):
        record.note(f"tools[{index}]")
    assert record.header().endswith("tools[31], and 8 more")


@pytest.mark.parametrize("rules", [CHAT, TEXT, RESPONSES, MESSAGES])
def test_every_rule_has_a_kind_and_a_refusal(rules: Any) -> None:
    for name, rule in rules.items():
        assert rule.kind in {"answer", "hint", "label"}, name
        assert rule.refusal, name
