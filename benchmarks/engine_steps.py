"""In-process step timings: mlx-lm's BatchGenerator against mlxdeploy's engine pieces.

    python benchmarks/engine_steps.py /tmp/bench-30m --batch 1 8 32

Prints decode ms/step for both generators (greedy, random prompts) and prefill tok/s of the
model with and without mlxdeploy's CPU kernels (and, for a quantized model, decode with them).
No HTTP: this isolates the engine. `--logprobs K` adds mlxdeploy's decode step with K top
alternatives asked by every sequence, and by half of them.

`--churn C [C ...]` measures the engine's own rate with arrivals and departures, the load an
HTTP closed loop makes: C sequences in flight, each finished one replaced at once by a new
random prompt (`--churn-shape PROMPT TOKENS`), driven straight through `next()` with no event
loop, no detokenization and no other thread. This is the ceiling a server reaches with C
clients; the static decode above is the ceiling with no prompts to read.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from mlxdeploy.engine.weights.blas import load_fast_blas


def decode_ms(
    model: object, cls: type, batch: int, sampler: object, logprobs: list[int | None] | None = None
) -> float:
    """`logprobs` (mlxdeploy's generators): per sequence, None or its top alternatives."""
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(64)] for _ in range(batch)]
    gen = cls(model, completion_batch_size=max(batch, 8), prefill_batch_size=max(batch, 8))
    asked = {} if logprobs is None else {"logprobs": logprobs}
    gen.insert(prompts, max_tokens=[100_000] * batch, samplers=[sampler] * batch, **asked)
    while _running(gen) < batch:
        gen.next()
    for _ in range(3):
        gen.next()
    start, steps = time.perf_counter(), 20
    for _ in range(steps):
        gen.next()
    return (time.perf_counter() - start) / steps * 1000


def _running(gen: object) -> int:
    from mlxdeploy.engine.generator import SlotGenerator

    if isinstance(gen, SlotGenerator):
        return gen.running
    return len(gen._generation_batch)  # type: ignore[attr-defined]


def single_stream_ms(model: object, sampler: object) -> float:
    """mlx-lm's own single stream (`generate_step`, as `mlx_lm.generate` runs it): ms/token."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    prompt = mx.array([random.Random(0).randrange(1000, 40000) for _ in range(64)])
    steps = generate_step(prompt, model, max_tokens=100_000, sampler=sampler)  # type: ignore[arg-type]
    for _ in range(4):
        next(steps)
    start, n = time.perf_counter(), 40
    for _ in range(n):
        next(steps)
    return (time.perf_counter() - start) / n * 1000


def prefill_tok_s(model: Any, batch: int = 8, length: int = 128) -> float:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    tokens = mx.random.randint(0, 40000, (batch, length))

    def run() -> None:
        cache = make_prompt_cache(model)
        model.model(tokens, cache=cache)  # type: ignore[attr-defined]
        mx.eval([c.state for c in cache])

    run()
    start = time.perf_counter()
    for _ in range(3):
        run()
    return 3 * batch * length / (time.perf_counter() - start)


def churn_tok_s(
    model: object, cls: type, clients: int, prompt: int, tokens: int, **settings: int
) -> tuple[float, int]:
    """Tokens per second with `clients` sequences kept in flight (module docstring), over the
    second and third generations of requests; and the `next()` calls that took."""
    from mlxdeploy.engine.sampling import greedy

    rng = random.Random(clients)
    gen = cls(model, completion_batch_size=clients, **settings)

    def add(n: int) -> None:
        prompts = [[rng.randrange(1000, 40000) for _ in range(prompt)] for _ in range(n)]
        gen.insert(prompts, max_tokens=[tokens] * n, samplers=[greedy] * n)

    add(clients)
    finished = generated = calls = 0
    start = 0.0
    while finished < 3 * clients:
        if finished >= clients and not start:  # the first generation warms every shape
            start, generated, calls = time.perf_counter(), 0, 0
        responses = gen.next()[1]
        calls += 1
        generated += len(responses)
        done = sum(r.finish_reason is not None for r in responses)
        finished += done
        if done:
            add(done)
    gen.close()
    return generated / (time.perf_counter() - start), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local mlx-lm model dir")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prefill", type=int, nargs=2, default=[8, 128], metavar=("B", "LEN"))
    parser.add_argument("--logprobs", type=int, metavar="K", help="also decode asking logprobs")
    parser.add_argument("--churn", type=int, nargs="*", default=[], metavar="C")
    parser.add_argument(
        "--churn-shape", type=int, nargs=2, default=[190, 128], metavar=("PROMPT", "TOKENS")
    )
    parser.add_argument("--only-churn", action="store_true", help="skip the static timings")
    args = parser.parse_args()
    rows, length = args.prefill
    print(load_fast_blas().describe())
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.utils import load

    from mlxdeploy.engine.batch import FastBatchGenerator
    from mlxdeploy.engine.generator import SlotGenerator
    from mlxdeploy.engine.sampling import greedy
    from mlxdeploy.engine.weights.kernels import use_fast_kernels
    from mlxdeploy.engine.weights.quantized import use_cpu_quantized_matmul

    model = load(args.model)[0]
    for clients in args.churn:
        p, t = args.churn_shape
        schedule = {"prefill_batch_size": 8, "prefill_step_size": 512}
        own, own_calls = churn_tok_s(
            model, SlotGenerator, clients, p, t, prefill_wait_steps=4, **schedule
        )
        fast, calls = churn_tok_s(
            model, FastBatchGenerator, clients, p, t, prefill_wait_steps=4, **schedule
        )
        base, base_calls = churn_tok_s(model, BatchGenerator, clients, p, t, **schedule)
        print(
            f"churn, {clients} in flight, {p}-token prompts, {t} tokens: "
            f"mlxdeploy {own:.1f} tok/s ({own_calls} steps), "
            f"mlxdeploy on mlx-lm's batch caches {fast:.1f} tok/s ({calls} steps), "
            f"mlx-lm {base:.1f} tok/s ({base_calls} steps)"
        )
    if args.only_churn:
        return
    print(f"prefill {rows}x{length}, mlx-lm model: {prefill_tok_s(model, rows, length):.0f} tok/s")
    if 1 in args.batch:
        print(
            f"single stream, mlx-lm generate_step: {single_stream_ms(model, greedy):.2f} ms/token"
        )
    for batch in args.batch:
        base = decode_ms(model, BatchGenerator, batch, greedy)
        fast = decode_ms(model, FastBatchGenerator, batch, greedy)
        own = decode_ms(model, SlotGenerator, batch, greedy)
        print(
            f"decode, {batch} sequences: mlx-lm {base:.2f} ms/step, mlxdeploy {own:.2f} ms/step, "
            f"mlxdeploy on mlx-lm's batch caches {fast:.2f} ms/step"
        )
        if args.logprobs is not None:
            k = args.logprobs
            every = decode_ms(model, SlotGenerator, batch, greedy, [k] * batch)
            half = [k if i % 2 else None for i in range(batch)]
            some = decode_ms(model, SlotGenerator, batch, greedy, half)
            print(
                f"decode, {batch} sequences, mlxdeploy with logprobs (top {k}): "
                f"{every:.1f} ms/step all asking, {some:.1f} ms/step half asking"
            )
    swiglu, quantized = use_fast_kernels(model), use_cpu_quantized_matmul(model)
    print(f"mlxdeploy's CPU kernels: SwiGLU in {swiglu} MLPs, {quantized} quantized layers")
    fast_prefill = prefill_tok_s(model, rows, length)
    print(f"prefill {rows}x{length}, with mlxdeploy's CPU kernels: {fast_prefill:.0f} tok/s")
    if quantized:  # the quantized matmul also changes batched decoding
        for batch in args.batch:
            fast = decode_ms(model, SlotGenerator, batch, greedy)
            print(f"decode, {batch} sequences, with mlxdeploy's CPU kernels: {fast:.1f} ms/step")


if __name__ == "__main__":
    main()
