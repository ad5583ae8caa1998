"""Does a new batch shape stall? Time each decode step and prefill call the first and the second
time its shape occurs, in one process with warm kernels otherwise.

    python benchmarks/shape_stalls.py MODEL_DIR --batch 64

Decode: B rows decode, then one row leaves per step (the batch compacted each time), so every
size from B down to 1 runs once; then the same sweep again. Prefill: groups of 1..8 prompts of
a few lengths, twice. A size whose first step is much slower than its second compiled
something; the report gives, per phase, the largest and the median excess of first over second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from mlxdeploy.engine.weights.blas import load_fast_blas


def decode_sweep(model: object, batch: int) -> dict[int, float]:
    import mlx.core as mx

    from mlxdeploy.engine.batch import FastBatchGenerator
    from mlxdeploy.engine.sampling import greedy

    gen = FastBatchGenerator(model, completion_batch_size=batch, prefill_batch_size=batch)
    rng = random.Random(batch)
    prompts = [[rng.randrange(1000, 30000) for _ in range(32)] for _ in range(batch)]
    uids = gen.insert(prompts, max_tokens=[100_000] * batch, samplers=[greedy] * batch)
    while gen._generation_batch.live < batch:
        gen.next()
    gen.next()
    times: dict[int, float] = {}
    for uid in uids:
        rows = len(gen._generation_batch.uids)
        mx.synchronize()
        start = time.perf_counter()
        gen.next()
        mx.synchronize()
        times[rows] = time.perf_counter() - start
        gen.remove([uid])
        gen._generation_batch.compact()
    return times


def prefill_sweep(model: Any, lengths: list[int]) -> dict[tuple[int, int], float]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    times = {}
    for length in lengths:
        for group in range(1, 9):
            tokens = mx.random.randint(0, 30000, (group, length))
            cache = make_prompt_cache(model)
            mx.synchronize()
            start = time.perf_counter()
            model(tokens, cache=cache)  # type: ignore[operator]
            mx.eval([c.state for c in cache])
            times[(group, length)] = time.perf_counter() - start
    return times


def excess(first: dict, second: dict) -> str:  # type: ignore[type-arg]
    diffs = sorted(((first[k] - second[k]) * 1000, k) for k in first)
    worst = diffs[-1]
    median = statistics.median(d for d, _ in diffs)
    return f"largest {worst[0]:.1f} ms (at {worst[1]}), median {median:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[17, 61, 190, 333])
    args = parser.parse_args()
    print(load_fast_blas().describe())
    from mlx_lm.utils import load

    model = load(args.model)[0]
    first, second = decode_sweep(model, args.batch), decode_sweep(model, args.batch)
    print(f"decode, sizes {args.batch}..1, first over second: {excess(first, second)}")
    print(f"  second sweep ms/step: {', '.join(f'{k}:{v * 1000:.1f}' for k, v in second.items())}")
    first_p, second_p = prefill_sweep(model, args.lengths), prefill_sweep(model, args.lengths)
    print(f"prefill, groups 1..8 x lengths {args.lengths}: {excess(first_p, second_p)}")


if __name__ == "__main__":
    main()
