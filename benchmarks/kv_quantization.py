"""Quantized keys and values (`engine.kv_bits`) against full precision, in process.

    python benchmarks/kv_quantization.py /tmp/bench-30m --bits 4 8 --streams 1 8 32

For each setting (off, then each of `--bits`):
- bytes of keys and values one request holds per 1,000 tokens of context (the slot's history
  as the prefix cache copies it: exact, no block rounding);
- decode tok/s of the engine's own loop at each of `--streams` streams, each after a
  `--context`-token prompt;
- quality against full precision on a fixed prompt set (`--prompts` random prompts, seeded):
  logprob divergence (mean KL(full || quantized) per token, and the largest, teacher-forced
  over the full-precision greedy continuation) and greedy agreement over `--tokens` tokens
  (tokens equal to full precision's at the same position, and the mean position of the first
  difference), the quantized rows batched together on the engine's loop.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from mlxdeploy.engine.weights.blas import load_fast_blas

print(load_fast_blas().describe())  # before MLX is imported: it picks the BLAS once

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache  # noqa: E402

from mlxdeploy.engine.generator import SlotGenerator  # noqa: E402
from mlxdeploy.engine.quantized_slots import KVQuantization  # noqa: E402
from mlxdeploy.engine.sampling import greedy  # noqa: E402
from mlxdeploy.engine.storage import held  # noqa: E402

VOCAB = (1000, 40000)  # token ids the prompts draw from


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(*VOCAB) for _ in range(length)] for _ in range(n)]


def generator(model: Any, kv: KVQuantization | None, rows: int) -> SlotGenerator:
    return SlotGenerator(
        model, completion_batch_size=max(rows, 8), prefill_batch_size=8, prefill_step_size=256,
        kv=kv,
    )  # fmt: skip


def bytes_per_1000(model: Any, kv: KVQuantization | None) -> int:
    gen = generator(model, kv, 1)
    (uid,) = gen.insert(prompts(1, 1000, 1), max_tokens=[1], samplers=[greedy])
    while True:
        for token in gen.next()[1]:
            if token.finish_reason is not None:
                assert token.prompt_cache is not None
                return sum(a.nbytes for a in held(token.prompt_cache))


def decode_tok_s(model: Any, kv: KVQuantization | None, streams: int, context: int) -> float:
    gen = generator(model, kv, streams)
    batch = prompts(streams, context, 2)
    gen.insert(batch, max_tokens=[100_000] * streams, samplers=[greedy] * streams)
    while gen.running < streams:
        gen.next()
    for _ in range(3):
        gen.next()
    start, steps = time.perf_counter(), 20
    for _ in range(steps):
        gen.next()
    return streams * steps / (time.perf_counter() - start)


def greedy_tokens(model: Any, kv: KVQuantization | None, batch: list[list[int]], n: int) -> list:
    gen = generator(model, kv, len(batch))
    uids = gen.insert(batch, max_tokens=[n] * len(batch), samplers=[greedy] * len(batch))
    out: dict[int, list[int]] = {u: [] for u in uids}
    done = 0
    while done < len(batch):
        for token in gen.next()[1]:
            out[token.uid].append(token.token)
            done += token.finish_reason is not None
    return [out[u] for u in uids]


def logprobs(model: Any, cache: list[Any], prompt: list[int], follow: list[int]) -> mx.array:
    """Teacher-forced log-probabilities of each token after the prompt: (len(follow), vocab),
    in one call (a quantized cache quantizes a call's keys before its attention reads them, so
    this is what decoding one token a step reads)."""
    logits = model(mx.array(prompt + follow[:-1])[None], cache=cache)[0, len(prompt) - 1 :]
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


class RoundTrip(KVCache):
    """Keys and values stored as their quantized codes read back: what attention reads from
    a quantized cache through dequantized reads (mlx's CUDA backend, where mlx-lm's
    `QuantizedKVCache` fails on prompt-shaped calls)."""

    def __init__(self, kv: KVQuantization):
        super().__init__()
        self.kv = kv

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        kv = self.kv
        return super().update_and_fetch(
            kv.dequantize(kv.quantize(keys)), kv.dequantize(kv.quantize(values))
        )


def quantized_caches(model: Any, kv: KVQuantization) -> list[Any]:
    if kv.on_read:
        return [RoundTrip(kv) for _ in make_prompt_cache(model)]
    return [QuantizedKVCache(kv.group_size, kv.bits) for _ in make_prompt_cache(model)]


def divergence(model: Any, kv: KVQuantization, batch: list[list[int]], full: list) -> list:
    """KL(full || quantized) per token, each prompt followed by full precision's tokens."""
    kls: list[float] = []
    for prompt, follow in zip(batch, full, strict=True):
        plain = logprobs(model, [KVCache() for _ in make_prompt_cache(model)], prompt, follow)
        small = logprobs(model, quantized_caches(model, kv), prompt, follow)
        kl = (mx.exp(plain) * (plain - small)).sum(axis=-1)
        kls.extend(kl.tolist())  # type: ignore[arg-type]
    return kls


def agreement(full: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    same = sum(a == b for x, y in zip(full, other, strict=True) for a, b in zip(x, y, strict=True))
    total = sum(len(x) for x in full)
    first = [
        next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(x))
        for x, y in zip(full, other, strict=True)
    ]
    return same / total, sum(first) / len(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--context", type=int, default=512, help="prompt tokens per stream")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from mlx_lm.utils import load

    model = load(args.model)[0]
    settings: list[KVQuantization | None] = [None]
    settings += [KVQuantization(b, args.group_size) for b in args.bits]
    fixed = prompts(args.prompts, 128, 3)
    full = greedy_tokens(model, None, fixed, args.tokens)
    base = bytes_per_1000(model, None)
    for kv in settings:
        name = "off" if kv is None else f"{kv.bits}-bit"
        size = bytes_per_1000(model, kv)
        speeds = [decode_tok_s(model, kv, s, args.context) for s in args.streams]
        line = f"{name:>6}: {size / 2**20:6.2f} MiB per 1,000 tokens ({size / base:.2f}x)"
        line += "".join(
            f", {s} streams {t:7.1f} tok/s" for s, t in zip(args.streams, speeds, strict=True)
        )
        if kv is not None:
            same, first = agreement(full, greedy_tokens(model, kv, fixed, args.tokens))
            kls = divergence(model, kv, fixed, full)
            line += f"; greedy agreement {same:.3f} (first difference at {first:.1f} on average)"
            line += f", KL mean {sum(kls) / len(kls):.2e} max {max(kls):.2e}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
