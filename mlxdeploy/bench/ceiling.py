"""The engine's in-process ceiling: the bench's load sent straight to an MLXEngine, no HTTP.

    python -m mlxdeploy.bench.ceiling SPEC --load '{"concurrency": [1, 8], ...}' --out FILE

`mlxdeploy bench --spec` runs this in a child process before it starts any server, so the
bench itself never imports mlx and the model's memory is freed before the servers load it.
The engine is built for the spec's first model as `mlxdeploy up` builds it (same settings,
the fast BLAS loaded before MLX). At each concurrency C it measures:

- closed loop: the HTTP bench's warm-up and clients (load.py: the same prompts, seeds,
  max_tokens and extra fields), each request turned into a prompt and sampling params by the
  API's own wire model and rules, then streamed from the engine by C asyncio tasks;
- decode only: C requests at once, and the engine's completion-token counter over the window
  where all of them decode together (no arrivals, no departures): plain decoding at batch C.

It writes both as JSON to FILE, logs a `ceiling: C clients ...` line per level, and ends with
exit status 0, or 1 and a last line `ceiling failed: why`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..api.chat.wire import ChatCompletionRequest
from ..api.errors import APIError
from ..api.guards.limits import check_context, check_logit_bias, check_max_tokens, check_n
from ..engine.api import (
    Engine,
    Event,
    Failed,
    Finished,
    Prompt,
    PromptRejected,
    SamplingParams,
    Text,
)
from ..engine.weights.blas import load_fast_blas
from ..serve.gil import hand_back_the_gil_sooner
from ..spec import Deployment, SpecError, load_spec
from .load import WARMUP_TOKENS, chat_body, client_loop, make_prompt
from .report import DecodeRate, LevelStats, LoadSettings, RequestResult, summarize

log = logging.getLogger("mlxdeploy.bench.ceiling")

LOAD_TIMEOUT_S = 600.0
DECODE_POLL_S = 0.005  # how often the decode-only window reads the engine's counters
DECODE_MIN_STEPS = 32  # the window's length in steps: max(load.max_tokens, this)
IDLE_TIMEOUT_S = 60.0  # for cancelled requests to leave the batch
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CeilingError(Exception):
    """The ceiling cannot be measured; the message is one line."""


@dataclass(frozen=True)
class Bench:
    """The engine under test and what shapes its requests (the spec's first model)."""

    engine: Engine
    deployment: Deployment
    load: LoadSettings

    def sampling(self, body: ChatCompletionRequest) -> SamplingParams:
        model = self.deployment.catalog.models[0]
        return body.to_sampling_params(
            model.defaults, model.stop, self.deployment.spec.limits, None, body.tool_use()
        )


# --------------------------------------------------------------------------- closed loop


async def send(bench: Bench, fields: dict[str, Any]) -> RequestResult:
    """One chat request as the server would run it: parsed by the wire model, checked by the
    API's limits, prepared in a thread, streamed; TTFT at the first non-empty text."""
    start = time.perf_counter()
    engine = bench.engine
    try:
        body = ChatCompletionRequest.model_validate(fields)
        check_max_tokens(body, bench.deployment.spec.limits)
        check_n(body, bench.deployment.spec.limits)
        override, tools = body.role_override(), body.tool_use()
        prompt = await asyncio.to_thread(engine.prepare, body.turns(), override, tools)
        check_context(prompt, engine.context_length)
        params = bench.sampling(body)
        check_logit_bias(params, engine.vocab_size)
    except (ValidationError, PromptRejected):
        return RequestResult(time.perf_counter() - start, error="http_400")
    except APIError as exc:
        return RequestResult(time.perf_counter() - start, error=f"http_{exc.status}")
    choices = engine.generate_choices(prompt, params, body.n or 1)
    try:
        async with asyncio.timeout(bench.load.timeout_s):
            return await read_events(choices, start)
    except TimeoutError:
        return RequestResult(time.perf_counter() - start, error="read_timeout")


async def read_events(
    choices: AsyncGenerator[tuple[int, Event], None], start: float
) -> RequestResult:
    ttft: float | None = None
    tokens = 0
    async with contextlib.aclosing(choices) as events:
        async for _, event in events:
            if isinstance(event, Text) and event.text and ttft is None:
                ttft = time.perf_counter() - start
            elif isinstance(event, Failed):
                return RequestResult(time.perf_counter() - start, error="stream_error_event")
            elif isinstance(event, Finished):
                tokens += event.completion_tokens
    return RequestResult(time.perf_counter() - start, ttft, tokens)


async def run_client(bench: Bench, index: int, level: int) -> list[RequestResult]:
    """load.run_client's requests, in its order, to the engine."""
    return await client_loop(bench.load, level, index, lambda body: send(bench, body))


async def closed_loop(bench: Bench, level: int) -> LevelStats:
    """load.run_level without HTTP: the same warm-up, then `level` closed-loop clients."""
    prompt_tokens = bench.load.prompt_tokens
    warmups = await asyncio.gather(
        *(
            send(bench, chat_body(make_prompt(prompt_tokens, f"w{i}"), WARMUP_TOKENS))
            for i in range(level)
        )
    )
    start = time.perf_counter()
    per_client = await asyncio.gather(*(run_client(bench, i, level) for i in range(level)))
    wall_s = time.perf_counter() - start
    results = [r for rs in per_client for r in rs]
    stats = summarize(level, results, wall_s, bench.load.max_tokens)
    stats.warmup_error = next((w.error for w in warmups if w.error), None)
    return stats


# --------------------------------------------------------------------------- decode only


def decode_params(
    bench: Bench, body: ChatCompletionRequest, steps: int, prompts: list[Prompt]
) -> SamplingParams:
    """The chat request's params with room to decode `steps` after every prompt of the batch
    is read (the requests are cancelled once the window is measured)."""
    room = steps * 8 + len(prompts)
    context = bench.engine.context_length
    if context is not None:
        room = max(min(room, context - max(len(p.tokens) for p in prompts) - 1), 1)
    return dataclasses.replace(bench.sampling(body), max_tokens=room)


async def decode_only(bench: Bench, level: int) -> DecodeRate:
    """`level` requests (at most the engine's batch) at once; the completion-token counter
    over the window where exactly these all decode, for `steps` steps or until one ends."""
    engine = bench.engine
    batch = min(level, bench.deployment.catalog.models[0].engine.max_batch_size)
    steps = max(bench.load.max_tokens, DECODE_MIN_STEPS)
    chats = [
        ChatCompletionRequest.model_validate(
            chat_body(make_prompt(bench.load.prompt_tokens, f"d{level}-{i}"), 1)
        )
        for i in range(batch)
    ]
    prompts = [engine.prepare(c.turns(), c.role_override(), c.tool_use()) for c in chats]
    params = decode_params(bench, chats[0], steps, prompts)
    tasks = [
        asyncio.create_task(drain(engine.generate_choices(p, params, 1, f"decode-{i}")))
        for i, p in enumerate(prompts)
    ]
    try:
        samples = await decode_window(engine, tasks, batch, steps * batch, bench.load.timeout_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await until_idle(engine)
    return decode_rate(level, batch, samples)


async def drain(choices: AsyncGenerator[tuple[int, Event], None]) -> None:
    async with contextlib.aclosing(choices) as events:
        async for _ in events:
            pass


async def decode_window(
    engine: Engine, tasks: list[asyncio.Task[None]], batch: int, tokens: int, timeout_s: float
) -> list[tuple[float, int]]:
    """(time, completion tokens) while the same `batch` requests all decode, from the first
    poll that finds them so until `tokens` more were made or the batch changes."""
    samples: list[tuple[float, int]] = []
    first: set[str] | None = None
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline and not all(task.done() for task in tasks):
        await asyncio.sleep(DECODE_POLL_S)
        now, stats = time.perf_counter(), engine.stats()
        decoding = {r.label for r in engine.requests() if r.state == "decoding"}
        steady = stats.batch_size == batch and len(decoding) == batch and stats.waiting == 0
        if steady and first in (None, decoding):
            first = decoding
            samples.append((now, stats.completion_tokens))
            if samples[-1][1] - samples[0][1] >= tokens:
                break
        elif samples:
            break
    return samples


def decode_rate(level: int, batch: int, samples: list[tuple[float, int]]) -> DecodeRate:
    if len(samples) < 2:
        return DecodeRate(level, batch, None, polls=len(samples))
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    window_s = t1 - t0
    return DecodeRate(
        concurrency=level,
        batch=batch,
        tok_s=(n1 - n0) / window_s if window_s > 0 else None,
        window_s=window_s,
        window_tokens=n1 - n0,
        window_steps=(n1 - n0) / batch,
        polls=len(samples),
    )


async def until_idle(engine: Engine) -> None:
    """Cancelled requests leave the batch within a step; wait for it, so the next level
    starts on an empty engine."""
    deadline = time.perf_counter() + IDLE_TIMEOUT_S
    while time.perf_counter() < deadline:
        stats = engine.stats()
        if stats.batch_size == 0 and stats.waiting == 0:
            return
        await asyncio.sleep(DECODE_POLL_S)
    raise CeilingError(f"cancelled requests still in the batch after {IDLE_TIMEOUT_S:.0f}s")


# --------------------------------------------------------------------------- the run


async def measure(
    deployment: Deployment, load: LoadSettings
) -> list[tuple[LevelStats, DecodeRate]]:
    """Build and load the engine as `up` does, then both measurements at each level."""
    from ..engine.engine import MLXEngine  # after load_fast_blas, as in the server

    model = deployment.catalog.models[0]
    engine = MLXEngine(model, load_lock=threading.Lock())
    engine.start(asyncio.get_running_loop())
    try:
        state = await asyncio.to_thread(engine.wait_loaded, LOAD_TIMEOUT_S)
        if state != "ready":
            raise CeilingError(engine.error or f"the model did not load (state: {state})")
        bench = Bench(engine, deployment, load)
        results = []
        for level in load.concurrency:
            stats = await closed_loop(bench, level)
            decode = await decode_only(bench, level)
            results.append((stats, decode))
            print(level_line(stats, decode), flush=True)
        return results
    finally:
        await asyncio.to_thread(engine.stop)


def level_line(stats: LevelStats, decode: DecodeRate) -> str:
    rate = "-" if decode.tok_s is None else f"{decode.tok_s:.1f}"
    return (
        f"ceiling: {stats.concurrency} clients: {stats.throughput_tok_s:.1f} tok/s closed loop "
        f"({stats.completed}/{stats.requests} done), {rate} tok/s decoding {decode.batch} "
        f"together ({decode.window_steps:.0f} steps)"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlxdeploy.bench.ceiling")
    parser.add_argument("spec", type=Path, help="the deployment spec (its first model)")
    parser.add_argument("--load", required=True, help="the bench's LoadSettings as JSON")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    return parser.parse_args(argv)


def load_settings(text: str) -> LoadSettings:
    fields = json.loads(text)
    return LoadSettings(**{**fields, "concurrency": tuple(fields["concurrency"])})


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    log.info(load_fast_blas().describe())  # before MLX is imported
    hand_back_the_gil_sooner()  # as `up` does
    try:
        load = load_settings(args.load)
        results = asyncio.run(measure(load_spec(args.spec), load))
    except SpecError as exc:
        print(f"ceiling failed: {'; '.join(str(p) for p in exc.problems)}", flush=True)
        return 1
    except CeilingError as exc:
        print(f"ceiling failed: {exc}", flush=True)
        return 1
    except Exception as exc:  # the traceback goes to the log, the reason to its last line
        log.exception("ceiling failed")
        sys.stderr.flush()
        print(f"ceiling failed: {type(exc).__name__}: {exc}", flush=True)
        return 1
    data = {
        "levels": [asdict(stats) for stats, _ in results],
        "decode": [asdict(decode) for _, decode in results],
    }
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


def main() -> None:  # pragma: no cover - run as a child process
    code = run(sys.argv[1:])
    # As `mlxdeploy up` ends: the interpreter's teardown can abort in MLX's native threads.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
