"""One model split over 2 ranks (the spec's `distributed`): a real `mlxdeploy up` that starts
them through mlx.launch on the ring backend, tensor parallel, on this machine. Its greedy
answers are the single-process server's (`tiny_server`), token for token; a rank killed
mid-stream ends the stream with an error event and `up` with a non-zero status."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from mlxdeploy.cli import app
from tests.conftest import DEMO_MODEL, TINY_CONFIG, make_tiny_model, make_wide_model, write_spec
from tests.processes import alive, descendants
from tests.servers import RunningServer, start_server, stop_server

RANKS = 2
PROMPTS = [
    "Tell me a story about a lighthouse.",
    "What is the capital of France?",
    "List three colours.",
    "Write a haiku about rain.",
]
TOKENS = 24
TINY_QWEN2 = {**TINY_CONFIG, "model_type": "qwen2", "num_hidden_layers": 4}
LOGPROB_TOLERANCE = 1e-3  # the ranks' partial sums add up in another order than one matmul


def write_sharded_spec(spec_dir: Path, model: Path, **fields: object) -> Path:
    distributed = {"ranks": RANKS, "strategy": "tensor"}
    return write_spec(
        spec_dir / "sharded.yaml",
        model,
        name="tiny",
        defaults={"max_tokens": 16},
        distributed=distributed,
        **fields,
    )


@pytest.fixture(scope="module")
def sharded(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    spec = write_sharded_spec(tmp_path_factory.mktemp("sharded"), tiny_model_dir)
    with start_server(spec) as running:
        yield running


def client_of(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=120)


def greedy_request(prompt: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": "tiny", "messages": messages, "max_tokens": TOKENS, "temperature": 0}


def greedy(client: openai.OpenAI, prompt: str) -> tuple[str, list[float]]:
    """The greedy answer, and the logprobs of its tokens and of each step's runners-up."""
    request = greedy_request(prompt)
    reply = client.chat.completions.create(**request, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    scores = [t.logprob for t in choice.logprobs.content]
    scores += [alt.logprob for t in choice.logprobs.content for alt in t.top_logprobs]
    return choice.message.content or "", scores


def assert_same_answers(one: openai.OpenAI, two: openai.OpenAI) -> None:
    for prompt in PROMPTS:
        text, logprobs = greedy(two, prompt)
        expected_text, expected_logprobs = greedy(one, prompt)
        assert text == expected_text
        assert logprobs == pytest.approx(expected_logprobs, abs=LOGPROB_TOLERANCE)


def streamed(client: openai.OpenAI, prompt: str) -> str:
    stream = client.chat.completions.create(**greedy_request(prompt), stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@pytest.mark.process
def test_the_ready_line_names_the_ranks(sharded: RunningServer) -> None:
    assert f"({RANKS} ranks, tensor parallel)" in sharded.log()
    assert "rank 1: model tiny ready" in sharded.log()  # the follower loaded its shard


@pytest.mark.process
def test_greedy_chat_equals_one_process(sharded: RunningServer, tiny_server: RunningServer) -> None:
    assert_same_answers(client_of(tiny_server), client_of(sharded))


@pytest.mark.process
def test_greedy_streams_equal_one_process(
    sharded: RunningServer, tiny_server: RunningServer
) -> None:
    one, two = client_of(tiny_server), client_of(sharded)
    for prompt in PROMPTS[:2]:
        assert streamed(two, prompt) == greedy(one, prompt)[0]


@pytest.mark.process
def test_concurrent_requests_batch_on_every_rank(
    sharded: RunningServer, tiny_server: RunningServer
) -> None:
    """Requests arriving together share decode steps: the ranks admit and retire them in
    the same order, or the answers (and the ranks' caches) would part."""
    one, two = client_of(tiny_server), client_of(sharded)
    expected = [greedy(one, prompt)[0] for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda prompt: streamed(two, prompt), PROMPTS * 2))
    assert got == expected * 2


@pytest.mark.process
def test_a_client_that_goes_away_leaves_the_ranks_in_step(
    sharded: RunningServer, tiny_server: RunningServer
) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", f"{sharded.api_url}/chat/completions", json=body) as response:
        next(response.iter_lines())  # the stream has started; leave mid-answer
    assert_same_answers(client_of(tiny_server), client_of(sharded))  # the ranks still agree


@pytest.mark.process
def test_every_api_and_field_on_ranks_equals_one_process(
    sharded: RunningServer, tiny_server: RunningServer
) -> None:
    """Choices, a schema, stop words and the Messages API take the same paths on every rank."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    bodies = [
        ("/v1/chat/completions", {**greedy_request(PROMPTS[0]), "n": 2}),
        ("/v1/chat/completions", {**greedy_request(PROMPTS[1]), "stop": ["e"]}),
        (
            "/v1/chat/completions",
            {
                **greedy_request(PROMPTS[2]),
                "max_tokens": 40,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": schema},
                },
            },
        ),
        ("/v1/messages", {**greedy_request(PROMPTS[3]), "max_tokens": TOKENS}),
    ]
    for path, body in bodies:
        got = httpx.post(sharded.base_url + path, json=body, timeout=120)
        expected = httpx.post(tiny_server.base_url + path, json=body, timeout=120)
        assert got.status_code == expected.status_code == 200, got.text
        assert answers(got.json()) == answers(expected.json())


def answers(body: dict[str, Any]) -> list[Any]:
    if "choices" in body:
        return [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]]
    return [body["content"], body["stop_reason"]]


@pytest.mark.process
def test_sigterm_stops_every_rank_with_status_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    with start_server(write_sharded_spec(tmp_path, tiny_model_dir)) as server:
        pids = rank_pids(server.process.pid)
        assert sorted(pids) == [0, 1], pids
        assert stop_server(server, timeout=60) == 0
    assert not any(alive(pid) for pid in pids.values())
    assert "rank 1: " in server.log() and "Traceback" not in server.log()


@pytest.mark.process
def test_pipeline_parallel_equals_one_process(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whole layers per rank (qwen2 splits that way; llama does not), warm-up on."""
    spec_dir = tmp_path_factory.mktemp("pipeline")
    (spec_dir / "model").mkdir()
    model = make_tiny_model(spec_dir / "model", demo_dir, 0, TINY_QWEN2)
    single = write_spec(spec_dir / "one.yaml", model, name="tiny")
    split = write_sharded_spec(spec_dir, model, engine={"warmup": True})
    split.write_text(split.read_text().replace('"tensor"', '"pipeline"'))
    with start_server(single) as one, start_server(split) as two:
        assert f"({RANKS} ranks, pipeline parallel)" in two.log()
        assert_same_answers(client_of(one), client_of(two))


def rank_pids(root: int) -> dict[int, int]:
    """rank -> pid of the ranks among `root`'s descendants (mlx.launch sets MLX_RANK)."""
    return {
        int(p.environ["MLX_RANK"]): p.pid
        for p in descendants(root)
        if "mlxdeploy.serve.sharded.rank" in p.command and "MLX_RANK" in p.environ
    }


@pytest.mark.process
def test_a_rank_killed_mid_stream_fails_the_stream_and_up(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = write_sharded_spec(tmp_path, tiny_model_dir)
    with start_server(spec) as server:
        ranks = rank_pids(server.process.pid)
        assert sorted(ranks) == [0, 1], ranks
        events = stream_until(server, lambda: os.kill(ranks[1], signal.SIGKILL))
        assert '"error"' in events[-1] and "the distributed model stopped" in events[-1]
        assert wait_exit(server) not in (None, 0)  # it stopped, and says it failed
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in ranks.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in ranks.values())


@pytest.mark.process
def test_a_rank_that_stops_answering_fails_the_stream_and_up(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A rank alive but silent (SIGSTOP: its sockets stay open, so no collective fails) is
    found by the stall timeout: the stream ends with an error, `up` with a non-zero status."""
    distributed = {"ranks": RANKS, "stall_timeout_seconds": 3}
    spec = write_spec(tmp_path / "stall.yaml", tiny_model_dir, name="tiny", distributed=distributed)
    with start_server(spec) as server:
        ranks = rank_pids(server.process.pid)
        events = stream_until(server, lambda: os.kill(ranks[1], signal.SIGSTOP))
        assert "a rank stopped answering (a turn took over 3 s)" in events[-1]
        os.kill(ranks[1], signal.SIGKILL)  # a stopped process never reads mlx.launch's SIGTERM
        assert wait_exit(server) not in (None, 0)
    assert "a rank stopped answering" in server.log() and "Traceback" not in server.log()


def stream_until(server: RunningServer, act: Callable[[], None]) -> list[str]:
    """A long stream's data events, with `act` run once the third has come."""
    body = {**greedy_request("hi"), "max_tokens": 1500, "stream": True}
    events: list[str] = []
    url = f"{server.api_url}/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[len("data: ") :])
            if len(events) == 3:
                act()
    assert events[-1] != "[DONE]"
    return events


def wait_exit(server: RunningServer, timeout: float = 60) -> int | None:
    deadline = time.monotonic() + timeout
    while server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.process.returncode


def test_validate_rejects_a_model_whose_heads_do_not_split(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    for item in tiny_model_dir.iterdir():
        (odd / item.name).write_bytes(item.read_bytes())
    config = (odd / "config.json").read_text()
    (odd / "config.json").write_text(
        config.replace('"num_attention_heads": 4', '"num_attention_heads": 3').replace(
            '"num_key_value_heads": 2', '"num_key_value_heads": 3'
        )
    )
    spec = write_sharded_spec(tmp_path, odd)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"{spec}:1:8: model: ")
    assert "3 attention heads" in line and "not divisible by 2" in line


def test_validate_rejects_the_demo_model_over_2_ranks(tmp_path: Path) -> None:
    """SmolLM2-135M has 9 heads: the split its GGUF header says cannot be made."""
    spec = write_spec(tmp_path / "demo.yaml", DEMO_MODEL, distributed={"ranks": RANKS})
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"{spec}:1:8: model: tensor parallelism splits the 9 attention heads "
        "(num_attention_heads) over 2 ranks, and 9 is not divisible by 2; use a number of "
        "ranks that divides 9"
    )
    spec.write_text(spec.read_text().replace('"ranks": 2', '"ranks": 3'))
    assert CliRunner().invoke(app, ["validate", str(spec)]).exit_code == 0  # 9, 3, 1536


def test_validate_rejects_a_strategy_the_architecture_lacks(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "pipe.yaml", tiny_model_dir, distributed={"ranks": 2, "strategy": "pipeline"}
    )
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    assert "cannot split 'llama' models by layers (pipeline)" in result.output


def test_validate_accepts_the_sharded_spec(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["validate", str(write_sharded_spec(tmp_path, tiny_model_dir))]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.process
def test_quantized_keys_on_ranks_equal_one_process(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`engine.kv_bits` on a split model: each rank keeps its heads' keys and values
    quantized, and the answers, one at a time and batched, are one process's with the same
    kv_bits (which are not its full-precision answers)."""
    spec_dir = tmp_path_factory.mktemp("quantized-ranks")
    (spec_dir / "model").mkdir()
    model = make_wide_model(spec_dir / "model", demo_dir)
    engine = {"kv_bits": 4, "kv_group_size": 32}
    plain = write_spec(spec_dir / "plain.yaml", model, name="tiny", defaults={"max_tokens": 16})
    single = write_spec(
        spec_dir / "one.yaml", model, name="tiny", defaults={"max_tokens": 16}, engine=engine
    )
    split = write_sharded_spec(spec_dir, model, engine=engine)
    with start_server(single) as one, start_server(split) as two:
        assert_same_answers(client_of(one), client_of(two))
        expected = [greedy(client_of(one), prompt)[0] for prompt in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            got = list(pool.map(lambda prompt: streamed(client_of(two), prompt), PROMPTS * 2))
        assert got == expected * 2
    with start_server(plain) as full:
        unquantized = [greedy(client_of(full), prompt)[0] for prompt in PROMPTS]
    assert unquantized != expected, "4-bit keys changed no answer: the comparison is vacuous"
