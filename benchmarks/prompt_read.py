"""A prompt read on an idle engine: its first token, with the model's own forward pass (logits
of every position) against the mixed forward (engine/mixed.py: only the last position through
the vocabulary projection), twice each.

    python benchmarks/prompt_read.py MODEL_DIR
"""

from __future__ import annotations

import argparse
import random
import time

from mlxdeploy.engine.weights.blas import load_fast_blas


def first_token_ms(model: object, prompt: list[int], mix: bool) -> float:
    import mlx.core as mx

    from mlxdeploy.engine.generator import SlotGenerator
    from mlxdeploy.engine.sampling import greedy

    gen = SlotGenerator(model, prefill_step_size=512, mix=mix)
    gen.insert([prompt], max_tokens=[2], samplers=[greedy])
    mx.synchronize()
    start = time.perf_counter()
    gen.next()  # reads the prompt and samples its first token
    gen.next()  # the step that reports it
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local mlx-lm model dir")
    args = parser.parse_args()
    print(load_fast_blas().describe())
    from mlx_lm.utils import load

    model = load(args.model)[0]
    rng = random.Random(0)
    for n in (128, 512):
        prompt = [rng.randrange(1000, 30000) for _ in range(n)]
        for _ in range(2):
            plain, mixed = first_token_ms(model, prompt, False), first_token_ms(model, prompt, True)
            print(f"{n}-token prompt: model forward {plain:.1f} ms, mixed forward {mixed:.1f} ms")


if __name__ == "__main__":
    main()
