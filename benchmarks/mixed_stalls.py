"""Does a new prompt length stall the engine's loop? On a batch of 8 decoding requests, a
prompt of each length arrives and is read inside a decode step (where the model's layers allow
it, engine/mixed.py); the step and the next are timed the first and the second time the length
occurs, each sweep in a fresh loop of the same process. A length whose first time is much
slower than its second compiled something for that shape.

    python benchmarks/mixed_stalls.py MODEL_DIR
"""

from __future__ import annotations

import argparse
import random
import time

from mlxdeploy.engine.weights.blas import load_fast_blas

LENGTHS = (5, 17, 33, 61, 97, 130, 200, 257)


def sweep(model: object, rng: random.Random) -> dict[int, float]:
    import mlx.core as mx

    from mlxdeploy.engine.generator import SlotGenerator
    from mlxdeploy.engine.sampling import greedy

    gen = SlotGenerator(model, completion_batch_size=16, prefill_batch_size=1)
    prompts = [[rng.randrange(1000, 30000) for _ in range(40)] for _ in range(8)]
    gen.insert(prompts, max_tokens=[10**6] * 8, samplers=[greedy] * 8)
    while gen.running < 8:
        gen.next()
    for _ in range(3):
        gen.next()
    times = {}
    for n in LENGTHS:
        prompt = [rng.randrange(1000, 30000) for _ in range(n)]
        gen.insert([prompt], max_tokens=[10**6], samplers=[greedy])
        mx.synchronize()
        start = time.perf_counter()
        gen.next()
        gen.next()
        mx.synchronize()
        times[n] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local mlx-lm model dir")
    args = parser.parse_args()
    print(load_fast_blas().describe())
    from mlx_lm.utils import load

    model = load(args.model)[0]
    rng = random.Random(0)
    first, second = sweep(model, rng), sweep(model, rng)
    for n in LENGTHS:
        once, again = first[n] * 1000, second[n] * 1000
        print(f"prompt of {n} tokens: {once:.1f} ms first, {again:.1f} ms again")


if __name__ == "__main__":
    main()
