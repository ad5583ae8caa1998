"""The sampling fields through real inference on the tiny model: top_k, min_p, presence and
frequency penalties, logit_bias and XTC, per request, as spec defaults, mixed in one batch, and
every bad value a 400 naming its field."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
PROMPT = "Once upon a time"
N = 12


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


@pytest.fixture(scope="module")
def token(tiny_model_dir: Path) -> tuple[int, str]:
    """A token id of the tiny model's vocabulary, and the text of it repeated N times."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    (token_id,) = tokenizer.encode(" lighthouse", add_special_tokens=False)
    return token_id, str(tokenizer.decode([token_id] * N))


def chat(http: httpx.Client, **fields: Any) -> str:
    body = {"messages": USER, "max_tokens": N, "temperature": 0, **fields}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def text(http: httpx.Client, **fields: Any) -> str:
    body = {"prompt": PROMPT, "max_tokens": N, "temperature": 0, **fields}
    response = http.post(TEXT, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


@pytest.mark.parametrize("complete", [chat, text])
def test_top_k_1_at_temperature_1_is_greedy(http: httpx.Client, complete: Any) -> None:
    greedy = complete(http)
    assert all(complete(http, temperature=1.0, top_k=1) == greedy for _ in range(3))


@pytest.mark.parametrize("complete", [chat, text])
def test_min_p_1_is_greedy(http: httpx.Client, complete: Any) -> None:
    greedy = complete(http)
    assert all(complete(http, temperature=1.5, min_p=1.0) == greedy for _ in range(3))


@pytest.mark.parametrize("complete", [chat, text])
def test_a_large_logit_bias_makes_every_token_that_token(
    http: httpx.Client, complete: Any, token: tuple[int, str]
) -> None:
    token_id, repeated = token
    assert complete(http) != repeated
    assert complete(http, logit_bias={str(token_id): 100}) == repeated
    # Also when sampling: the bias dwarfs every other logit.
    assert complete(http, temperature=1.0, logit_bias={str(token_id): 100}) == repeated


def test_a_negative_logit_bias_bans_the_greedy_token(
    http: httpx.Client, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    greedy = chat(http)
    piece = greedy[: len(greedy) // N]  # the tiny model repeats one token
    (token_id,) = AutoTokenizer.from_pretrained(str(tiny_model_dir)).encode(
        piece, add_special_tokens=False
    )
    banned = chat(http, logit_bias={str(token_id): -100})
    assert banned != greedy and not banned.startswith(piece * 2)


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_change_a_greedy_answer_that_repeats(http: httpx.Client, penalty: str) -> None:
    greedy = chat(http)
    assert greedy == greedy[: len(greedy) // N] * N  # the tiny model repeats one token
    penalized = chat(http, **{penalty: 2.0})
    assert penalized != greedy
    assert chat(http, **{penalty: 2.0}) == penalized  # still greedy: deterministic
    assert chat(http, **{penalty: 0.0}) == greedy  # 0 is off


def test_penalty_context_size_limits_what_is_penalized(http: httpx.Client) -> None:
    """With a context of one token the penalty only forbids repeating the last token."""
    wide = chat(http, frequency_penalty=2.0, frequency_context_size=64)
    narrow = chat(http, frequency_penalty=2.0, frequency_context_size=1)
    assert wide != narrow


@pytest.mark.parametrize("complete", [chat, text])
def test_xtc_probability_0_equals_no_xtc(http: httpx.Client, complete: Any) -> None:
    greedy = complete(http)
    assert complete(http, temperature=1.0, top_k=1, xtc_probability=0.0) == greedy
    assert complete(http, xtc_probability=1.0, xtc_threshold=0.1) == greedy  # greedy wins


def test_xtc_at_full_probability_avoids_the_top_token(http: httpx.Client) -> None:
    """At threshold 0 every token is above it: XTC removes all but the least likely one (and
    the newline and end tokens it spares), so the greedy token is never chosen."""
    greedy = chat(http)
    xtc = chat(http, temperature=1.0, top_k=2, xtc_probability=1.0, xtc_threshold=0.0)
    assert xtc != greedy


def test_mixed_settings_in_one_batch_sample_each_their_own(
    http: httpx.Client, token: tuple[int, str]
) -> None:
    token_id, repeated = token
    cases: list[dict[str, Any]] = [
        {},
        {"logit_bias": {str(token_id): 100}},
        {"temperature": 1.0, "top_k": 1},
        {"presence_penalty": 2.0},
        {"temperature": 1.0, "min_p": 1.0},
    ]
    alone = [chat(http, **case) for case in cases]
    assert alone[1] == repeated and alone[2] == alone[4] == alone[0] != alone[3]
    with ThreadPoolExecutor(len(cases) * 2) as pool:
        together = list(pool.map(lambda case: chat(http, **case), cases * 2))
    assert together == alone * 2


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_k": -1}, "top_k"),
        ({"top_k": "1"}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.1}, "min_p"),
        ({"min_p": "0.1"}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"presence_penalty": "1"}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"frequency_penalty": True}, "frequency_penalty"),
        ({"presence_context_size": 0}, "presence_context_size"),
        ({"frequency_context_size": 0}, "frequency_context_size"),
        ({"frequency_context_size": "5"}, "frequency_context_size"),
        ({"xtc_probability": 1.5}, "xtc_probability"),
        ({"xtc_probability": "0.5"}, "xtc_probability"),
        ({"xtc_threshold": 0.6}, "xtc_threshold"),
        ({"xtc_threshold": -0.1}, "xtc_threshold"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"1.5": 1}}, "logit_bias"),
        ({"logit_bias": {"01": 1, "1": 2}}, "logit_bias"),  # one token spelled twice
        ({"logit_bias": {"12": 101}}, "logit_bias"),
        ({"logit_bias": {"12": -101}}, "logit_bias"),
        ({"logit_bias": {"12": "5"}}, "logit_bias"),
        ({"logit_bias": {"12": None}}, "logit_bias"),
        ({"logit_bias": [12]}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ],
)
@pytest.mark.parametrize("route", [CHAT, TEXT])
def test_bad_values_are_400_naming_the_field(
    http: httpx.Client, route: str, fields: dict, param: str
) -> None:
    body = {"messages": USER} if route == CHAT else {"prompt": PROMPT}
    response = http.post(route, json={**body, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert param in error["message"]


def test_300_biases_and_the_limits_of_each_range_are_fine(http: httpx.Client) -> None:
    bias = {str(i): 0.5 for i in range(300)}
    chat(http, logit_bias=bias, top_k=0, min_p=0.0, xtc_threshold=0.5, presence_penalty=-2)
    chat(http, temperature=1.0, min_p=1, xtc_probability=1, xtc_threshold=0, frequency_penalty=2)


def test_a_bias_on_a_token_outside_the_vocabulary_is_a_bad_request(http: httpx.Client) -> None:
    """Checked against the engine's vocabulary before admission; the engine goes on."""
    response = http.post(CHAT, json={"messages": USER, "logit_bias": {"49152": 1}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "logit_bias"
    message = response.json()["error"]["message"]
    assert "logit_bias: token 49152 is not in the model's vocabulary" in message
    chat(http, logit_bias={"49151": 1})  # the last token id is fine, and the engine goes on


@pytest.fixture(scope="module")
def with_defaults(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, token: tuple[int, str]
) -> Iterator[httpx.Client]:
    spec = write_spec(
        tmp_path_factory.mktemp("sampling") / "defaults.yaml",
        tiny_model_dir,
        name="tiny",
        defaults={"max_tokens": N, "temperature": 0, "logit_bias": {str(token[0]): 100}},
    )
    with real_app(spec) as app:
        yield app.http


def test_spec_defaults_apply_and_a_request_field_wins(
    with_defaults: httpx.Client, http: httpx.Client, token: tuple[int, str]
) -> None:
    repeated = token[1]
    response = with_defaults.post(CHAT, json={"messages": USER})
    assert response.json()["choices"][0]["message"]["content"] == repeated
    assert chat(with_defaults) == repeated
    assert chat(with_defaults, logit_bias={}) == chat(http)  # the request's empty map wins
    assert chat(with_defaults, logit_bias={"0": 1}) == chat(http, logit_bias={"0": 1})


def test_max_completion_tokens_wins_over_max_tokens(http: httpx.Client) -> None:
    body = {"messages": USER, "temperature": 0, "max_tokens": 3, "max_completion_tokens": 5}
    usage = http.post(CHAT, json=body).json()["usage"]
    assert usage["completion_tokens"] == 5
