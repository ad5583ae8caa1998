"""`seed` through real inference on the tiny model: the same seed and request give the same
text, alone or while other requests (other seeds, other settings, unseeded) share the batch;
different seeds give different texts; a bad seed is a 400 naming it. And the decode step's
grouping: one sampler call per distinct sampler, each row getting its own sampler's token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import mlx.core as mx
import pytest

from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.picking import sample_rows
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
N = 24
SAMPLED = {"temperature": 1.0, "max_tokens": N}
FILTERED = {"top_p": 0.9, "top_k": 40, "min_p": 0.01, "xtc_probability": 0.5}
# The tiny model's next-token distribution is nearly flat (the likeliest token ~0.001): only
# a low XTC threshold excludes anything, and only a cool temperature makes its coin (exclude
# the likeliest tokens or not) decide the text.
XTC = {"temperature": 0.01, "xtc_probability": 0.5, "xtc_threshold": 0.0001}


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def chat(http: httpx.Client, content: str = "Tell me a story", **fields: Any) -> str:
    body = {"messages": [{"role": "user", "content": content}], **SAMPLED, **fields}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def text(http: httpx.Client, content: str = "Once upon a time", **fields: Any) -> str:
    response = http.post(TEXT, json={"prompt": content, **SAMPLED, **fields})
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


Complete = Callable[..., str]
ROUTES = pytest.mark.parametrize("complete", [chat, text])


@ROUTES
def test_the_same_seed_gives_the_same_text(http: httpx.Client, complete: Complete) -> None:
    first = complete(http, seed=42)
    assert complete(http, seed=42) == first
    assert complete(http, seed=7) != first
    assert complete(http, seed=-(1 << 63)) != complete(http, seed=(1 << 63) - 1)


@ROUTES
def test_unseeded_sampling_stays_random(http: httpx.Client, complete: Complete) -> None:
    assert len({complete(http) for _ in range(3)}) > 1


@ROUTES
@pytest.mark.parametrize("filters", [FILTERED, XTC])
def test_the_seed_holds_with_every_filter(
    http: httpx.Client, complete: Complete, filters: dict[str, Any]
) -> None:
    first = complete(http, seed=5, **filters)
    assert complete(http, seed=5, **filters) == first
    assert complete(http, seed=6, **filters) != first


@ROUTES
def test_greedy_ignores_the_seed(http: httpx.Client, complete: Complete) -> None:
    greedy = complete(http, temperature=0)
    assert complete(http, temperature=0, seed=1) == complete(http, temperature=0, seed=2) == greedy


NEIGHBOURS: list[dict[str, Any]] = [
    {"content": "Hello there", "max_tokens": 40},
    {"content": "Write a poem", "seed": 42, "max_tokens": 40},  # the same seed, another prompt
    {"content": "What is a lighthouse?", "seed": 9, "top_k": 5, "max_tokens": 40},
    {"content": "Count to ten", "temperature": 0, "max_tokens": 40},
    {"content": "Name a colour", "top_p": 0.5, "max_tokens": 40},
    {"content": "Describe the sea", "seed": 3, **FILTERED, "max_tokens": 40},
    {"content": "Say something", "presence_penalty": 1.0, **XTC, "max_tokens": 40},
    {"content": "A short joke", "min_p": 0.1, "logit_bias": {"100": 5}, "max_tokens": 40},
]


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of rows of every decode step (proof the requests shared the batch)."""
    sizes: list[int] = []
    slots = SlotGenerator._decode_slots

    def counted(self: SlotGenerator) -> list[int]:
        chosen = slots(self)
        sizes.append(len(chosen))
        return chosen

    monkeypatch.setattr(SlotGenerator, "_decode_slots", counted)
    yield sizes


@ROUTES
@pytest.mark.parametrize("fields", [{"seed": 42}, {"seed": 11, **FILTERED}, {"seed": 8, **XTC}])
def test_the_seeded_text_is_the_same_alone_and_in_a_busy_batch(
    http: httpx.Client, complete: Complete, fields: dict[str, Any], batch_sizes: list[int]
) -> None:
    alone = complete(http, **fields)
    batch_sizes.clear()

    def one(case: dict[str, Any]) -> str:
        return complete(http, **case)

    cases = [fields, *NEIGHBOURS]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(pool.map(one, cases))
    assert together[0] == alone
    assert max(batch_sizes) >= 5, batch_sizes  # the seeded request had company


@pytest.mark.parametrize("seed", ["1", 1.5, 1.0, True, 1 << 63, -(1 << 63) - 1, [1], {}])
@pytest.mark.parametrize(
    ("path", "body"),
    [(CHAT, {"messages": [{"role": "user", "content": "hi"}]}), (TEXT, {"prompt": "hi"})],
)
def test_a_bad_seed_is_400(http: httpx.Client, path: str, body: dict, seed: Any) -> None:
    response = http.post(path, json={**body, "max_tokens": 1, "seed": seed})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "seed")


def test_the_official_client_sends_a_seed(tiny_app: InProcessApp) -> None:
    client = tiny_app.openai(api_key="unused", max_retries=0)

    def ask(seed: int) -> str | None:
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], seed=seed, **SAMPLED
        )
        return reply.choices[0].message.content

    assert ask(3) == ask(3) != ask(4)


class Fake:
    """A sampler that answers `mark` plus the row's first logit, and counts its calls."""

    def __init__(self, mark: int):
        self.mark = mark
        self.calls: list[int] = []

    def __call__(self, logits: mx.array) -> mx.array:
        self.calls.append(int(logits.shape[0]))
        return (logits[:, 0] + self.mark).astype(mx.uint32)


def sample(samplers: list[Any], fallback: Any = None) -> list[int]:
    logits = mx.arange(len(samplers) or 1, dtype=mx.float32)[:, None] * mx.ones((1, 4))
    chosen = [s or fallback for s in samplers] or [fallback]
    tokens: list[int] = sample_rows(logits, chosen).tolist()  # type: ignore[assignment]
    return tokens


def test_each_distinct_sampler_is_called_once_on_its_rows() -> None:
    shared, a, b = Fake(100), Fake(200), Fake(300)
    samplers = [shared, a, shared, shared, b, shared, a]
    assert sample(samplers) == [100, 201, 102, 103, 304, 105, 206]
    assert (shared.calls, a.calls, b.calls) == ([4], [2], [1])


def test_thirty_one_shared_rows_and_one_own_cost_two_calls() -> None:
    shared, own = Fake(1000), Fake(2000)
    assert sample([*[shared] * 16, own, *[shared] * 15]) == [
        *(1000 + e for e in range(16)),
        2016,
        *(1000 + e for e in range(17, 32)),
    ]
    assert (shared.calls, own.calls) == ([31], [1])


def test_one_sampler_for_all_rows_is_one_call_and_none_is_the_fallback() -> None:
    shared, fallback = Fake(10), Fake(50)
    assert sample([shared] * 3) == [10, 11, 12] and shared.calls == [3]
    assert sample([None, shared, None], fallback) == [50, 11, 52]
    assert fallback.calls == [2]
    assert sample([], fallback) == [50] and fallback.calls == [2, 1]
