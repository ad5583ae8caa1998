"""`n`: several choices for one request, through real inference on the tiny model. The
choices' prompt is read once and each choice decodes from its own copy of that cache, so greedy
choices all equal the single answer; seeded choices differ from each other and reproduce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp
from tests.test_wire_conformance import assert_valid, load_document, stream

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "Name three colours."}]


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def contents(body: dict[str, Any]) -> list[str]:
    assert [c["index"] for c in body["choices"]] == list(range(len(body["choices"])))
    return [c["message"]["content"] for c in body["choices"]]


def test_greedy_choices_each_equal_the_single_answer(tiny_app: InProcessApp) -> None:
    base = {"messages": USER, "temperature": 0, "max_tokens": 12}
    single = post(tiny_app.http, CHAT, base)
    several = post(tiny_app.http, CHAT, {**base, "n": 4})
    assert contents(several) == contents(single) * 4
    usage, one = several["usage"], single["usage"]
    assert usage["prompt_tokens"] == one["prompt_tokens"]  # the prompt counts once
    assert usage["completion_tokens"] == 4 * one["completion_tokens"]
    assert_valid(load_document(), "CreateChatCompletionResponse", several)


def test_seeded_choices_differ_and_reproduce(tiny_app: InProcessApp) -> None:
    body = {"messages": USER, "temperature": 1.0, "max_tokens": 12, "seed": 7, "n": 3}
    first, again = post(tiny_app.http, CHAT, body), post(tiny_app.http, CHAT, body)
    assert contents(first) == contents(again)
    assert len(set(contents(first))) == 3  # choice i draws from seed + i
    alone = post(tiny_app.http, CHAT, {**body, "n": 1})
    assert contents(alone) == contents(first)[:1]  # choice 0 is the request's own seed


def test_streamed_choices_join_to_the_whole_ones(tiny_app: InProcessApp) -> None:
    body = {
        "messages": USER,
        "temperature": 1.0,
        "max_tokens": 10,
        "seed": 3,
        "n": 3,
        "stream_options": {"include_usage": True},
    }
    whole = post(tiny_app.http, CHAT, body)
    chunks = stream(tiny_app.http, CHAT, body)
    document = load_document()
    texts, reasons, roles = ["", "", ""], [None, None, None], [0, 0, 0]
    for chunk in chunks:
        assert_valid(document, "CreateChatCompletionStreamResponse", chunk)
        for choice in chunk["choices"]:
            index = choice["index"]
            roles[index] += "role" in choice["delta"]
            texts[index] += choice["delta"].get("content") or ""
            reasons[index] = choice["finish_reason"] or reasons[index]
    assert texts == contents(whole) and roles == [1, 1, 1]
    assert reasons == [c["finish_reason"] for c in whole["choices"]]
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["choices"] == []


def test_text_completions_take_n_with_logprobs(tiny_app: InProcessApp) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "n": 2}
    whole = post(tiny_app.http, TEXT, {**body, "logprobs": 1})
    texts = [c["text"] for c in whole["choices"]]
    assert len(texts) == 2 and texts[0] == texts[1]
    for choice in whole["choices"]:
        assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    streamed = stream(tiny_app.http, TEXT, body)
    joined = ["", ""]
    for chunk in streamed:
        for choice in chunk["choices"]:
            joined[choice["index"]] += choice["text"]
    assert joined == texts


@pytest.mark.parametrize(("n", "words"), [(0, "greater than or equal to 1"), (9, "limits.max_n")])
def test_n_out_of_bounds_is_a_400(tiny_app: InProcessApp, n: int, words: str) -> None:
    response = tiny_app.http.post(CHAT, json={"messages": USER, "max_tokens": 2, "n": n})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "n" and words in error["message"]


def test_the_spec_sets_the_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", tiny_model_dir, name="tiny", limits={"max_n": 2})
    with real_app(spec) as app:
        refused = app.http.post(CHAT, json={"messages": USER, "max_tokens": 2, "n": 3})
        accepted = app.http.post(CHAT, json={"messages": USER, "max_tokens": 2, "n": 2})
    assert (
        refused.status_code == 400 and "2 choices" in json.loads(refused.text)["error"]["message"]
    )
    assert accepted.status_code == 200 and len(accepted.json()["choices"]) == 2


def test_a_failure_admitting_choices_fails_that_request_only(
    tiny_app: InProcessApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation thread goes on: the next request is answered."""
    from mlxdeploy.engine.admission import Admission

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no room")

    body = {"messages": USER, "temperature": 0, "max_tokens": 4}
    with monkeypatch.context() as patch:
        patch.setattr(Admission, "insert_shared", broken)
        failed = tiny_app.http.post(CHAT, json={**body, "n": 2})
    assert failed.status_code == 500
    assert "no room" in failed.json()["error"]["message"]
    assert contents(post(tiny_app.http, CHAT, {**body, "n": 2})) != []
