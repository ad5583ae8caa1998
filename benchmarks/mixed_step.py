"""Phase 0 of prefill mixed into decode: what one forward that decodes a batch AND reads a
prompt chunk costs, against the two separate calls the engine makes today.

The mixed forward, for mlx-lm's llama modules (their public layers, called piece by piece):
- the dense work (norms, q/k/v/o projections, MLP) runs once on every token flattened: the B
  decode tokens and the C chunk tokens as one (B + C, hidden) matrix;
- attention is split: the decode rows attend to their own caches (one batched call, as a
  decode step does), the chunk attends causally to its own prefix;
- only the rows that are sampled (B decode rows and the chunk's last token) go through the
  vocabulary projection.

For each (B, C) it times, synchronously, with the same caches at context L:
- `decode`: a decode step of B rows (mlx-lm's model call, B x 1 tokens);
- `prefill`: the chunk read as its own call (mlx-lm's model call, 1 x C tokens, all logits as
  mlx-lm computes them) and `prefill-last` (the same with only the last row projected);
- `mixed`: the forward above;
and checks that the mixed forward's logits match the separate calls'.

    python benchmarks/mixed_step.py MODEL_DIR --batch 1 8 64 --chunk 96 256 512 --context 200
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import KVCache


def attention_split(
    attn: Any, x: mx.array, batch: int, caches: tuple[KVCache, KVCache]
) -> mx.array:
    """Self-attention of B decode tokens (rows 0..B-1 of `x`, one per sequence) and a chunk
    (the rest, one sequence), each against its own cache."""
    decode, chunk = caches
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    n, kv, d = attn.n_heads, attn.n_kv_heads, q.shape[-1] // attn.n_heads

    def heads(t: mx.array, rows: slice, count: int, length: int, h: int) -> mx.array:
        return t[rows].reshape(count, length, h, d).transpose(0, 2, 1, 3)

    rows, rest = slice(0, batch), slice(batch, None)
    size = x.shape[0] - batch
    qd, kd, vd = (heads(t, rows, batch, 1, h) for t, h in ((q, n), (k, kv), (v, kv)))
    qc, kc, vc = (heads(t, rest, 1, size, h) for t, h in ((q, n), (k, kv), (v, kv)))
    qd, kd = attn.rope(qd, offset=decode.offset), attn.rope(kd, offset=decode.offset)
    qc, kc = attn.rope(qc, offset=chunk.offset), attn.rope(kc, offset=chunk.offset)
    kd, vd = decode.update_and_fetch(kd, vd)
    kc, vc = chunk.update_and_fetch(kc, vc)
    od = mx.fast.scaled_dot_product_attention(qd, kd, vd, scale=attn.scale, mask=None)
    oc = mx.fast.scaled_dot_product_attention(qc, kc, vc, scale=attn.scale, mask="causal")
    out = mx.concatenate(
        [od.transpose(0, 2, 1, 3).reshape(batch, -1), oc.transpose(0, 2, 1, 3).reshape(size, -1)]
    )
    return attn.o_proj(out)


def mixed_forward(
    model: Any, decode_tokens: mx.array, chunk: mx.array, caches: list[tuple[KVCache, KVCache]]
) -> mx.array:
    """Logits of the B decode rows and of the chunk's last token: (B + 1, vocab)."""
    inner = model.model
    batch = decode_tokens.shape[0]
    x = inner.embed_tokens(mx.concatenate([decode_tokens.reshape(-1), chunk.reshape(-1)]))
    for layer, pair in zip(inner.layers, caches, strict=True):
        x = x + attention_split(layer.self_attn, layer.input_layernorm(x), batch, pair)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    sampled = mx.concatenate([x[:batch], x[-1:]])
    return project(model, inner.norm(sampled))


def project(model: Any, h: mx.array) -> mx.array:
    if getattr(model.args, "tie_word_embeddings", False):
        return model.model.embed_tokens.as_linear(h)
    return model.lm_head(h)


def last_logits(model: Any, tokens: mx.array, cache: list[KVCache]) -> mx.array:
    """A prompt read as its own call with only its last row projected."""
    inner = model.model
    h = inner.embed_tokens(tokens)
    for layer, c in zip(inner.layers, cache, strict=True):
        h = layer(h, mask="causal" if h.shape[1] > 1 else None, cache=c)
    return project(model, inner.norm(h[:, -1:, :]))


def filled(model: Any, batch: int, context: int) -> list[KVCache]:
    """Caches of `batch` rows holding `context` random tokens each."""
    cache = [KVCache() for _ in model.model.layers]
    tokens = mx.random.randint(0, model.args.vocab_size, (batch, context))
    model(tokens, cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def trimmed(cache: list[KVCache], length: int) -> None:
    for c in cache:
        c.trim(c.offset - length)


def timed(run: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of a synchronous run (after two warm-up runs)."""
    for _ in range(2):
        mx.eval(run())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        mx.eval(run())
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def measure(model: Any, batch: int, size: int, context: int, repeat: int) -> dict[str, Any]:
    vocab = model.args.vocab_size
    decode_cache = filled(model, batch, context)
    chunk_cache = [KVCache() for _ in model.model.layers]
    step = mx.random.randint(0, vocab, (batch, 1))
    chunk = mx.random.randint(0, vocab, (1, size))

    def decode() -> mx.array:
        trimmed(decode_cache, context)
        return model(step, cache=decode_cache)

    def prefill() -> mx.array:
        trimmed(chunk_cache, 0)
        return model(chunk, cache=chunk_cache)

    def prefill_last() -> mx.array:
        trimmed(chunk_cache, 0)
        return last_logits(model, chunk, chunk_cache)

    def mixed() -> mx.array:
        trimmed(decode_cache, context)
        trimmed(chunk_cache, 0)
        return mixed_forward(model, step, chunk, list(zip(decode_cache, chunk_cache, strict=True)))

    apart = mx.concatenate([decode()[:, -1, :], prefill()[:, -1, :]])
    together = mixed()
    gap = mx.abs(apart.astype(mx.float32) - together.astype(mx.float32)).max().item()
    same = (apart.argmax(-1) == together.argmax(-1)).all().item()
    row: dict[str, Any] = {"batch": batch, "chunk": size, "context": context}
    for name, run in (
        ("decode", decode),
        ("prefill", prefill),
        ("prefill_last", prefill_last),
        ("mixed", mixed),
    ):
        row[f"{name}_ms"] = round(timed(run, repeat), 2)
    row["separate_ms"] = round(row["decode_ms"] + row["prefill_last_ms"], 2)
    row["mixed_over_separate"] = round(row["mixed_ms"] / row["separate_ms"], 3)
    row["max_logit_gap"], row["same_argmax"] = round(gap, 4), bool(same)  # type: ignore[arg-type]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local mlx-lm llama dir (benchmarks/make_model.py)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--chunk", type=int, nargs="+", default=[96, 256, 512])
    parser.add_argument("--context", type=int, default=200, help="decode rows' cached tokens")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    model = load(args.model)[0]
    print(f"device {mx.default_device()}, mlx {mx.__version__}")  # type: ignore[attr-defined]
    rows = []
    for batch in args.batch:
        for size in args.chunk:
            row = measure(model, batch, size, args.context, args.repeat)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
