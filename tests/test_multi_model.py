"""Two models and an endpoint preset from one spec, driven by the openai client: the app
in-process on real engines, and one `mlxdeploy up` process for how the process starts and stops.

The first model has the same weights as the `tiny` app's, so its greedy answers must equal
that app's; the second has other weights. The preset must answer exactly as its model does
when a client sends the system prompt, the filled-in template and the preset's sampling itself.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import real_app
from tests.inprocess import InProcessApp
from tests.scrape import scrape
from tests.servers import mlxdeploy_command, start_server, stop_server

SYSTEM = "You write one-line summaries."
TEMPLATE = "Summarize in one line:\n{{ input }}\n"
TEXT = "The lighthouse keeper lit the lamp every night for forty years."
FILLED = f"Summarize in one line:\n{TEXT}"
QUESTION = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


@pytest.fixture(scope="module")
def multi_spec(
    tiny_model_dir: Path, other_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("multi")
    (root / "templates").mkdir()
    (root / "templates" / "summarize.jinja").write_text(TEMPLATE)
    spec = root / "multi.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            defaults:
              max_tokens: 16
            models:
              - id: tiny-a
                model: {json.dumps(str(tiny_model_dir))}
              - id: tiny-b
                model: {json.dumps(str(other_tiny_model_dir))}
                defaults:
                  max_tokens: 12
            endpoints:
              summarize:
                model: tiny-b
                description: One-line summaries.
                system_prompt: {json.dumps(SYSTEM)}
                prompt_template: templates/summarize.jinja
                defaults:
                  max_tokens: 6
                  temperature: 0
            """
        )
    )
    return spec


@pytest.fixture(scope="module")
def multi_app(multi_spec: Path) -> Iterator[InProcessApp]:
    with real_app(multi_spec) as app:
        yield app


@pytest.fixture(scope="module")
def client(multi_app: InProcessApp) -> openai.OpenAI:
    return multi_app.openai(max_retries=0)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(**kwargs)


def test_models_lists_both_models_and_the_preset(client: openai.OpenAI) -> None:
    cards = {m.id: m for m in client.models.list()}
    assert list(cards) == ["tiny-a", "tiny-b", "summarize"]
    preset = client.models.retrieve("summarize")
    extra = preset.model_extra or {}
    assert (extra["parent"], extra["description"]) == ("tiny-b", "One-line summaries.")
    assert (extra["state"], extra["load"], extra["pinned"]) == ("ready", "eager", False)  # tiny-b's


def test_requests_route_by_model(
    client: openai.OpenAI, multi_app: InProcessApp, tiny_app: InProcessApp
) -> None:
    single = tiny_app.openai(max_retries=0)
    asked = dict(messages=QUESTION, max_tokens=10, temperature=0)
    a = chat(client, model="tiny-a", **asked)
    b = chat(client, model="tiny-b", **asked)
    reference = chat(single, model="tiny", **asked)
    assert (a.model, b.model) == ("tiny-a", "tiny-b")
    assert a.choices[0].message.content == reference.choices[0].message.content  # same weights
    assert b.choices[0].message.content != a.choices[0].message.content  # other weights
    without_model = multi_app.http.post(
        "/v1/chat/completions", json={"messages": QUESTION, **asked}
    ).json()
    assert without_model["model"] == "tiny-a"  # the first model
    assert without_model["choices"][0]["message"]["content"] == a.choices[0].message.content


def test_each_model_has_its_own_defaults(client: openai.OpenAI) -> None:
    a = chat(client, model="tiny-a", messages=QUESTION, temperature=0)
    b = chat(client, model="tiny-b", messages=QUESTION, temperature=0)
    # Random weights rarely stop early; when they do, the default is only an upper bound.
    assert a.usage.completion_tokens <= 16 and b.usage.completion_tokens <= 12
    assert (a.usage.completion_tokens == 16) == (a.choices[0].finish_reason == "length")
    assert (b.usage.completion_tokens == 12) == (b.choices[0].finish_reason == "length")


def test_the_preset_is_its_model_with_prompt_and_sampling_filled_in(client: openai.OpenAI) -> None:
    preset = chat(client, model="summarize", messages=[{"role": "user", "content": TEXT}])
    by_hand = chat(
        client,
        model="tiny-b",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": FILLED}],
        max_tokens=6,
        temperature=0,
    )
    assert preset.model == "summarize"
    assert preset.choices[0].message.content == by_hand.choices[0].message.content
    assert preset.usage.prompt_tokens == by_hand.usage.prompt_tokens
    assert preset.usage.completion_tokens == by_hand.usage.completion_tokens <= 6


def test_the_preset_at_its_own_path(client: openai.OpenAI, multi_app: InProcessApp) -> None:
    expected = chat(client, model="summarize", messages=[{"role": "user", "content": TEXT}])
    url = "/v1/endpoints/summarize"
    reply = multi_app.http.post(url, json={"messages": [{"role": "user", "content": TEXT}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "summarize"
    assert reply.json()["choices"][0]["message"]["content"] == expected.choices[0].message.content
    via_sdk = client.post(
        "/endpoints/summarize",
        body={"model": "summarize", "messages": [{"role": "user", "content": TEXT}]},
        cast_to=httpx.Response,
    )
    assert via_sdk.json()["choices"] == reply.json()["choices"]
    wrong = multi_app.http.post(url, json={"model": "tiny-a", "messages": QUESTION})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "model"


def test_the_preset_streams_the_same_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": TEXT}]
    whole = chat(client, model="summarize", messages=messages)
    chunks = list(chat(client, model="summarize", messages=messages, stream=True))
    assert {c.model for c in chunks} == {"summarize"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_a_system_message_of_the_request_wins(client: openai.OpenAI) -> None:
    own = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": TEXT}]
    preset = chat(client, model="summarize", messages=own)
    by_hand = chat(
        client,
        model="tiny-b",
        messages=[own[0], {"role": "user", "content": FILLED}],
        max_tokens=6,
        temperature=0,
    )
    assert preset.choices[0].message.content == by_hand.choices[0].message.content


def test_text_completions_route_and_fill_the_template(client: openai.OpenAI) -> None:
    preset = client.completions.create(model="summarize", prompt=TEXT)
    by_hand = client.completions.create(model="tiny-b", prompt=FILLED, max_tokens=6, temperature=0)
    assert preset.model == "summarize"
    assert preset.choices[0].text == by_hand.choices[0].text
    assert preset.usage.prompt_tokens == by_hand.usage.prompt_tokens  # type: ignore[union-attr]


def test_unknown_models_are_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, model="tiny-c", messages=QUESTION)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tiny-c")


def test_both_models_generate_at_once(client: openai.OpenAI, multi_app: InProcessApp) -> None:
    before = scrape(multi_app.http)
    jobs = [("tiny-a" if i % 2 else "tiny-b", i) for i in range(12)]

    def ask(job: tuple[str, int]) -> Any:
        model, i = job
        content = f"Story number {i} about a lighthouse."
        return chat(client, model=model, messages=[{"role": "user", "content": content}])

    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(ask, jobs))
    assert [r.model for r in replies] == [model for model, _ in jobs]
    assert all(r.usage.completion_tokens >= 1 for r in replies)
    delta = scrape(multi_app.http) - before
    for model in ("tiny-a", "tiny-b"):
        generated = sum(r.usage.completion_tokens for r in replies if r.model == model)
        assert delta.value("mlxdeploy_completion_tokens_total", model=model) == generated
        assert delta.value("mlxdeploy_time_to_first_token_seconds_count", model=model) == 6
    health = multi_app.http.get("/health").json()
    assert health["status"] == "ok"
    assert [m["id"] for m in health["models"]] == ["tiny-a", "tiny-b"]


def broken_spec(tiny_model_dir: Path, root: Path) -> tuple[Path, Path]:
    """A spec whose first model has a config and no weights, then a good one."""
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    spec = root / "spec.yaml"
    spec.write_text(
        f"models:\n  - {{id: broken, model: {json.dumps(str(broken))}}}\n"
        f"  - {{id: good, model: {json.dumps(str(tiny_model_dir))}}}\n"
    )
    return spec, broken


@pytest.mark.process
def test_one_process_stops_cleanly_or_stops_at_a_model_that_cannot_load(
    multi_spec: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`mlxdeploy up` itself: with both models it serves and exits 0 on SIGTERM; a model that
    cannot load stops it (before the others load) with one last line naming that model."""
    with start_server(multi_spec) as server:
        client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        assert chat(client, model="tiny-b", messages=QUESTION, max_tokens=2).model == "tiny-b"
        code = stop_server(server)
        log = server.log()
    assert code == 0, log
    assert "Traceback" not in log

    spec, broken = broken_spec(tiny_model_dir, tmp_path)
    done = subprocess.run(
        mlxdeploy_command("up", str(spec), "--port", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(broken) in last, done.stderr
