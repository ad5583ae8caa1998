"""The load generator: closed-loop clients sending streaming chat completions.

Each of C clients sends a streaming chat completion, reads it to the end and sends the next,
so the server always holds C requests. The bench is an HTTP client and never imports mlx: the
servers it benchmarks run in their own processes (servers.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from .report import LevelStats, LoadSettings, RequestResult, summarize

ERROR_PAUSE_S = 0.1  # after a failed request, so a dead server does not become a busy loop
WARMUP_TOKENS = 8
# Common words that are one token each (with their leading space) in most BPE vocabularies.
WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find any new work"
).split()


# --------------------------------------------------------------------------- one request


def make_prompt(words: int, seed: str) -> str:
    """About `words` tokens of random common words; the same seed gives the same prompt."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(max(words, 1)))
    return f"Continue this text: {text}"


def chat_body(prompt: str, max_tokens: int) -> dict[str, object]:
    # No "model": both servers then use the model they serve.
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def error_name(exc: BaseException) -> str:
    """ReadTimeout -> read_timeout, RemoteProtocolError -> remote_protocol_error."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


async def send_chat(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> RequestResult:
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                error = f"http_{response.status_code}"
                return RequestResult(time.perf_counter() - start, error=error)
            return await read_stream(response.aiter_lines(), start)
    except (httpx.HTTPError, OSError) as exc:
        return RequestResult(time.perf_counter() - start, error=error_name(exc))


async def read_stream(lines: AsyncIterator[str], start: float) -> RequestResult:
    """Read SSE lines to `data: [DONE]`; tokens from the usage chunk, else one per content delta."""
    ttft: float | None = None
    deltas = 0
    usage: int | None = None
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and SSE comments
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return RequestResult(time.perf_counter() - start, ttft, usage if usage else deltas)
        try:
            chunk = json.loads(data)
            if "error" in chunk:
                return RequestResult(time.perf_counter() - start, error="stream_error_event")
            contents = [c["delta"].get("content") for c in chunk.get("choices") or []]
            usage = chunk["usage"]["completion_tokens"] if chunk.get("usage") else usage
        except (ValueError, TypeError, KeyError, AttributeError):
            return RequestResult(time.perf_counter() - start, error="malformed_stream")
        if any(contents):
            deltas += sum(1 for c in contents if c)
            ttft = ttft if ttft is not None else time.perf_counter() - start
    return RequestResult(time.perf_counter() - start, error="incomplete_stream")


# --------------------------------------------------------------------------- one level


async def run_client(
    client: httpx.AsyncClient,
    url: str,
    index: int,
    load: LoadSettings,
    level: int,
    on_done: Callable[[RequestResult], None],
) -> list[RequestResult]:
    return await client_loop(load, level, index, lambda body: send_chat(client, url, body), on_done)


async def client_loop(
    load: LoadSettings,
    level: int,
    index: int,
    send: Callable[[dict[str, object]], Awaitable[RequestResult]],
    on_done: Callable[[RequestResult], None] = lambda result: None,
) -> list[RequestResult]:
    """Client `index` of a level: its requests in order, each sent when the last is done."""
    results: list[RequestResult] = []
    deadline = time.perf_counter() + load.duration_s if load.duration_s else None
    while _wants_more(len(results), load, deadline):
        prompt = make_prompt(load.prompt_tokens, f"{level}-{index}-{len(results)}")
        body = chat_body(prompt, load.max_tokens)
        if load.extra_body and takes_extra(index + len(results) * level, load.extra_share):
            body.update(load.extra_body)
        result = await send(body)
        results.append(result)
        on_done(result)
        if result.error is not None:
            await asyncio.sleep(ERROR_PAUSE_S)
    return results


def takes_extra(request: int, share: float) -> bool:
    """Whether request number `request` (counted over all clients of a level) carries the
    extra fields: exactly `share` of any run of consecutive requests, spread evenly."""
    return int((request + 1) * share) > int(request * share)


def _wants_more(sent: int, load: LoadSettings, deadline: float | None) -> bool:
    if deadline is None:
        return sent < load.requests_per_client
    return time.perf_counter() < deadline


async def run_level(
    url: str, level: int, load: LoadSettings, on_done: Callable[[RequestResult], None]
) -> LevelStats:
    """Warm up with `level` concurrent short requests (so both servers meet every batch shape
    before they are timed: MLX compiles kernels per shape on first use), then run `level`
    closed-loop clients."""
    limits = httpx.Limits(max_connections=level + 1, max_keepalive_connections=level + 1)
    timeout = httpx.Timeout(load.timeout_s, connect=60.0, pool=None)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        warmups = await asyncio.gather(
            *(
                send_chat(
                    client, url, chat_body(make_prompt(load.prompt_tokens, f"w{i}"), WARMUP_TOKENS)
                )
                for i in range(level)
            )
        )
        start = time.perf_counter()
        per_client = await asyncio.gather(
            *(run_client(client, url, i, load, level, on_done) for i in range(level))
        )
        wall_s = time.perf_counter() - start
    stats = summarize(level, [r for rs in per_client for r in rs], wall_s, load.max_tokens)
    stats.warmup_error = next((w.error for w in warmups if w.error), None)
    return stats
