"""Log-probabilities: OpenAI's chat shape and the legacy completions shape, whole and
streamed, computed by the real engine for the requests that ask (and only those).

The reported tokens join to exactly the answer's text (stop words and characters split
across tokens included); the values match mlx-lm's own log-probabilities of the same step."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlx.core as mx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlx_lm.generate import BatchGenerator
from mlx_lm.utils import load

from mlxdeploy.engine.batch import FastBatchGenerator
from mlxdeploy.engine.logprobs import TokenScores
from mlxdeploy.engine.sampling import greedy
from mlxdeploy.engine.text import TextStream
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "Tell me about lighthouses."}]
PROMPT = "Once upon a time, in a lighthouse by the sea,"


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"messages": USER, "max_tokens": 12, "temperature": 0, **fields}


def assert_chat_tokens(tokens: list[dict[str, Any]], content: str, top: int) -> None:
    assert tokens, "no tokens were reported"
    assert "".join(t["token"] for t in tokens) == content
    for t in tokens:
        assert t["logprob"] <= 0 and t["bytes"] == list(t["token"].encode())
        alternatives = t["top_logprobs"]
        assert len(alternatives) == top
        values = [a["logprob"] for a in alternatives]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert all(a["bytes"] == list(a["token"].encode()) for a in alternatives)


# -- chat completions -------------------------------------------------------------------------


@pytest.mark.parametrize("top", [0, 1, 5, 20])
def test_chat_tokens_join_to_the_content(http: httpx.Client, top: int) -> None:
    choice = post(http, CHAT, chat_body(logprobs=True, top_logprobs=top))["choices"][0]
    assert choice["logprobs"]["refusal"] is None
    assert_chat_tokens(choice["logprobs"]["content"], choice["message"]["content"], top)


def test_greedy_tokens_are_the_most_likely_ones(http: httpx.Client) -> None:
    choice = post(http, CHAT, chat_body(logprobs=True, top_logprobs=3))["choices"][0]
    for t in choice["logprobs"]["content"]:
        best = t["top_logprobs"][0]
        assert (best["token"], best["logprob"]) == (t["token"], t["logprob"])


def test_logprobs_true_alone_reports_no_alternatives(http: httpx.Client) -> None:
    choice = post(http, CHAT, chat_body(logprobs=True))["choices"][0]
    assert_chat_tokens(choice["logprobs"]["content"], choice["message"]["content"], 0)


def test_streamed_chat_logprobs_equal_the_whole_answer(http: httpx.Client) -> None:
    body = chat_body(logprobs=True, top_logprobs=4)
    whole = post(http, CHAT, body)["choices"][0]["logprobs"]["content"]
    chunks = [c["choices"][0] for c in stream(http, CHAT, body) if c["choices"]]
    streamed = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["content"]]
    assert_same_tokens(streamed, whole)
    for c in chunks:  # each chunk carries the tokens its delta completes
        if c["logprobs"] is not None:
            joined = "".join(t["token"] for t in c["logprobs"]["content"])
            assert joined == c["delta"]["content"]
    assert chunks[0]["logprobs"] is None and chunks[-1]["logprobs"] is None  # role, finish


def assert_same_tokens(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [t["token"] for t in got] == [t["token"] for t in want]
    for a, b in zip(got, want, strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
        assert [x["token"] for x in a["top_logprobs"]] == [x["token"] for x in b["top_logprobs"]]


def test_a_request_without_logprobs_gets_null(http: httpx.Client) -> None:
    assert post(http, CHAT, chat_body())["choices"][0]["logprobs"] is None
    assert post(http, CHAT, chat_body(logprobs=False))["choices"][0]["logprobs"] is None
    assert all(c["choices"][0]["logprobs"] is None for c in stream(http, CHAT, chat_body()))
    assert post(http, TEXT, text_body())["choices"][0]["logprobs"] is None
    assert all(
        c["choices"][0]["logprobs"] is None for c in stream(http, TEXT, text_body()) if c["choices"]
    )


def test_a_stop_word_cuts_the_tokens_where_it_cuts_the_text(http: httpx.Client) -> None:
    """A stop word that starts inside a token: that token is reported up to the cut."""
    free = post(http, TEXT, text_body(logprobs=0))["choices"][0]["logprobs"]["tokens"]
    text = "".join(free)
    cuts = [(i, sum(map(len, free[:i]))) for i in range(1, len(free)) if len(free[i - 1]) > 1]
    # a stop word that spans a boundary between tokens and first occurs there
    at, boundary = next((i, b) for i, b in cuts if text.find(text[b - 1 : b + 1]) == b - 1)
    stop = text[boundary - 1 : boundary + 1]
    choice = post(http, TEXT, text_body(logprobs=2, stop=stop))["choices"][0]
    assert choice["text"] == text[: boundary - 1] and choice["finish_reason"] == "stop"
    tokens = choice["logprobs"]["tokens"]
    assert "".join(tokens) == choice["text"]
    assert tokens[:-1] == free[: at - 1] and tokens[-1] == free[at - 1][:-1]  # cut inside
    chunks = [c["choices"][0] for c in stream(http, TEXT, text_body(logprobs=2, stop=stop))]
    streamed = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
    assert streamed == tokens and "".join(c["text"] for c in chunks) == choice["text"]


def test_logprobs_are_of_the_processed_logits(http: httpx.Client, tiny_app: InProcessApp) -> None:
    """logit_bias changes what is reported: the favoured token is then all but certain."""
    plain = post(http, CHAT, chat_body(logprobs=True, max_tokens=1))["choices"][0]
    token = plain["logprobs"]["content"][0]
    biased_id = 1000
    body = chat_body(logprobs=True, max_tokens=1, logit_bias={str(biased_id): 100})
    biased = post(http, CHAT, body)["choices"][0]["logprobs"]["content"][0]
    assert biased["token"] != token["token"]
    assert biased["logprob"] > -1e-3  # after the bias, not of the raw logits


# -- text completions -------------------------------------------------------------------------


def text_body(**fields: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, **fields}


def assert_legacy(logprobs: dict[str, Any], text: str, n: int, offset: int = 0) -> None:
    tokens = logprobs["tokens"]
    assert tokens and "".join(tokens) == text
    assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(tokens)
    starts = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert logprobs["text_offset"] == starts
    rows = zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    for token, value, top in rows:
        assert value <= 0 and top[token] == value  # the sampled token is always there
        assert len(top) == max(n, 1)  # greedy: the sampled token is the likeliest
        assert value == max(top.values())


@pytest.mark.parametrize("n", [0, 1, 5])
def test_completion_logprobs_have_the_legacy_shape(http: httpx.Client, n: int) -> None:
    choice = post(http, TEXT, text_body(logprobs=n))["choices"][0]
    assert_legacy(choice["logprobs"], choice["text"], n)


def test_streamed_completion_logprobs_equal_the_whole_answer(http: httpx.Client) -> None:
    whole = post(http, TEXT, text_body(logprobs=3))["choices"][0]
    chunks = [c["choices"][0] for c in stream(http, TEXT, text_body(logprobs=3)) if c["choices"]]
    offset, merged = 0, {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        if c["logprobs"] is None:
            assert c["finish_reason"] is not None and c["text"] == ""
            continue
        assert_legacy(c["logprobs"], c["text"], 3, offset)
        offset += len(c["text"])
        for key, values in c["logprobs"].items():
            merged[key].extend(values)
    assert merged["tokens"] == whole["logprobs"]["tokens"]
    assert merged["text_offset"] == whole["logprobs"]["text_offset"]
    assert merged["token_logprobs"] == pytest.approx(whole["logprobs"]["token_logprobs"], abs=1e-4)


# -- what is refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        (CHAT, {"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        (CHAT, {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        (CHAT, {"logprobs": 1}, "logprobs"),  # a number is not a bool
        (TEXT, {"logprobs": 6}, "logprobs"),
        (TEXT, {"logprobs": True}, "logprobs"),  # a bool is not a number
    ],
)
def test_out_of_range_logprobs_are_400(
    http: httpx.Client, path: str, fields: dict[str, Any], param: str
) -> None:
    body = chat_body(**fields) if path == CHAT else text_body(**fields)
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_logprobs_with_tools_are_400(http: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = http.post(CHAT, json=chat_body(logprobs=True, tools=[tool]))
    assert response.status_code == 400 and response.json()["error"]["param"] == "logprobs"
    body = chat_body(logprobs=True, tools=[tool], tool_choice="none")  # nothing can be called
    assert http.post(CHAT, json=body).status_code == 200


# -- a batch that mixes both ------------------------------------------------------------------


def test_a_mixed_batch_answers_as_each_request_alone(http: httpx.Client) -> None:
    prompts = [f"{PROMPT} {word}" for word in ("red", "green", "blue", "gold", "grey", "pink")]
    bodies = [text_body(prompt=p, max_tokens=24, logprobs=2 if i % 2 else None) for i, p in
              enumerate(prompts)]  # fmt: skip
    alone = [post(http, TEXT, b)["choices"][0] for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post(http, TEXT, b)["choices"][0], bodies))
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    for body, choice in zip(bodies, together, strict=True):
        if body["logprobs"] is None:
            assert choice["logprobs"] is None
        else:
            assert_legacy(choice["logprobs"], choice["text"], 2)


# -- the engine's step against mlx-lm's ------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))[0]


def run_generator(
    generator: Any, prompts: list[list[int]], steps: int, **insert: Any
) -> dict[int, list[Any]]:
    uids = generator.insert(
        prompts, max_tokens=[steps] * len(prompts), samplers=[greedy] * len(prompts), **insert
    )
    out: dict[int, list[Any]] = {uid: [] for uid in uids}
    while any(len(responses) < steps for responses in out.values()):
        for response in generator.next_generated():
            out[response.uid].append(response)
    return {uids.index(uid): responses for uid, responses in out.items()}


def test_the_step_reports_mlx_lms_logprobs_for_the_rows_that_ask(model: Any) -> None:
    prompts = [[100 + 7 * i + j for j in range(5 + 3 * i)] for i in range(4)]
    asked = [3, None, 0, None]
    ours = run_generator(
        FastBatchGenerator(model, completion_batch_size=8, prefill_batch_size=8),
        prompts,
        10,
        logprobs=asked,
    )
    reference = run_generator(
        BatchGenerator(model, completion_batch_size=8, prefill_batch_size=8), prompts, 10
    )
    for row, k in enumerate(asked):
        assert [r.token for r in ours[row]] == [r.token for r in reference[row]]
        for mine, theirs in zip(ours[row], reference[row], strict=True):
            if k is None:
                assert mine.logprobs is None
                continue
            assert isinstance(mine.logprobs, TokenScores)
            full = theirs.logprobs
            assert mine.logprobs.logprob == pytest.approx(full[theirs.token].item(), abs=1e-4)
            best = mx.argsort(-full)[:k].tolist()
            assert [t for t, _ in mine.logprobs.top] == best
            assert [v for _, v in mine.logprobs.top] == pytest.approx(
                full[mx.array(best)].tolist() if best else [], abs=1e-4
            )


# -- text alignment, on a toy byte-level vocabulary -------------------------------------------

# Multi-byte characters split across tokens, as byte-level BPE splits them.
VOCAB = [b" ", b"a", b"b", b"\n", b"\xc3", b"\xa9", b" the", b"</s>", b"<", b"/", b"s", b">"]


def decode(tokens: list[int]) -> str:
    return b"".join(VOCAB[t] for t in tokens).decode("utf-8", errors="replace")


def scored_run(tokens: list[int], stop: tuple[str, ...], eos: bool) -> tuple[list[str], list]:
    """The worker's use of a stream: one piece per token, logprobs asked for each piece."""
    text = TextStream.create(decode, stop)
    pieces: list[str] = []
    reported: list = []
    for i, token in enumerate(tokens):
        scores = TokenScores(-(i + 1.0), ((token, -(i + 1.0)), ((token + 1) % len(VOCAB), -50.0)))
        piece = text.add(token, scores)
        if not text.stopped and i == len(tokens) - 1 and not eos:
            piece += text.finish()  # the length limit
        pieces.append(piece)
        reported.append(text.logprobs(piece))
        if text.stopped:
            return pieces, reported
    if eos:
        piece = text.finish()
        pieces.append(piece)
        reported.append(text.logprobs(piece))
    return pieces, reported


@given(
    st.lists(st.integers(0, len(VOCAB) - 1), min_size=1, max_size=30),
    st.lists(st.sampled_from(["</s>", "\n\n", "ab", "é", " the", "e a"]), max_size=3),
    st.booleans(),
)
def test_reported_tokens_join_to_the_text(tokens: list[int], stop: list[str], eos: bool) -> None:
    pieces, reported = scored_run(tokens, tuple(stop), eos)
    flat = [t for piece in reported for t in piece]
    text, so_far = "", ""
    for piece, those in zip(pieces, reported, strict=True):
        text += piece
        so_far += "".join(t.token for t in those)
        assert text.startswith(so_far)  # never ahead of the text
    assert so_far == text
    assert [t.logprob for t in flat] == [-(i + 1.0) for i in range(len(flat))]  # in order
    assert all(t.token_bytes == t.token.encode() for t in flat)
    assert all(math.isfinite(t.logprob) for t in flat)
    if not stop:
        assert len(flat) == len(tokens)  # nothing is dropped without a stop word
