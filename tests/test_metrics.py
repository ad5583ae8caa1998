"""GET /metrics of the app in-process on the real engine, parsed the way Prometheus parses it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp
from tests.scrape import Scrape, scrape

CHAT = "/v1/chat/completions"
ROUTE = "/v1/chat/completions"
USER = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def streamed_usage(http: httpx.Client, body: dict) -> dict:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage is not None
    return usage


def test_counters_and_histograms_follow_the_requests(http: httpx.Client) -> None:
    before = scrape(http)
    usages = []
    for max_tokens in (1, 3, 6):
        body = {"messages": USER, "max_tokens": max_tokens, "temperature": 0, "stop": []}
        response = http.post(CHAT, json=body)
        assert response.status_code == 200
        usages.append(response.json()["usage"])
    usages.append(streamed_usage(http, {"messages": USER, "max_tokens": 4, "temperature": 0}))
    assert http.post(CHAT, json={"messages": []}).status_code == 400
    assert http.get("/v1/nowhere").status_code == 404
    delta = scrape(http) - before

    assert delta.value("mlxdeploy_completion_tokens_total", model="tiny") == sum(
        u["completion_tokens"] for u in usages
    )
    assert delta.value("mlxdeploy_prompt_tokens_total", model="tiny") == sum(
        u["prompt_tokens"] for u in usages
    )
    assert delta.value("mlxdeploy_http_requests_total", route=ROUTE, status="200") == 4
    assert delta.value("mlxdeploy_http_requests_total", route=ROUTE, status="400") == 1
    assert delta.value("mlxdeploy_http_requests_total", route="unmatched", status="404") == 1
    assert delta.value("mlxdeploy_http_request_duration_seconds_count", route=ROUTE) == 5
    assert delta.value("mlxdeploy_time_to_first_token_seconds_count", model="tiny") == 4
    assert delta.value("mlxdeploy_time_to_first_token_seconds_sum", model="tiny") > 0


def test_prefix_cache_hits_count_requests_and_tokens(http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "A long shared preamble. " * 20}],
        "max_tokens": 2,
        "temperature": 0,
        "stop": [],
    }
    assert http.post(CHAT, json=body).status_code == 200  # fills the cache
    before = scrape(http)
    usage = http.post(CHAT, json=body).json()["usage"]
    delta = scrape(http) - before
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert delta.value("mlxdeploy_prefix_cache_hits_total", model="tiny") == 1
    assert delta.value("mlxdeploy_prefix_cache_tokens_total", model="tiny") == cached
    # What the cache holds: the answers' caches, within the byte budget (1 GiB by default).
    after = scrape(http)
    held = after.value("mlxdeploy_prefix_cache_bytes", model="tiny")
    assert 0 < held <= 1 << 30
    assert after.value("mlxdeploy_prefix_cache_entries", model="tiny") >= 1


def test_idle_gauges_and_route_labels(http: httpx.Client) -> None:
    http.get("/v1/models/tiny")
    http.get("/v1/models/other")
    http.delete(CHAT)
    now = scrape(http)
    assert now.value("mlxdeploy_queue_depth", model="tiny") == 0
    assert now.value("mlxdeploy_batch_size", model="tiny") == 0
    assert now.value("mlxdeploy_engine_ready", model="tiny") == 1
    # Model ids and bad paths do not become label values: the route rule does.
    model_route = "/v1/models/<path:model_id>"
    assert now.value("mlxdeploy_http_requests_total", route=model_route, status="200") >= 1
    assert now.value("mlxdeploy_http_requests_total", route=model_route, status="404") >= 1
    assert now.value("mlxdeploy_http_requests_total", route=ROUTE, status="405") >= 1
    labels = {dict(key[1]).get("route") for key in now.samples}
    assert not any(label and "other" in label for label in labels)


@pytest.fixture(scope="module")
def one_slot_app(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApp]:
    spec = write_spec(
        tmp_path_factory.mktemp("metrics") / "one-slot.yaml",
        tiny_model_dir,
        name="tiny",
        stop=[],
        engine={"max_batch_size": 1, "prefill_batch_size": 1},
        limits={"max_tokens": 100000},
    )
    with real_app(spec) as app:
        yield app


def wait_for(http: httpx.Client, check: Callable[[Scrape], bool], timeout: float = 10) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        now = scrape(http)
        if check(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_queue_depth_and_batch_size_while_one_request_waits(one_slot_app: InProcessApp) -> None:
    one_slot = one_slot_app.http
    long = {"messages": USER, "max_tokens": 50000, "stream": True, "temperature": 0}
    with one_slot_app.client(timeout=60) as other:
        with one_slot.stream("POST", CHAT, json=long) as running:
            lines = running.iter_lines()
            while '"content":"' not in next(lines):
                pass
            with other.stream("POST", CHAT, json={**long, "max_tokens": 2}) as waiting:
                assert waiting.status_code == 200
                busy = wait_for(
                    one_slot, lambda s: s.value("mlxdeploy_queue_depth", model="tiny") == 1
                )
                assert busy.value("mlxdeploy_queue_depth", model="tiny") == 1
                assert busy.value("mlxdeploy_batch_size", model="tiny") == 1
                running.close()  # the waiting request takes the slot and finishes
                assert [line for line in waiting.iter_lines() if line][-1] == "data: [DONE]"
    idle = wait_for(one_slot, lambda s: s.value("mlxdeploy_batch_size", model="tiny") == 0)
    assert idle.value("mlxdeploy_batch_size", model="tiny") == 0
    assert idle.value("mlxdeploy_queue_depth", model="tiny") == 0
